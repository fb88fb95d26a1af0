#pragma once
// Linear layer y = x W^T (+ b), optionally followed by tanh-GELU fused into the GEMM epilogue
// (GELU_AUX_BIAS forward keeps the pre-activation for backward).
//   x (N, in), W (out, in) [PyTorch layout], b (out), y (N, out)
// Backward:
//   dpre = dy * gelu'(pre)                     (GELU only)
//   dx   = dpre W        (written or accumulated, per the tape)
//   dW  += dpre^T x      (parameter gradients accumulate)
//   db  += sum_rows dpre
// y's rows may be padded (forward's out_ld_multiple: the output head, nn/dit.hpp): every GEMM
// and the bias-gradient sum go through its leading dimension and touch only its `out` columns.

#include <algorithm>
#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/ops/column_reduce.hpp"
#include "mdlm/ops/gelu.hpp"
#include "mdlm/ops/gemm.hpp"

namespace mdlm {

// db += column sums of dy (N, out): Host kernel (its own order; the CUDA kernel's twin is
// column_sum in ops/column_reduce.hpp).
template <class T, class G>
void bias_grad_accumulate(const Host& ctx, MatrixView<const T, Host> dy, G* db, ReduceScratch<compute_t<T>, Host> = {}) {
  // A task sums a block of columns over all rows into a local vector (contiguous, vectorized
  // loads); each column still sums its rows in ascending order.
  constexpr std::int64_t kCols = 64;
  ctx.parallel_for((dy.cols + kCols - 1) / kCols, [&](std::int64_t task) {
    const std::int64_t j0 = task * kCols, nc = std::min(kCols, dy.cols - j0);
    compute_t<T> s[kCols] = {};
    for (std::int64_t i = 0; i < dy.rows; ++i) {
      const T* row = dy.data + i * dy.ld + j0;
      for (std::int64_t k = 0; k < nc; ++k) s[k] += row[k];
    }
    for (std::int64_t k = 0; k < nc; ++k) db[j0 + k] += static_cast<G>(s[k]);
  });
}

// d = dy * gelu'(pre), all (N, out): Host kernel.
template <class T>
void gelu_backward(const Host& ctx, MatrixView<const T, Host> dy, MatrixView<const T, Host> pre, MatrixView<T, Host> d) {
  ctx.parallel_for(dy.rows, [&](std::int64_t i) {
    const T* g = dy.data + i * dy.ld;
    const T* x = pre.data + i * pre.ld;
    T* o = d.data + i * d.ld;
    for (std::int64_t j = 0; j < dy.cols; ++j) o[j] = g[j] * gelu_tanh_grad(x[j]);
  });
}

template <class B, class T, class G = T>
struct LinearOp {
  static constexpr const char* kName = "linear";  // its profiling range
  using V = Var<T, B>;
  using P = Param<T, G, B>;
  struct Ctx {
    V x, y;
    P w, b;
    bool gelu;
    MatrixView<T, B> pre;  // GELU pre-activation (N, out)
  };

  // b may be an empty Param (no bias). y's leading dimension is `out` rounded up to a multiple
  // of out_ld_multiple (1: compact).
  static V forward(Tape<B, T, G>& tape, V x, P w, P b, bool gelu = false, std::int64_t out_ld_multiple = 1) {
    const auto range = tape.range(kName);
    MDLM_CHECK(x.cols() == w.cols(), "linear: input has ", x.cols(), " features, weight is ", w.rows(), "x", w.cols());
    MDLM_CHECK(!gelu || b.valid(), "linear: the fused GELU epilogue needs a bias");
    if (b.valid()) MDLM_CHECK(b.numel() == w.rows(), "linear: bias has ", b.numel(), " entries for ", w.rows(), " outputs");
    const std::int64_t n = x.rows(), out = w.rows();
    V y = tape.new_var(n, out, out_ld_multiple);
    Ctx ctx{x, y, w, b, gelu, {}};
    GemmEpilogue<T, B> epi;
    if (gelu) {
      auto pre = tape.template scratch<T>(Shape{n, out});
      ctx.pre = MatrixView<T, B>(pre.data, n, out);
      epi = GemmEpilogue<T, B>::gelu_aux_bias(b.value.data, ctx.pre);
    } else if (b.valid()) {
      epi = GemmEpilogue<T, B>::with_bias(b.value.data);
    }
    gemm(tape.backend(), Op::N, MatrixView<const T, B>(x.value), Op::T, MatrixView<const T, B>(w.value), y.value, epi);
    tape.template record<LinearOp>(ctx);
    return y;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dy = tape.grad_out(ctx.y);
    if (ctx.gelu) {  // dy <- dy * gelu'(pre), in place: nothing else reads dy
      gelu_backward(tape.backend(), MatrixView<const T, B>(dy), MatrixView<const T, B>(ctx.pre), dy);
    }
    auto dx = tape.grad_in(ctx.x);
    if (dx.needed) {
      gemm(tape.backend(), Op::N, MatrixView<const T, B>(dy), Op::N, MatrixView<const T, B>(ctx.w.value), dx.grad, {},
           compute_t<T>(1), compute_t<T>(dx.accumulate ? 1 : 0));
    }
    if (ctx.w.grad.data != nullptr) {  // dW += dy^T x  (G may be wider than T: bf16 -> fp32)
      gemm(tape.backend(), Op::T, MatrixView<const T, B>(dy), Op::N, MatrixView<const T, B>(ctx.x.value), ctx.w.grad, {},
           compute_t<G>(1), compute_t<G>(1));
    }
    if (ctx.b.valid() && ctx.b.grad.data != nullptr) {
      const std::int64_t scratch = column_reduce_scratch(tape.backend(), ColumnReduceShape::plain(dy.rows, dy.cols));
      compute_t<T>* ws = scratch > 0 ? tape.template scratch<compute_t<T>>(Shape{scratch}).data : nullptr;
      bias_grad_accumulate(tape.backend(), MatrixView<const T, B>(dy), ctx.b.grad.data,
                           ReduceScratch<compute_t<T>, B>{ws, scratch});
    }
  }
};

}  // namespace mdlm
