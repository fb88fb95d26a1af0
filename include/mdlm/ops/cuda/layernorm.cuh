#pragma once
// CUDA LayerNorm (no bias, fp32 statistics) fused with the adaLN modulation; see
// ops/layernorm.hpp for the math. Forward and dx: one warp per row. dw: one thread per column,
// rows in order. dshift/dscale: one thread per (sequence, column), positions in order.

#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
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

template <class T, class G>
__global__ void layernorm_modulate_backward_dw(MatrixView<const T, Cuda> dh, MatrixView<const T, Cuda> x,
                                               MatrixView<const T, Cuda> scale, std::int64_t seq_len, const float* mean,
                                               const float* rstd, G* dw) {
  const std::int64_t c = cuda_detail::global_index();
  if (c >= x.cols) return;
  float s = 0;
  for (std::int64_t r = 0; r < x.rows; ++r) {
    float dn = to_compute(dh.data[r * dh.ld + c]);
    if (scale.data != nullptr) dn *= 1.0f + to_compute(scale.data[(r / seq_len) * scale.ld + c]);
    s += dn * (to_compute(x.data[r * x.ld + c]) - mean[r]) * rstd[r];
  }
  dw[c] = from_compute<G>(to_compute(dw[c]) + s);
}

template <class T>
__global__ void layernorm_modulate_backward_mod(MatrixView<const T, Cuda> dh, MatrixView<const T, Cuda> x, const T* w,
                                                std::int64_t seq_len, const float* mean, const float* rstd,
                                                MatrixView<T, Cuda> dshift, MatrixView<T, Cuda> dscale,
                                                bool accumulate) {
  const std::int64_t i = cuda_detail::global_index();
  const std::int64_t batches = x.rows / seq_len;
  if (i >= batches * x.cols) return;
  const std::int64_t b = i / x.cols, c = i % x.cols;
  float ds = 0, dsc = 0;
  for (std::int64_t t = 0; t < seq_len; ++t) {
    const std::int64_t r = b * seq_len + t;
    const float g = to_compute(dh.data[r * dh.ld + c]);
    ds += g;
    dsc += g * (to_compute(x.data[r * x.ld + c]) - mean[r]) * rstd[r] * to_compute(w[c]);
  }
  T& s0 = dshift.data[b * dshift.ld + c];
  T& s1 = dscale.data[b * dscale.ld + c];
  s0 = accumulate ? from_compute<T>(to_compute(s0) + ds) : from_compute<T>(ds);
  s1 = accumulate ? from_compute<T>(to_compute(s1) + dsc) : from_compute<T>(dsc);
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
inline LaunchConfig layernorm_backward_dw(std::int64_t cols) {
  return launch_detail::one_thread_each("layernorm_modulate_backward_dw", cols);
}
inline LaunchConfig layernorm_backward_mod(std::int64_t batches, std::int64_t cols) {
  return launch_detail::one_thread_each("layernorm_modulate_backward_mod", batches * cols);
}
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
                                 MatrixView<T, Cuda> dshift, MatrixView<T, Cuda> dscale, bool accumulate_mod) {
  launch(ctx, launches::layernorm_backward_dx(x.rows), cuda_kernels::layernorm_modulate_backward_dx<T>, dh, x, w, scale,
         seq_len, mean, rstd, dx, accumulate_dx);
  if (dw != nullptr) {
    launch(ctx, launches::layernorm_backward_dw(x.cols), cuda_kernels::layernorm_modulate_backward_dw<T, G>, dh, x,
           scale, seq_len, mean, rstd, dw);
  }
  if (scale.data != nullptr) {
    launch(ctx, launches::layernorm_backward_mod(x.rows / seq_len, x.cols), cuda_kernels::layernorm_modulate_backward_mod<T>,
           dh, x, w, seq_len, mean, rstd, dshift, dscale, accumulate_mod);
  }
}

}  // namespace mdlm
