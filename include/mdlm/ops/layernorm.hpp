#pragma once
// LayerNorm without bias (statistics in the compute type: fp32 or fp64) fused with the adaLN
// modulation of the DiT:
//   n = (x - mean) * rstd * w;   h = n * (1 + scale[b]) + shift[b]
// x, h (B*T, C); w (C); shift, scale (B, C), one row per sequence (b = row / T), possibly
// strided column slices of the adaLN output. Without shift/scale it is plain LayerNorm * w.
// Backward (dn = dh * (1 + scale[b]), xhat = (x - mean) * rstd):
//   dshift[b] = sum_t dh;  dscale[b] = sum_t dh * n;  dw += sum_rows dn * xhat
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dn * w

#include <cmath>
#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

template <class T>
void layernorm_modulate_forward(const Host& ctx, MatrixView<const T, Host> x, const T* w, MatrixView<const T, Host> shift,
                                MatrixView<const T, Host> scale, std::int64_t seq_len, double eps, MatrixView<T, Host> h,
                                compute_t<T>* mean, compute_t<T>* rstd) {
  using C = compute_t<T>;
  const std::int64_t cols = x.cols;
  ctx.parallel_for(x.rows, [&](std::int64_t r) {
    const T* xr = x.data + r * x.ld;
    C m = 0;
    for (std::int64_t c = 0; c < cols; ++c) m += xr[c];
    m /= static_cast<C>(cols);
    C v = 0;
    for (std::int64_t c = 0; c < cols; ++c) v += (xr[c] - m) * (xr[c] - m);
    v /= static_cast<C>(cols);
    const C rs = C(1) / std::sqrt(v + static_cast<C>(eps));
    mean[r] = m;
    rstd[r] = rs;
    const std::int64_t b = r / seq_len;
    for (std::int64_t c = 0; c < cols; ++c) {
      C n = (xr[c] - m) * rs * w[c];
      if (shift.data != nullptr) n = n * (C(1) + scale.data[b * scale.ld + c]) + shift.data[b * shift.ld + c];
      h.data[r * h.ld + c] = static_cast<T>(n);
    }
  });
}

// dx written (or added when accumulate_dx); dw added; dshift/dscale written (or added).
template <class T, class G>
void layernorm_modulate_backward(const Host& ctx, MatrixView<const T, Host> dh, MatrixView<const T, Host> x, const T* w,
                                 MatrixView<const T, Host> scale, std::int64_t seq_len, const compute_t<T>* mean,
                                 const compute_t<T>* rstd, MatrixView<T, Host> dx, bool accumulate_dx, G* dw,
                                 MatrixView<T, Host> dshift, MatrixView<T, Host> dscale, bool accumulate_mod) {
  using C = compute_t<T>;
  const std::int64_t rows = x.rows, cols = x.cols;
  const bool modulated = scale.data != nullptr;
  // dx per row (parallel over rows).
  ctx.parallel_for(rows, [&](std::int64_t r) {
    const std::int64_t b = r / seq_len;
    const T* xr = x.data + r * x.ld;
    const T* dr = dh.data + r * dh.ld;
    C sum_d = 0, sum_dx = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const C xhat = (xr[c] - mean[r]) * rstd[r];
      C dn = dr[c];
      if (modulated) dn *= C(1) + scale.data[b * scale.ld + c];
      const C dxhat = dn * w[c];
      sum_d += dxhat;
      sum_dx += dxhat * xhat;
    }
    sum_d /= static_cast<C>(cols);
    sum_dx /= static_cast<C>(cols);
    for (std::int64_t c = 0; c < cols; ++c) {
      const C xhat = (xr[c] - mean[r]) * rstd[r];
      C dn = dr[c];
      if (modulated) dn *= C(1) + scale.data[b * scale.ld + c];
      const C g = rstd[r] * (dn * w[c] - sum_d - xhat * sum_dx);
      T& out = dx.data[r * dx.ld + c];
      out = accumulate_dx ? static_cast<T>(out + g) : static_cast<T>(g);
    }
  });
  // dw (parallel over columns, fixed row order: deterministic).
  if (dw != nullptr) {
    ctx.parallel_for(cols, [&](std::int64_t c) {
      C s = 0;
      for (std::int64_t r = 0; r < rows; ++r) {
        C dn = dh.data[r * dh.ld + c];
        if (modulated) dn *= C(1) + scale.data[(r / seq_len) * scale.ld + c];
        s += dn * (x.data[r * x.ld + c] - mean[r]) * rstd[r];
      }
      dw[c] += static_cast<G>(s);
    });
  }
  // dshift, dscale per (sequence, column).
  if (modulated) {
    const std::int64_t batches = rows / seq_len;
    ctx.parallel_for(batches * cols, [&](std::int64_t i) {
      const std::int64_t b = i / cols, c = i % cols;
      C ds = 0, dsc = 0;
      for (std::int64_t t = 0; t < seq_len; ++t) {
        const std::int64_t r = b * seq_len + t;
        const C g = dh.data[r * dh.ld + c];
        ds += g;
        dsc += g * (x.data[r * x.ld + c] - mean[r]) * rstd[r] * w[c];
      }
      T& s0 = dshift.data[b * dshift.ld + c];
      T& s1 = dscale.data[b * dscale.ld + c];
      s0 = accumulate_mod ? static_cast<T>(s0 + ds) : static_cast<T>(ds);
      s1 = accumulate_mod ? static_cast<T>(s1 + dsc) : static_cast<T>(dsc);
    });
  }
}

template <class B, class T, class G = T>
struct LayerNormModulateOp {
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
    layernorm_modulate_backward(tape.backend(), MatrixView<const T, B>(dh), MatrixView<const T, B>(ctx.x.value),
                                ctx.w.value.data, MatrixView<const T, B>(ctx.scale.value), ctx.seq_len, ctx.mean,
                                ctx.rstd, dx.grad, dx.accumulate, ctx.w.grad.data, dshift.grad, dscale.grad,
                                dshift.accumulate);
  }
};

}  // namespace mdlm
