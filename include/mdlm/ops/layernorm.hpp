#pragma once
// LayerNorm without bias (statistics in the compute type: fp32 or fp64) fused with the adaLN
// modulation of the DiT:
//   n = (x - mean) * rstd * w;   h = n * (1 + scale[b]) + shift[b]
// x, h (B*T, C); w (C); shift, scale (B, C), one row per sequence (b = row / T), possibly
// strided column slices of the adaLN output. Without shift/scale it is plain LayerNorm * w.
// Backward (dn = dh * (1 + scale[b]), xhat = (x - mean) * rstd):
//   dshift[b] = sum_t dh;  dscale[b] = sum_t dh * n;  dw += sum_rows dn * xhat
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dn * w

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/core/math.hpp"
#include "mdlm/ops/column_reduce.hpp"

namespace mdlm {

// Columns per task of the backward's column sums (dw, dshift, dscale): a task adds whole rows
// of a block into local sums (contiguous loads); each column sums its rows in ascending order.
inline constexpr std::int64_t kLayerNormColBlock = 64;

// One row: its statistics (mean, rstd) and h = (x - mean) rstd w (1 + scale[b]) + shift[b]
// (no shift: no modulation), with lane sums in a fixed order. The fused residual + LayerNorm's
// Host twin (ops/residual_layernorm.hpp) runs the same function.
template <class T>
inline void layernorm_modulate_row(const T* xr, std::int64_t cols, const T* w, MatrixView<const T, Host> shift,
                                   MatrixView<const T, Host> scale, std::int64_t b, double eps, T* hr, compute_t<T>& mean,
                                   compute_t<T>& rstd) {
  using C = compute_t<T>;
  const C m = host_lane_sum<C>(cols, [&](std::int64_t c) { return C(xr[c]); }) / static_cast<C>(cols);
  const C v =
      host_lane_sum<C>(cols, [&](std::int64_t c) { return (C(xr[c]) - m) * (C(xr[c]) - m); }) / static_cast<C>(cols);
  const C rs = C(1) / std::sqrt(v + static_cast<C>(eps));
  mean = m;
  rstd = rs;
  if (shift.data != nullptr) {
    const T* sc = scale.data + b * scale.ld;
    const T* sh = shift.data + b * shift.ld;
    for (std::int64_t c = 0; c < cols; ++c) hr[c] = static_cast<T>((C(xr[c]) - m) * rs * C(w[c]) * (C(1) + C(sc[c])) + C(sh[c]));
  } else {
    for (std::int64_t c = 0; c < cols; ++c) hr[c] = static_cast<T>((C(xr[c]) - m) * rs * C(w[c]));
  }
}

template <class T>
void layernorm_modulate_forward(const Host& ctx, MatrixView<const T, Host> x, const T* w, MatrixView<const T, Host> shift,
                                MatrixView<const T, Host> scale, std::int64_t seq_len, double eps, MatrixView<T, Host> h,
                                compute_t<T>* mean, compute_t<T>* rstd) {
  ctx.parallel_for(x.rows, [&](std::int64_t r) {
    layernorm_modulate_row(x.data + r * x.ld, x.cols, w, shift, scale, r / seq_len, eps, h.data + r * h.ld, mean[r], rstd[r]);
  });
}

// dx written (or added when accumulate_dx); dw added; dshift/dscale written (or added).
template <class T, class G>
void layernorm_modulate_backward(const Host& ctx, MatrixView<const T, Host> dh, MatrixView<const T, Host> x, const T* w,
                                 MatrixView<const T, Host> scale, std::int64_t seq_len, const compute_t<T>* mean,
                                 const compute_t<T>* rstd, MatrixView<T, Host> dx, bool accumulate_dx, G* dw,
                                 MatrixView<T, Host> dshift, MatrixView<T, Host> dscale, bool accumulate_mod,
                                 ReduceScratch<compute_t<T>, Host> = {}) {
  using C = compute_t<T>;
  const std::int64_t rows = x.rows, cols = x.cols;
  const bool modulated = scale.data != nullptr;
  // dn = dh * (1 + scale[b]) of row r, column c.
  auto dn_of = [&](std::int64_t r, std::int64_t c) {
    const C g = dh.data[r * dh.ld + c];
    return modulated ? g * (C(1) + C(scale.data[(r / seq_len) * scale.ld + c])) : g;
  };
  // dx per row (parallel over rows).
  ctx.parallel_for(rows, [&](std::int64_t r) {
    const T* xr = x.data + r * x.ld;
    const C mu = mean[r], rs = rstd[r];
    const C sum_d = host_lane_sum<C>(cols, [&](std::int64_t c) { return dn_of(r, c) * C(w[c]); }) / static_cast<C>(cols);
    const C sum_dx = host_lane_sum<C>(cols, [&](std::int64_t c) {
                       return dn_of(r, c) * C(w[c]) * ((C(xr[c]) - mu) * rs);
                     }) / static_cast<C>(cols);
    T* out = dx.data + r * dx.ld;
    for (std::int64_t c = 0; c < cols; ++c) {
      const C g = rs * (dn_of(r, c) * C(w[c]) - sum_d - (C(xr[c]) - mu) * rs * sum_dx);
      out[c] = accumulate_dx ? static_cast<T>(out[c] + g) : static_cast<T>(g);
    }
  });
  const std::int64_t blocks = (cols + kLayerNormColBlock - 1) / kLayerNormColBlock;
  // dw (blocks of columns, rows in order: deterministic).
  if (dw != nullptr) {
    ctx.parallel_for(blocks, [&](std::int64_t blk) {
      const std::int64_t c0 = blk * kLayerNormColBlock, nc = std::min(kLayerNormColBlock, cols - c0);
      C s[kLayerNormColBlock] = {};
      for (std::int64_t r = 0; r < rows; ++r) {
        const T* xr = x.data + r * x.ld + c0;
        const C mu = mean[r], rs = rstd[r];
        for (std::int64_t k = 0; k < nc; ++k) s[k] += dn_of(r, c0 + k) * (C(xr[k]) - mu) * rs;
      }
      for (std::int64_t k = 0; k < nc; ++k) dw[c0 + k] += static_cast<G>(s[k]);
    });
  }
  // dshift, dscale per (sequence, block of columns).
  if (modulated) {
    const std::int64_t batches = rows / seq_len;
    ctx.parallel_for(batches * blocks, [&](std::int64_t task) {
      const std::int64_t b = task / blocks, c0 = (task % blocks) * kLayerNormColBlock;
      const std::int64_t nc = std::min(kLayerNormColBlock, cols - c0);
      C ds[kLayerNormColBlock] = {}, dsc[kLayerNormColBlock] = {};
      for (std::int64_t t = 0; t < seq_len; ++t) {
        const std::int64_t r = b * seq_len + t;
        const T* g = dh.data + r * dh.ld + c0;
        const T* xr = x.data + r * x.ld + c0;
        const C mu = mean[r], rs = rstd[r];
        for (std::int64_t k = 0; k < nc; ++k) {
          ds[k] += C(g[k]);
          dsc[k] += C(g[k]) * (C(xr[k]) - mu) * rs * C(w[c0 + k]);
        }
      }
      T* s0 = dshift.data + b * dshift.ld + c0;
      T* s1 = dscale.data + b * dscale.ld + c0;
      for (std::int64_t k = 0; k < nc; ++k) {
        s0[k] = accumulate_mod ? static_cast<T>(s0[k] + ds[k]) : static_cast<T>(ds[k]);
        s1[k] = accumulate_mod ? static_cast<T>(s1[k] + dsc[k]) : static_cast<T>(dsc[k]);
      }
    });
  }
}

// The terms of the parameter-side column sums for the two-stage reduction
// (ops/column_reduce.hpp), in the CUDA kernels' arithmetic (xhat = (x - mean) * rstd):
//   dw:     sum over all rows of dn * xhat, dn = dh * (1 + scale[b]) (dh without modulation);
//   dscale: per sequence, sum of dh * xhat * w;   dshift: per sequence, sum of dh (ColumnValue).
template <class T, class Acc>
struct LayerNormDwTerm {
  const T* dh = nullptr;
  std::int64_t ld_dh = 0;
  const T* x = nullptr;
  std::int64_t ld_x = 0;
  const T* scale = nullptr;  // nullptr: not modulated
  std::int64_t ld_scale = 0;
  std::int64_t seq_len = 1;
  const Acc* mean = nullptr;
  const Acc* rstd = nullptr;
  MDLM_HD Acc operator()(std::int64_t r, std::int64_t c) const {
    Acc dn = static_cast<Acc>(to_compute(dh[r * ld_dh + c]));
    if (scale != nullptr) dn *= Acc(1) + static_cast<Acc>(to_compute(scale[(r / seq_len) * ld_scale + c]));
    return dn * (static_cast<Acc>(to_compute(x[r * ld_x + c])) - mean[r]) * rstd[r];
  }
};
template <class T, class Acc>
struct LayerNormDscaleTerm {
  const T* dh = nullptr;
  std::int64_t ld_dh = 0;
  const T* x = nullptr;
  std::int64_t ld_x = 0;
  const T* w = nullptr;
  const Acc* mean = nullptr;
  const Acc* rstd = nullptr;
  MDLM_HD Acc operator()(std::int64_t r, std::int64_t c) const {
    return static_cast<Acc>(to_compute(dh[r * ld_dh + c])) * (static_cast<Acc>(to_compute(x[r * ld_x + c])) - mean[r]) *
           rstd[r] * static_cast<Acc>(to_compute(w[c]));
  }
};

// Scratch (accumulator elements) of the LayerNorm backward's column sums on a backend: the
// largest of its reductions (the per-sequence ones when modulated), used one after another.
template <class Ctx>
std::int64_t layernorm_reduce_scratch(const Ctx& ctx, std::int64_t rows, std::int64_t cols, std::int64_t seq_len,
                                      bool dw, bool modulated) {
  std::int64_t n = 0;
  if (dw) n = column_reduce_scratch(ctx, ColumnReduceShape::plain(rows, cols));
  if (modulated) n = std::max(n, column_reduce_scratch(ctx, ColumnReduceShape::per_sequence(rows, cols, seq_len)));
  return n;
}

// Host twin of the CUDA backward's column sums (dw added; dshift, dscale written or added), the
// CUDA bits for fp32 statistics and inputs.
template <class T, class G>
void layernorm_param_grads_twin(const Host& ctx, MatrixView<const T, Host> dh, MatrixView<const T, Host> x, const T* w,
                                MatrixView<const T, Host> scale, std::int64_t seq_len, const compute_t<T>* mean,
                                const compute_t<T>* rstd, G* dw, MatrixView<T, Host> dshift, MatrixView<T, Host> dscale,
                                bool accumulate_mod) {
  using Acc = compute_t<T>;
  if (dw != nullptr) {
    column_reduce<Acc>(ctx, ColumnReduceShape::plain(x.rows, x.cols),
                       LayerNormDwTerm<T, Acc>{dh.data, dh.ld, x.data, x.ld, scale.data, scale.ld, seq_len, mean, rstd},
                       ColumnSink<G>{dw, 0, true});
  }
  if (scale.data != nullptr) {
    const ColumnReduceShape s = ColumnReduceShape::per_sequence(x.rows, x.cols, seq_len);
    column_reduce<Acc>(ctx, s, ColumnValue<T, Acc>{dh.data, dh.ld}, ColumnSink<T>{dshift.data, dshift.ld, accumulate_mod});
    column_reduce<Acc>(ctx, s, LayerNormDscaleTerm<T, Acc>{dh.data, dh.ld, x.data, x.ld, w, mean, rstd},
                       ColumnSink<T>{dscale.data, dscale.ld, accumulate_mod});
  }
}

template <class B, class T, class G = T>
struct LayerNormModulateOp {
  static constexpr const char* kName = "layernorm_modulate";  // its profiling range
  using V = Var<T, B>;
  using P = Param<T, G, B>;
  struct Ctx {
    V x, shift, scale, h;
    P w;
    std::int64_t seq_len;
    compute_t<T>* mean;
    compute_t<T>* rstd;
  };

  // shift/scale may be invalid Vars (plain LayerNorm, as in the AR model).
  static V forward(Tape<B, T, G>& tape, V x, P w, V shift, V scale, std::int64_t seq_len, double eps) {
    const auto range = tape.range(kName);
    MDLM_CHECK(w.numel() == x.cols(), "layernorm: weight has ", w.numel(), " entries for ", x.cols(), " features");
    MDLM_CHECK(seq_len > 0 && x.rows() % seq_len == 0, "layernorm: ", x.rows(), " rows are not whole sequences of ",
               seq_len);
    MDLM_CHECK(shift.valid() == scale.valid(), "layernorm: shift and scale go together");
    if (shift.valid()) {
      MDLM_CHECK(shift.rows() == x.rows() / seq_len && shift.cols() == x.cols() && scale.rows() == shift.rows() &&
                     scale.cols() == shift.cols(),
                 "layernorm: modulation is ", shift.rows(), "x", shift.cols(), ", expected ", x.rows() / seq_len, "x",
                 x.cols());
    }
    V h = tape.new_var(x.rows(), x.cols());
    auto stats = tape.template scratch<compute_t<T>>(Shape{2, x.rows()});
    Ctx ctx{x, shift, scale, h, w, seq_len, stats.data, stats.data + x.rows()};
    layernorm_modulate_forward(tape.backend(), MatrixView<const T, B>(x.value), w.value.data,
                               MatrixView<const T, B>(shift.value), MatrixView<const T, B>(scale.value), seq_len, eps,
                               h.value, ctx.mean, ctx.rstd);
    tape.template record<LayerNormModulateOp>(ctx);
    return h;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dh = tape.grad_out(ctx.h);
    auto dx = tape.grad_in(ctx.x);
    typename Tape<B, T, G>::GradTarget dshift, dscale;
    if (ctx.shift.valid()) {
      dshift = tape.grad_in(ctx.shift);
      dscale = tape.grad_in(ctx.scale);
      MDLM_CHECK(dshift.accumulate == dscale.accumulate, "layernorm: shift and scale gradients out of step");
    }
    MDLM_CHECK(dx.needed, "layernorm: the input must take a gradient");
    const std::int64_t scratch = layernorm_reduce_scratch(tape.backend(), ctx.x.rows(), ctx.x.cols(), ctx.seq_len,
                                                          ctx.w.grad.data != nullptr, ctx.scale.valid());
    compute_t<T>* ws = scratch > 0 ? tape.template scratch<compute_t<T>>(Shape{scratch}).data : nullptr;
    layernorm_modulate_backward(tape.backend(), MatrixView<const T, B>(dh), MatrixView<const T, B>(ctx.x.value),
                                ctx.w.value.data, MatrixView<const T, B>(ctx.scale.value), ctx.seq_len, ctx.mean,
                                ctx.rstd, dx.grad, dx.accumulate, ctx.w.grad.data, dshift.grad, dscale.grad,
                                dshift.accumulate, ReduceScratch<compute_t<T>, B>{ws, scratch});
  }
};

}  // namespace mdlm
