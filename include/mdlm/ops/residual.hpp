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

namespace mdlm {

// Dropout parameters of one call site.
struct DropoutSite {
  float p = 0.0f;              // 0: no dropout
  Philox rng{};
  std::uint32_t step = 0;
  std::uint64_t offset = 0;    // first Philox index of this site
  MDLM_HD bool keep(std::uint64_t i) const {
    return p <= 0.0f || rng.uniform_float(Purpose::Dropout, step, offset + i) >= p;
  }
  template <class C>
  MDLM_HD C scale() const {
    return p > 0.0f ? C(1) / (C(1) - C(p)) : C(1);
  }
};

template <class T>
void gated_residual_forward(const Host& ctx, MatrixView<const T, Host> x, MatrixView<const T, Host> y,
                            MatrixView<const T, Host> gate, std::int64_t seq_len, DropoutSite drop,
                            MatrixView<T, Host> out) {
  using C = compute_t<T>;
  const std::int64_t cols = x.cols;
  ctx.parallel_for(x.rows, [&](std::int64_t r) {
    const std::int64_t b = r / seq_len;
    for (std::int64_t c = 0; c < cols; ++c) {
      C v = drop.keep(static_cast<std::uint64_t>(r * cols + c)) ? C(y.data[r * y.ld + c]) * drop.template scale<C>() : C(0);
      if (gate.data != nullptr) v *= gate.data[b * gate.ld + c];
      out.data[r * out.ld + c] = static_cast<T>(x.data[r * x.ld + c] + v);
    }
  });
}

// Host backward. With a gate gradient, one pass per (sequence, block of kResidualColBlock
// columns) draws each keep decision once for dy and dgate (a Philox block per element is most
// of this op's cost); dgate[b, c] still sums over t in ascending order, so the bits are those of
// a separate reduction.
inline constexpr std::int64_t kResidualColBlock = 32;

template <class T>
void gated_residual_backward(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> y,
                             MatrixView<const T, Host> gate, std::int64_t seq_len, DropoutSite drop,
                             MatrixView<T, Host> dx, bool accumulate_dx, MatrixView<T, Host> dy, bool accumulate_dy,
                             MatrixView<T, Host> dgate, bool accumulate_dgate) {
  using C = compute_t<T>;
  const std::int64_t cols = dout.cols;
  // dx and dy of element (r, c), given its keep decision.
  auto dx_dy = [&](std::int64_t r, std::int64_t c, std::int64_t b, bool keep) {
    const C g = dout.data[r * dout.ld + c];
    if (dx.data != nullptr) {
      T& o = dx.data[r * dx.ld + c];
      o = accumulate_dx ? static_cast<T>(o + g) : static_cast<T>(g);
    }
    if (dy.data != nullptr) {
      C v = keep ? g * drop.template scale<C>() : C(0);
      if (gate.data != nullptr) v *= gate.data[b * gate.ld + c];
      T& o = dy.data[r * dy.ld + c];
      o = accumulate_dy ? static_cast<T>(o + v) : static_cast<T>(v);
    }
  };
  if (dgate.data == nullptr) {
    ctx.parallel_for(dout.rows, [&](std::int64_t r) {
      const std::int64_t b = r / seq_len;
      for (std::int64_t c = 0; c < cols; ++c)
        dx_dy(r, c, b, dy.data != nullptr && drop.keep(static_cast<std::uint64_t>(r * cols + c)));
    });
    return;
  }
  const std::int64_t batches = dout.rows / seq_len, blocks = (cols + kResidualColBlock - 1) / kResidualColBlock;
  ctx.parallel_for(batches * blocks, [&](std::int64_t task) {
    const std::int64_t b = task / blocks, c0 = (task % blocks) * kResidualColBlock;
    const std::int64_t nc = std::min(kResidualColBlock, cols - c0);
    C s[kResidualColBlock] = {};
    for (std::int64_t t = 0; t < seq_len; ++t) {
      const std::int64_t r = b * seq_len + t;
      for (std::int64_t k = 0; k < nc; ++k) {
        const std::int64_t c = c0 + k;
        const bool keep = drop.keep(static_cast<std::uint64_t>(r * cols + c));
        dx_dy(r, c, b, keep);
        if (keep) s[k] += C(dout.data[r * dout.ld + c]) * C(y.data[r * y.ld + c]) * drop.template scale<C>();
      }
    }
    for (std::int64_t k = 0; k < nc; ++k) {
      T& o = dgate.data[b * dgate.ld + c0 + k];
      o = accumulate_dgate ? static_cast<T>(o + s[k]) : static_cast<T>(s[k]);
    }
  });
}

template <class B, class T, class G = T>
struct GatedResidualOp {
  using V = Var<T, B>;
  struct Ctx {
    V x, y, gate, out;
    std::int64_t seq_len;
    DropoutSite drop;
  };

  // `dropout` is the drop probability of the branch; it applies only when the tape is training.
  static V forward(Tape<B, T, G>& tape, V x, V y, V gate, std::int64_t seq_len, float dropout = 0.0f) {
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
      drop.offset = tape.reserve_rng(static_cast<std::uint64_t>(x.rows() * x.cols()));
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
    gated_residual_backward(tape.backend(), MatrixView<const T, B>(dout), MatrixView<const T, B>(ctx.y.value),
                            MatrixView<const T, B>(ctx.gate.value), ctx.seq_len, ctx.drop, dx.grad, dx.accumulate,
                            dy.grad, dy.accumulate, dgate.grad, dgate.accumulate);
  }
};

}  // namespace mdlm
