#pragma once
// Gated residual add with dropout on the branch (the DiT's bias_dropout_scale):
//   out = x + gate[b] * drop(y),   drop(y) = y * keep / (1 - p),  keep ~ Bernoulli(1 - p)
// x, y, out (B*T, C); gate (B, C) per sequence (b = row / T), or absent (AR model: gate = 1).
// The keep mask is not stored: it is recomputed from Philox (purpose Dropout, the tape's step,
// and an index range reserved on the tape), so forward and backward agree on every backend.
// Backward: dx = dout;  dy = dout * gate[b] * keep / (1 - p);  dgate[b] = sum_t dout * drop(y)

#include <algorithm>
#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/ops/column_reduce.hpp"

namespace mdlm {

// Dropout parameters of one call site. Element i of the site draws word (offset + i) % 4 of the
// Philox block (offset + i) / 4: one block gives four decisions.
struct DropoutSite {
  float p = 0.0f;              // 0: no dropout
  Philox rng{};
  std::uint32_t step = 0;
  std::uint64_t offset = 0;    // first Philox word of this site
  MDLM_HD bool keep(std::uint64_t i) const {
    if (p <= 0.0f) return true;
    const std::uint64_t w = offset + i;
    return u01_float(rng.block(Purpose::Dropout, step, w >> 2).v[w & 3]) >= p;
  }
  template <class C>
  MDLM_HD C scale() const {
    return p > 0.0f ? C(1) / (C(1) - C(p)) : C(1);
  }
};

// Host: the dropout factors of elements [i, i + n) of a site, f[k] = keep(i + k) ? scale : 0
// (all scale = 1 without dropout), drawn kPhiloxLanes blocks at a time: the same decisions as
// keep(), several times cheaper per element.
template <class C>
void dropout_factors(const DropoutSite& drop, std::uint64_t i, std::int64_t n, C* f) {
  if (drop.p <= 0.0f) {
    std::fill(f, f + n, C(1));
    return;
  }
  const C scale = drop.template scale<C>();
  const float p = drop.p;
  const std::uint64_t first = drop.offset + i, last = first + static_cast<std::uint64_t>(n);  // words [first, last)
  constexpr std::uint64_t kWords = 4 * kPhiloxLanes;
  std::uint32_t words[4][kPhiloxLanes], stream[kWords];
  for (std::uint64_t block = first >> 2; block * 4 < last; block += kPhiloxLanes) {
    philox_blocks(drop.rng, Purpose::Dropout, drop.step, block, words);
    for (int l = 0; l < kPhiloxLanes; ++l)
      for (int w = 0; w < 4; ++w) stream[4 * l + w] = words[w][l];  // word order: 4 block + w
    const std::uint64_t base = block * 4, lo = std::max(first, base), hi = std::min(last, base + kWords);
    C* out = f + (lo - first);
    const std::uint32_t* in = stream + (lo - base);
    for (std::uint64_t k = 0; k < hi - lo; ++k) out[k] = u01_float(in[k]) >= p ? scale : C(0);
  }
}

// Elements per chunk of a row in the Host loops (factors on the stack).
inline constexpr std::int64_t kDropoutChunk = 256;

// Host: row r of out = x + gate[b] * drop(y), in chunks of kDropoutChunk columns whose dropout
// factors are drawn at once. The fused residual + LayerNorm op (residual_layernorm.hpp) runs the
// same row function, so the two give the same bits.
template <class T>
void gated_residual_row(MatrixView<const T, Host> x, MatrixView<const T, Host> y, MatrixView<const T, Host> gate,
                        std::int64_t seq_len, const DropoutSite& drop, std::int64_t r, T* o) {
  using C = compute_t<T>;
  const std::int64_t cols = x.cols, b = r / seq_len;
  C f[kDropoutChunk];
  for (std::int64_t c0 = 0; c0 < cols; c0 += kDropoutChunk) {
    const std::int64_t nc = std::min(kDropoutChunk, cols - c0);
    dropout_factors(drop, static_cast<std::uint64_t>(r * cols + c0), nc, f);
    const T* xr = x.data + r * x.ld + c0;
    const T* yr = y.data + r * y.ld + c0;
    const T* g = gate.data != nullptr ? gate.data + b * gate.ld + c0 : nullptr;
    if (g != nullptr) {
      for (std::int64_t k = 0; k < nc; ++k) o[c0 + k] = static_cast<T>(C(xr[k]) + C(yr[k]) * f[k] * C(g[k]));
    } else {  // ungated (gate = 1): y * f * 1 is y * f, the same bits
      for (std::int64_t k = 0; k < nc; ++k) o[c0 + k] = static_cast<T>(C(xr[k]) + C(yr[k]) * f[k]);
    }
  }
}

template <class T>
void gated_residual_forward(const Host& ctx, MatrixView<const T, Host> x, MatrixView<const T, Host> y,
                            MatrixView<const T, Host> gate, std::int64_t seq_len, DropoutSite drop,
                            MatrixView<T, Host> out) {
  ctx.parallel_for(x.rows, [&](std::int64_t r) { gated_residual_row(x, y, gate, seq_len, drop, r, out.data + r * out.ld); });
}

// Host backward, in chunks of up to kDropoutChunk columns of a row whose dropout factors are
// drawn once for dx, dy and dgate. With a gate gradient a task is (sequence, column chunk) and
// dgate[b, c] sums over t in ascending order (the bits of a separate reduction).
template <class T>
void gated_residual_backward(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> y,
                             MatrixView<const T, Host> gate, std::int64_t seq_len, DropoutSite drop,
                             MatrixView<T, Host> dx, bool accumulate_dx, MatrixView<T, Host> dy, bool accumulate_dy,
                             MatrixView<T, Host> dgate, bool accumulate_dgate, ReduceScratch<compute_t<T>, Host> = {}) {
  using C = compute_t<T>;
  const std::int64_t cols = dout.cols, chunks = (cols + kDropoutChunk - 1) / kDropoutChunk;
  // dx and dy of columns [c0, c0 + nc) of row r (sequence b) given their factors f; with s, also
  // s[k] += dout * y * f (the dgate terms).
  auto row_chunk = [&](std::int64_t r, std::int64_t b, std::int64_t c0, std::int64_t nc, const C* f, C* s) {
    const T* g = dout.data + r * dout.ld + c0;
    if (dx.data != nullptr) {
      T* o = dx.data + r * dx.ld + c0;
      if (accumulate_dx) {
        for (std::int64_t k = 0; k < nc; ++k) o[k] = static_cast<T>(C(o[k]) + C(g[k]));
      } else {
        for (std::int64_t k = 0; k < nc; ++k) o[k] = g[k];
      }
    }
    if (dy.data != nullptr) {
      T* o = dy.data + r * dy.ld + c0;
      const T* gt = gate.data != nullptr ? gate.data + b * gate.ld + c0 : nullptr;
      for (std::int64_t k = 0; k < nc; ++k) {
        C v = C(g[k]) * f[k];
        if (gt != nullptr) v *= C(gt[k]);
        o[k] = accumulate_dy ? static_cast<T>(C(o[k]) + v) : static_cast<T>(v);
      }
    }
    if (s != nullptr) {
      const T* yr = y.data + r * y.ld + c0;
      for (std::int64_t k = 0; k < nc; ++k) s[k] += C(g[k]) * C(yr[k]) * f[k];
    }
  };
  if (dgate.data == nullptr) {
    ctx.parallel_for(dout.rows * chunks, [&](std::int64_t task) {
      const std::int64_t r = task / chunks, c0 = (task % chunks) * kDropoutChunk, nc = std::min(kDropoutChunk, cols - c0);
      C f[kDropoutChunk];
      if (dy.data != nullptr) dropout_factors(drop, static_cast<std::uint64_t>(r * cols + c0), nc, f);
      row_chunk(r, r / seq_len, c0, nc, f, nullptr);
    });
    return;
  }
  const std::int64_t batches = dout.rows / seq_len;
  ctx.parallel_for(batches * chunks, [&](std::int64_t task) {
    const std::int64_t b = task / chunks, c0 = (task % chunks) * kDropoutChunk, nc = std::min(kDropoutChunk, cols - c0);
    C f[kDropoutChunk], s[kDropoutChunk] = {};
    for (std::int64_t t = 0; t < seq_len; ++t) {
      const std::int64_t r = b * seq_len + t;
      dropout_factors(drop, static_cast<std::uint64_t>(r * cols + c0), nc, f);
      row_chunk(r, b, c0, nc, f, s);
    }
    T* o = dgate.data + b * dgate.ld + c0;
    for (std::int64_t k = 0; k < nc; ++k) o[k] = accumulate_dgate ? static_cast<T>(C(o[k]) + s[k]) : static_cast<T>(s[k]);
  });
}

// The gate gradient's term for the two-stage column reduction (ops/column_reduce.hpp), summed
// per sequence: dout[r, c] * y[r, c] * the dropout factor of element r * cols + c. The CUDA
// backward reduces it (ops/cuda/elementwise.cuh); gated_residual_dgate_twin is its Host twin.
template <class T, class Acc>
struct GateGradTerm {
  const T* dout = nullptr;
  std::int64_t ld_dout = 0;
  const T* y = nullptr;
  std::int64_t ld_y = 0;
  std::int64_t cols = 0;
  DropoutSite drop;
  MDLM_HD Acc operator()(std::int64_t r, std::int64_t c) const {
    if (!drop.keep(static_cast<std::uint64_t>(r * cols + c))) return Acc(0);
    return static_cast<Acc>(to_compute(dout[r * ld_dout + c])) * static_cast<Acc>(to_compute(y[r * ld_y + c])) *
           drop.template scale<Acc>();
  }
};

// Host twin of the CUDA gate gradient: dgate[b] (+)= sum_t dout * drop(y), the CUDA bits for fp32.
template <class T>
void gated_residual_dgate_twin(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> y,
                               std::int64_t seq_len, DropoutSite drop, MatrixView<T, Host> dgate, bool accumulate) {
  using Acc = compute_t<T>;
  column_reduce<Acc>(ctx, ColumnReduceShape::per_sequence(dout.rows, dout.cols, seq_len),
                     GateGradTerm<T, Acc>{dout.data, dout.ld, y.data, y.ld, dout.cols, drop},
                     ColumnSink<T>{dgate.data, dgate.ld, accumulate});
}

template <class B, class T, class G = T>
struct GatedResidualOp {
  static constexpr const char* kName = "gated_residual";  // its profiling range
  using V = Var<T, B>;
  struct Ctx {
    V x, y, gate, out;
    std::int64_t seq_len;
    DropoutSite drop;
  };

  // `dropout` is the drop probability of the branch; it applies only when the tape is training.
  static V forward(Tape<B, T, G>& tape, V x, V y, V gate, std::int64_t seq_len, float dropout = 0.0f) {
    const auto range = tape.range(kName);
    MDLM_CHECK(x.rows() == y.rows() && x.cols() == y.cols(), "residual: x is ", x.rows(), "x", x.cols(), ", y is ",
               y.rows(), "x", y.cols());
    MDLM_CHECK(seq_len > 0 && x.rows() % seq_len == 0, "residual: ", x.rows(), " rows are not whole sequences of ",
               seq_len);
    if (gate.valid()) {
      MDLM_CHECK(gate.rows() == x.rows() / seq_len && gate.cols() == x.cols(), "residual: gate is ", gate.rows(), "x",
                 gate.cols());
    }
    DropoutSite drop;
    MDLM_CHECK(dropout >= 0.0f && dropout < 1.0f, "residual: dropout ", dropout, " must be in [0, 1)");
    if (tape.options.training && dropout > 0.0f) {
      drop.p = dropout;
      drop.rng = Philox{tape.options.seed};
      drop.step = tape.options.step;
      drop.offset = tape.reserve_rng_rows(x.rows(), x.cols(), seq_len);
    }
    V out = tape.new_var(x.rows(), x.cols());
    gated_residual_forward(tape.backend(), MatrixView<const T, B>(x.value), MatrixView<const T, B>(y.value),
                           MatrixView<const T, B>(gate.value), seq_len, drop, out.value);
    tape.template record<GatedResidualOp>(Ctx{x, y, gate, out, seq_len, drop});
    return out;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dout = tape.grad_out(ctx.out);
    auto dx = tape.grad_in(ctx.x);
    auto dy = tape.grad_in(ctx.y);
    typename Tape<B, T, G>::GradTarget dgate;
    if (ctx.gate.valid()) dgate = tape.grad_in(ctx.gate);
    // Scratch of the gate gradient's per-sequence column sums (none on the Host).
    std::int64_t scratch = 0;
    if (dgate.grad.data != nullptr) {
      scratch = column_reduce_scratch(tape.backend(), ColumnReduceShape::per_sequence(dout.rows, dout.cols, ctx.seq_len));
    }
    compute_t<T>* ws = scratch > 0 ? tape.template scratch<compute_t<T>>(Shape{scratch}).data : nullptr;
    gated_residual_backward(tape.backend(), MatrixView<const T, B>(dout), MatrixView<const T, B>(ctx.y.value),
                            MatrixView<const T, B>(ctx.gate.value), ctx.seq_len, ctx.drop, dx.grad, dx.accumulate,
                            dy.grad, dy.accumulate, dgate.grad, dgate.accumulate,
                            ReduceScratch<compute_t<T>, B>{ws, scratch});
  }
};

}  // namespace mdlm
