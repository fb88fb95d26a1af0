#pragma once
// CUDA LayerNorm (no bias, fp32 statistics) fused with the adaLN modulation; see
// ops/layernorm.hpp for the math. Forward and dx: one warp per row. dw (over all rows) and
// dshift/dscale (per sequence): the deterministic two-stage column reductions of
// ops/cuda/column_reduce.cuh on the terms of ops/layernorm.hpp (Host twin:
// layernorm_param_grads_twin).

#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/ops/cuda/column_reduce.cuh"
#include "mdlm/ops/layernorm.hpp"

namespace mdlm {
namespace cuda_kernels {

template <class T>
__global__ void layernorm_modulate_forward(MatrixView<const T, Cuda> x, const T* w, MatrixView<const T, Cuda> shift,
                                           MatrixView<const T, Cuda> scale, std::int64_t seq_len, float eps,
                                           MatrixView<T, Cuda> h, float* mean, float* rstd) {
  const std::int64_t r = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= x.rows) return;
  const T* xr = x.data + r * x.ld;
  float s = 0;
  for (std::int64_t c = lane; c < x.cols; c += 32) s += to_compute(xr[c]);
  const float m = cuda_detail::warp_sum(s) / static_cast<float>(x.cols);
  float v = 0;
  for (std::int64_t c = lane; c < x.cols; c += 32) {
    const float d = to_compute(xr[c]) - m;
    v += d * d;
  }
  const float rs = rsqrtf(cuda_detail::warp_sum(v) / static_cast<float>(x.cols) + eps);
  if (lane == 0) {
    mean[r] = m;
    rstd[r] = rs;
  }
  const std::int64_t b = r / seq_len;
  for (std::int64_t c = lane; c < x.cols; c += 32) {
    float n = (to_compute(xr[c]) - m) * rs * to_compute(w[c]);
    if (shift.data != nullptr) {
      n = n * (1.0f + to_compute(scale.data[b * scale.ld + c])) + to_compute(shift.data[b * shift.ld + c]);
    }
    h.data[r * h.ld + c] = from_compute<T>(n);
  }
}

template <class T>
__global__ void layernorm_modulate_backward_dx(MatrixView<const T, Cuda> dh, MatrixView<const T, Cuda> x, const T* w,
                                               MatrixView<const T, Cuda> scale, std::int64_t seq_len, const float* mean,
                                               const float* rstd, MatrixView<T, Cuda> dx, bool accumulate) {
  const std::int64_t r = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= x.rows) return;
  const std::int64_t b = r / seq_len;
  auto dxhat = [&](std::int64_t c) {
    float dn = to_compute(dh.data[r * dh.ld + c]);
    if (scale.data != nullptr) dn *= 1.0f + to_compute(scale.data[b * scale.ld + c]);
    return dn * to_compute(w[c]);
  };
  float sd = 0, sdx = 0;
  for (std::int64_t c = lane; c < x.cols; c += 32) {
    const float xhat = (to_compute(x.data[r * x.ld + c]) - mean[r]) * rstd[r];
    const float g = dxhat(c);
    sd += g;
    sdx += g * xhat;
  }
  sd = cuda_detail::warp_sum(sd) / static_cast<float>(x.cols);
  sdx = cuda_detail::warp_sum(sdx) / static_cast<float>(x.cols);
  for (std::int64_t c = lane; c < x.cols; c += 32) {
    const float xhat = (to_compute(x.data[r * x.ld + c]) - mean[r]) * rstd[r];
    const float g = rstd[r] * (dxhat(c) - sd - xhat * sdx);
    T& o = dx.data[r * dx.ld + c];
    o = accumulate ? from_compute<T>(to_compute(o) + g) : from_compute<T>(g);
  }
}

}  // namespace cuda_kernels

// Launch configurations (checked on the CPU for every model shape: tests/cuda_host/).
namespace launches {
// Forward and dx: one warp per row.
inline LaunchConfig layernorm_rows(const char* kernel, std::int64_t rows) {
  LaunchConfig c = launch_detail::one_thread_each(kernel, rows * 32);
  c.warp_multiple = true;
  return c;
}
inline LaunchConfig layernorm_forward(std::int64_t rows) { return layernorm_rows("layernorm_modulate_forward", rows); }
inline LaunchConfig layernorm_backward_dx(std::int64_t rows) { return layernorm_rows("layernorm_modulate_backward_dx", rows); }
}  // namespace launches

// Statistics are fp32 on CUDA (compute_t<T> is float for float and bf16).
template <class T>
void layernorm_modulate_forward(Cuda& ctx, MatrixView<const T, Cuda> x, const T* w, MatrixView<const T, Cuda> shift,
                                MatrixView<const T, Cuda> scale, std::int64_t seq_len, double eps, MatrixView<T, Cuda> h,
                                float* mean, float* rstd) {
  static_assert(std::is_same_v<compute_t<T>, float>, "CUDA LayerNorm runs in fp32 statistics");
  launch(ctx, launches::layernorm_forward(x.rows), cuda_kernels::layernorm_modulate_forward<T>, x, w, shift, scale,
         seq_len, static_cast<float>(eps), h, mean, rstd);
}

template <class T, class G>
void layernorm_modulate_backward(Cuda& ctx, MatrixView<const T, Cuda> dh, MatrixView<const T, Cuda> x, const T* w,
                                 MatrixView<const T, Cuda> scale, std::int64_t seq_len, const float* mean,
                                 const float* rstd, MatrixView<T, Cuda> dx, bool accumulate_dx, G* dw,
                                 MatrixView<T, Cuda> dshift, MatrixView<T, Cuda> dscale, bool accumulate_mod,
                                 ReduceScratch<compute_t<T>, Cuda> scratch) {
  static_assert(std::is_same_v<compute_t<T>, float>, "CUDA LayerNorm runs in fp32 statistics");
  using Acc = float;
  launch(ctx, launches::layernorm_backward_dx(x.rows), cuda_kernels::layernorm_modulate_backward_dx<T>, dh, x, w, scale,
         seq_len, mean, rstd, dx, accumulate_dx);
  // The reductions share the scratch one after another (stream order).
  if (dw != nullptr) {
    column_reduce(ctx, ColumnReduceShape::plain(x.rows, x.cols),
                  LayerNormDwTerm<T, Acc>{dh.data, dh.ld, x.data, x.ld, scale.data, scale.ld, seq_len, mean, rstd},
                  ColumnSink<G>{dw, 0, true}, scratch);
  }
  if (scale.data != nullptr) {
    const ColumnReduceShape s = ColumnReduceShape::per_sequence(x.rows, x.cols, seq_len);
    column_reduce(ctx, s, ColumnValue<T, Acc>{dh.data, dh.ld}, ColumnSink<T>{dshift.data, dshift.ld, accumulate_mod},
                  scratch);
    column_reduce(ctx, s, LayerNormDscaleTerm<T, Acc>{dh.data, dh.ld, x.data, x.ld, w, mean, rstd},
                  ColumnSink<T>{dscale.data, dscale.ld, accumulate_mod}, scratch);
  }
}

}  // namespace mdlm
