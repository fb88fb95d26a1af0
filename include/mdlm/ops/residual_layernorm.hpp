#pragma once
// The gated residual with dropout fused with the adaLN-modulated LayerNorm that reads its result
// (the DiT block's x = x + gate1 * drop(attn) followed by LN2(x) * (1 + scale2) + shift2):
//   xn = x + gate[b] * drop(y)                                   (ops/residual.hpp)
//   h  = (xn - mean) * rstd * w * (1 + scale[b]) + shift[b]     (ops/layernorm.hpp)
// Both xn and h are outputs. Forward: one pass per row (xn is rounded to T before the
// statistics, as the unfused ops store it). Backward (dxn: the gradient xn gets from its other
// readers; dh; xhat = (xn - mean) * rstd; gw = dh * (1 + scale[b]) * w):
//   dt = dxn + rstd * (gw - mean(gw) - xhat * mean(gw * xhat))  (xn's whole gradient, rounded to T)
//   dx = dt;  dy = dt * gate[b] * f  (f: the dropout factor)          row-wise, one pass per row
//   dgate[b] = sum_t dt * y * f;  dshift[b] = sum_t dh;  dscale[b] = sum_t dh * xhat * w;
//   dw += sum_rows dh * (1 + scale[b]) * xhat                     column sums (ops/column_reduce.hpp)
// The column sums run the deterministic two-stage reduction on the terms of the unfused ops
// (GateGradTerm reads dt back, from dx's buffer when dx is written, not added), so the Host
// backward here is the CUDA backward's twin (ops/cuda/residual_layernorm.cuh): the same
// per-row formulas, and the same bits in the column sums for fp32. The dropout keys are those
// of GatedResidualOp (one reserve_rng_rows per call), so the masks are identical.
//
// The models use the fused op where kFusedResidualLayerNorm<B> (CUDA); the Host keeps the two
// unfused ops (nn/dit.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/core/math.hpp"
#include "mdlm/core/philox.hpp"
#include "mdlm/ops/column_reduce.hpp"
#include "mdlm/ops/layernorm.hpp"
#include "mdlm/ops/residual.hpp"

namespace mdlm {

// Whether the models fuse the residual with the following LayerNorm on backend B (specialized
// true for Cuda in ops/cuda/residual_layernorm.cuh).
template <class B>
inline constexpr bool kFusedResidualLayerNorm = false;

// Dropout factors of N consecutive elements starting at element i of a site: the decisions of
// DropoutSite::keep, one Philox block per four words (a 16-byte vector of a row draws at most
// three blocks).
template <int N, class C>
MDLM_HD inline void dropout_factors_small(const DropoutSite& d, std::uint64_t i, C (&f)[N]) {
  if (d.p <= 0.0f) {
    for (int k = 0; k < N; ++k) f[k] = C(1);
    return;
  }
  const C s = d.template scale<C>();
  std::uint64_t have = ~std::uint64_t{0};
  U32x4 words{};
  for (int k = 0; k < N; ++k) {
    const std::uint64_t w = d.offset + i + static_cast<std::uint64_t>(k);
    if ((w >> 2) != have) {
      have = w >> 2;
      words = d.rng.block(Purpose::Dropout, d.step, have);
    }
    // The word by selects, not a dynamic index (which puts the block in local memory on CUDA).
    const std::uint64_t j = w & 3;
    const std::uint32_t word = j == 0 ? words.v[0] : j == 1 ? words.v[1] : j == 2 ? words.v[2] : words.v[3];
    f[k] = u01_float(word) >= d.p ? s : C(0);
  }
}

// The per-element formulas both backends run, in the compute type C (fp32 or fp64).
// xn = x + y * f * gate (ungated: gate = 1, the same bits), as GatedResidualOp.
template <class C>
MDLM_HD inline C rln_residual(C x, C y, C f, C gate) {
  return x + y * f * gate;
}
// gw = dh * (1 + scale) * w (not modulated: scale = 0, the same bits), the gradient of the
// normalized value.
template <class C>
MDLM_HD inline C rln_dxhat(C dh, C scale, C w) {
  return dh * (C(1) + scale) * w;
}
// xn's whole gradient before rounding to T (the unfused LayerNorm backward adds its dx to the
// gradient the residual stream already holds).
template <class C>
MDLM_HD inline C rln_total(C dxn, C gw, C xhat, C rs, C mean_g, C mean_gx) {
  return dxn + rs * (gw - mean_g - xhat * mean_gx);
}

// Arguments of the backward (trivially copyable: the CUDA kernel takes them as they are).
template <class T, class G, class B>
struct ResidualLayerNormGrads {
  using C = compute_t<T>;
  // inputs
  MatrixView<const T, B> dxn, dh, xn, y, gate, scale;  // gate, scale: nullptr when absent
  const T* w = nullptr;
  std::int64_t seq_len = 1;
  DropoutSite drop;
  const C* mean = nullptr;
  const C* rstd = nullptr;
  // outputs (a nullptr view: not wanted)
  MatrixView<T, B> dt;  // xn's whole gradient, written (the dgate sum reads it; may be dx itself)
  MatrixView<T, B> dx;  // written or added (nullptr when dt is dx's buffer)
  bool acc_dx = false;
  MatrixView<T, B> dy;
  bool acc_dy = false;
  MatrixView<T, B> dgate;
  bool acc_dgate = false;
  G* dw = nullptr;  // added
  MatrixView<T, B> dshift, dscale;
  bool acc_mod = false;
};

// Accumulator elements of scratch the column sums of the backward need on a backend (they run
// one after another and share it).
template <class Ctx>
std::int64_t residual_layernorm_reduce_scratch(const Ctx& ctx, std::int64_t rows, std::int64_t cols,
                                               std::int64_t seq_len, bool dw, bool per_sequence) {
  std::int64_t n = 0;
  if (dw) n = column_reduce_scratch(ctx, ColumnReduceShape::plain(rows, cols));
  if (per_sequence) n = std::max(n, column_reduce_scratch(ctx, ColumnReduceShape::per_sequence(rows, cols, seq_len)));
  return n;
}

// The column sums of the backward (dgate, dw, dshift, dscale) on any backend: `reduce(shape,
// term, sink)` runs one two-stage reduction (Host twin or CUDA kernels).
template <class T, class G, class B, class Reduce>
void residual_layernorm_column_sums(const ResidualLayerNormGrads<T, G, B>& a, Reduce&& reduce) {
  using Acc = compute_t<T>;
  const std::int64_t rows = a.xn.rows, cols = a.xn.cols;
  if (a.dgate.data != nullptr) {
    MDLM_CHECK(a.dt.data != nullptr, "residual_layernorm: the gate gradient needs xn's gradient");
    reduce(ColumnReduceShape::per_sequence(rows, cols, a.seq_len),
           GateGradTerm<T, Acc>{a.dt.data, a.dt.ld, a.y.data, a.y.ld, cols, a.drop},
           ColumnSink<T>{a.dgate.data, a.dgate.ld, a.acc_dgate});
  }
  if (a.dw != nullptr) {
    reduce(ColumnReduceShape::plain(rows, cols),
           LayerNormDwTerm<T, Acc>{a.dh.data, a.dh.ld, a.xn.data, a.xn.ld, a.scale.data, a.scale.ld, a.seq_len, a.mean,
                                   a.rstd},
           ColumnSink<G>{a.dw, 0, true});
  }
  if (a.scale.data != nullptr) {
    const ColumnReduceShape s = ColumnReduceShape::per_sequence(rows, cols, a.seq_len);
    reduce(s, ColumnValue<T, Acc>{a.dh.data, a.dh.ld}, ColumnSink<T>{a.dshift.data, a.dshift.ld, a.acc_mod});
    reduce(s, LayerNormDscaleTerm<T, Acc>{a.dh.data, a.dh.ld, a.xn.data, a.xn.ld, a.w, a.mean, a.rstd},
           ColumnSink<T>{a.dscale.data, a.dscale.ld, a.acc_mod});
  }
}

// ---- Host ---------------------------------------------------------------------------------

// Forward, a task per row: xn by gated_residual_row (GatedResidualOp's row), then h and the
// statistics from the stored xn as layernorm_modulate_forward (the same bits as the two unfused
// Host ops).
template <class T>
void residual_layernorm_forward(const Host& ctx, MatrixView<const T, Host> x, MatrixView<const T, Host> y,
                                MatrixView<const T, Host> gate, std::int64_t seq_len, DropoutSite drop, const T* w,
                                MatrixView<const T, Host> shift, MatrixView<const T, Host> scale, double eps,
                                MatrixView<T, Host> xn, MatrixView<T, Host> h, compute_t<T>* mean, compute_t<T>* rstd) {
  const std::int64_t cols = x.cols;
  ctx.parallel_for(x.rows, [&](std::int64_t r) {
    const std::int64_t b = r / seq_len;
    T* xr = xn.data + r * xn.ld;
    gated_residual_row(x, y, gate, seq_len, drop, r, xr);
    layernorm_modulate_row<T>(xr, cols, w, shift, scale, b, eps, h.data + r * h.ld, mean[r], rstd[r]);
  });
}

// Backward: a task per row (the row sums, then dt, dx, dy), then the column sums.
template <class T, class G>
void residual_layernorm_backward(const Host& ctx, const ResidualLayerNormGrads<T, G, Host>& a,
                                 ReduceScratch<compute_t<T>, Host> = {}) {
  using C = compute_t<T>;
  const std::int64_t cols = a.xn.cols;
  ctx.parallel_for(a.xn.rows, [&](std::int64_t r) {
    const std::int64_t b = r / a.seq_len;
    const T* xr = a.xn.data + r * a.xn.ld;
    const T* dhr = a.dh.data + r * a.dh.ld;
    const T* sc = a.scale.data != nullptr ? a.scale.data + b * a.scale.ld : nullptr;
    const C mu = a.mean[r], rs = a.rstd[r];
    auto gw = [&](std::int64_t c) { return rln_dxhat(C(dhr[c]), sc != nullptr ? C(sc[c]) : C(0), C(a.w[c])); };
    const C mg = host_lane_sum<C>(cols, [&](std::int64_t c) { return gw(c); }) / static_cast<C>(cols);
    const C mgx =
        host_lane_sum<C>(cols, [&](std::int64_t c) { return gw(c) * ((C(xr[c]) - mu) * rs); }) / static_cast<C>(cols);
    const T* dxnr = a.dxn.data + r * a.dxn.ld;
    const T* g = a.gate.data != nullptr ? a.gate.data + b * a.gate.ld : nullptr;
    C f[kDropoutChunk];
    for (std::int64_t c0 = 0; c0 < cols; c0 += kDropoutChunk) {
      const std::int64_t nc = std::min(kDropoutChunk, cols - c0);
      if (a.dy.data != nullptr) dropout_factors(a.drop, static_cast<std::uint64_t>(r * cols + c0), nc, f);
      for (std::int64_t k = 0; k < nc; ++k) {
        const std::int64_t c = c0 + k;
        const T dt = static_cast<T>(rln_total(C(dxnr[c]), gw(c), (C(xr[c]) - mu) * rs, rs, mg, mgx));
        if (a.dt.data != nullptr) a.dt.data[r * a.dt.ld + c] = dt;
        if (a.dx.data != nullptr) {
          T& o = a.dx.data[r * a.dx.ld + c];
          o = a.acc_dx ? static_cast<T>(C(o) + C(dt)) : dt;
        }
        if (a.dy.data != nullptr) {
          C v = C(dt) * f[k];
          if (g != nullptr) v *= C(g[c]);
          T& o = a.dy.data[r * a.dy.ld + c];
          o = a.acc_dy ? static_cast<T>(C(o) + v) : static_cast<T>(v);
        }
      }
    }
  });
  residual_layernorm_column_sums(
      a, [&](const ColumnReduceShape& s, const auto& term, const auto& sink) { column_reduce<C>(ctx, s, term, sink); });
}

// ---- the tape op --------------------------------------------------------------------------

template <class B, class T, class G = T>
struct ResidualLayerNormOp {
  static constexpr const char* kName = "residual_layernorm";  // its profiling range
  using V = Var<T, B>;
  using P = Param<T, G, B>;
  using C = compute_t<T>;
  struct Out {
    V x;  // x + gate * drop(y): the residual stream
    V h;  // its LayerNorm, modulated
  };
  struct Ctx {
    V x, y, gate, shift, scale, xn, h;
    P w;
    std::int64_t seq_len;
    DropoutSite drop;
    C* mean;
    C* rstd;
  };

  // GatedResidualOp::forward(tape, x, y, gate, seq_len, dropout) followed by
  // LayerNormModulateOp::forward(tape, that, w, shift, scale, seq_len, eps), in one op. gate,
  // shift and scale may be invalid Vars (ungated; plain LayerNorm).
  static Out forward(Tape<B, T, G>& tape, V x, V y, V gate, std::int64_t seq_len, float dropout, P w, V shift, V scale,
                     double eps) {
    const auto range = tape.range(kName);
    MDLM_CHECK(x.rows() == y.rows() && x.cols() == y.cols(), "residual_layernorm: x is ", x.rows(), "x", x.cols(),
               ", y is ", y.rows(), "x", y.cols());
    MDLM_CHECK(x.id != y.id, "residual_layernorm: x and y must be different variables");
    MDLM_CHECK(seq_len > 0 && x.rows() % seq_len == 0, "residual_layernorm: ", x.rows(),
               " rows are not whole sequences of ", seq_len);
    MDLM_CHECK(w.numel() == x.cols(), "residual_layernorm: weight has ", w.numel(), " entries for ", x.cols(),
               " features");
    MDLM_CHECK(shift.valid() == scale.valid(), "residual_layernorm: shift and scale go together");
    const std::int64_t batches = x.rows() / seq_len;
    for (const V* v : {&gate, &shift, &scale}) {
      if (!v->valid()) continue;
      MDLM_CHECK(v->rows() == batches && v->cols() == x.cols(), "residual_layernorm: gate/shift/scale is ", v->rows(),
                 "x", v->cols(), ", expected ", batches, "x", x.cols());
    }
    MDLM_CHECK(dropout >= 0.0f && dropout < 1.0f, "residual_layernorm: dropout ", dropout, " must be in [0, 1)");
    DropoutSite drop;
    if (tape.options.training && dropout > 0.0f) {  // the keys GatedResidualOp draws
      drop.p = dropout;
      drop.rng = Philox{tape.options.seed};
      drop.step = tape.options.step;
      drop.offset = tape.reserve_rng_rows(x.rows(), x.cols(), seq_len);
    }
    V xn = tape.new_var(x.rows(), x.cols());
    V h = tape.new_var(x.rows(), x.cols());
    auto stats = tape.template scratch<C>(Shape{2, x.rows()});
    Ctx ctx{x, y, gate, shift, scale, xn, h, w, seq_len, drop, stats.data, stats.data + x.rows()};
    residual_layernorm_forward(tape.backend(), MatrixView<const T, B>(x.value), MatrixView<const T, B>(y.value),
                               MatrixView<const T, B>(gate.value), seq_len, drop, w.value.data,
                               MatrixView<const T, B>(shift.value), MatrixView<const T, B>(scale.value), eps, xn.value,
                               h.value, ctx.mean, ctx.rstd);
    tape.template record<ResidualLayerNormOp>(ctx);
    return {xn, h};
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    ResidualLayerNormGrads<T, G, B> a;
    a.dh = MatrixView<const T, B>(tape.grad_out(ctx.h));
    a.dxn = MatrixView<const T, B>(tape.grad_out(ctx.xn));
    a.xn = MatrixView<const T, B>(ctx.xn.value);
    a.y = MatrixView<const T, B>(ctx.y.value);
    a.gate = MatrixView<const T, B>(ctx.gate.value);
    a.scale = MatrixView<const T, B>(ctx.scale.value);
    a.w = ctx.w.value.data;
    a.seq_len = ctx.seq_len;
    a.drop = ctx.drop;
    a.mean = ctx.mean;
    a.rstd = ctx.rstd;
    a.dw = ctx.w.grad.data;
    auto dx = tape.grad_in(ctx.x);
    auto dy = tape.grad_in(ctx.y);
    typename Tape<B, T, G>::GradTarget dgate, dshift, dscale;
    if (ctx.gate.valid()) dgate = tape.grad_in(ctx.gate);
    if (ctx.shift.valid()) {
      dshift = tape.grad_in(ctx.shift);
      dscale = tape.grad_in(ctx.scale);
      MDLM_CHECK(dshift.accumulate == dscale.accumulate, "residual_layernorm: shift and scale gradients out of step");
    }
    a.dy = dy.grad;
    a.acc_dy = dy.accumulate;
    a.dgate = dgate.grad;
    a.acc_dgate = dgate.accumulate;
    a.dshift = dshift.grad;
    a.dscale = dscale.grad;
    a.acc_mod = dshift.accumulate;
    if (a.dgate.data != nullptr) {
      if (dx.needed && !dx.accumulate) {
        a.dt = dx.grad;  // dx = dt: the gate's sum reads it back from there
      } else {
        a.dt = MatrixView<T, B>(tape.template scratch<T>(Shape{ctx.xn.rows(), ctx.xn.cols()}));
        a.dx = dx.grad;
        a.acc_dx = dx.accumulate;
      }
    } else {
      a.dx = dx.grad;
      a.acc_dx = dx.accumulate;
    }
    const std::int64_t n = residual_layernorm_reduce_scratch(tape.backend(), ctx.xn.rows(), ctx.xn.cols(), ctx.seq_len,
                                                             a.dw != nullptr, ctx.gate.valid() || ctx.scale.valid());
    C* ws = n > 0 ? tape.template scratch<C>(Shape{n}).data : nullptr;
    residual_layernorm_backward(tape.backend(), a, ReduceScratch<C, B>{ws, n});
  }
};

}  // namespace mdlm
