#pragma once
// CUDA twins of the optimizer kernels in optim/adamw.hpp: the fused AdamW + cast pass and the
// EMA pass (one launch each over the parameter buffer), and a deterministic sum of squares
// (fixed per-block partial sums, then one block in order).

#include <cmath>
#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/optim/adamw.hpp"

namespace mdlm {
namespace cuda_kernels {

template <class G, class T>
__global__ void adamw_update(std::int64_t n, float* master, float* m, float* v, const G* grad, T* value, AdamWStep s) {
  for (std::int64_t i = cuda_detail::global_index(); i < n; i += cuda_detail::global_stride()) {
    const float g = static_cast<float>(to_compute(grad[i])) * s.grad_scale;
    const float mi = s.beta1 * m[i] + (1.0f - s.beta1) * g;
    const float vi = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float w = master[i] - s.lr * ((mi / s.bias1) / (sqrtf(vi / s.bias2) + s.eps) + s.weight_decay * master[i]);
    master[i] = w;
    value[i] = from_compute<T>(w);
  }
}

template <int kUnused = 0>
__global__ void ema_update_kernel(std::int64_t n, float* ema, const float* master, float decay) {
  for (std::int64_t i = cuda_detail::global_index(); i < n; i += cuda_detail::global_stride()) {
    ema[i] = decay * ema[i] + (1.0f - decay) * master[i];
  }
}

template <class G>
__global__ void sum_of_squares_partial(const G* g, std::int64_t n, double* partial) {
  double s = 0;
  for (std::int64_t i = cuda_detail::global_index(); i < n; i += cuda_detail::global_stride()) {
    const double x = static_cast<double>(to_compute(g[i]));
    s += x * x;
  }
  s = cuda_detail::block_reduce<double, false>(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <int kUnused = 0>
__global__ void sum_partials(const double* partial, int count, double* out) {
  double s = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = cuda_detail::block_reduce<double, false>(s);
  if (threadIdx.x == 0) out[0] = s;
}

}  // namespace cuda_kernels

template <class G>
double sum_of_squares(Cuda& ctx, const G* g, std::int64_t n) {
  constexpr int kBlocks = 1024;
  DeviceBuffer<double> partial(kBlocks + 1);
  cuda_kernels::sum_of_squares_partial<<<kBlocks, 256, 0, ctx.stream()>>>(g, n, partial.data());
  MDLM_CUDA_CHECK_LAUNCH();
  cuda_kernels::sum_partials<><<<1, 1024, 0, ctx.stream()>>>(partial.data(), kBlocks, partial.data() + kBlocks);
  MDLM_CUDA_CHECK_LAUNCH();
  double out = 0;
  MDLM_CUDA_CHECK(cudaMemcpyAsync(&out, partial.data() + kBlocks, sizeof out, cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return out;
}

template <class G, class T>
void adamw_update(Cuda& ctx, std::int64_t n, float* master, float* m, float* v, const G* grad, T* value, AdamWStep s) {
  cuda_kernels::adamw_update<<<cuda_detail::blocks_for(n), cuda_detail::kThreads, 0, ctx.stream()>>>(n, master, m, v, grad,
                                                                                                  value, s);
  MDLM_CUDA_CHECK_LAUNCH();
}

inline void ema_update(Cuda& ctx, std::int64_t n, float* ema, const float* master, float decay) {
  cuda_kernels::ema_update_kernel<><<<cuda_detail::blocks_for(n), cuda_detail::kThreads, 0, ctx.stream()>>>(n, ema, master,
                                                                                                       decay);
  MDLM_CUDA_CHECK_LAUNCH();
}

}  // namespace mdlm
