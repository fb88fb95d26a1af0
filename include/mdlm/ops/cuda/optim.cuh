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

inline constexpr int kSumThreads = 256, kSumBlocks = 1024, kPartialThreads = 1024;

template <class G>
__global__ void sum_of_squares_partial(const G* g, std::int64_t n, double* partial) {
  __shared__ cuda_detail::BlockShared<double, kSumThreads> red;
  double s = 0;
  for (std::int64_t i = cuda_detail::global_index(); i < n; i += cuda_detail::global_stride()) {
    const double x = static_cast<double>(to_compute(g[i]));
    s += x * x;
  }
  s = cuda_detail::BlockReducer<double, kSumThreads>::sum(s, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <int kUnused = 0>
__global__ void sum_partials(const double* partial, int count, double* out) {
  __shared__ cuda_detail::BlockShared<double, kPartialThreads> red;
  double s = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = cuda_detail::BlockReducer<double, kPartialThreads>::sum(s, red);
  if (threadIdx.x == 0) out[0] = s;
}

}  // namespace cuda_kernels

namespace launches {
inline LaunchConfig sum_of_squares_partial() {
  return launch_detail::block_each("sum_of_squares_partial", cuda_kernels::kSumBlocks, cuda_kernels::kSumThreads,
                                   sizeof(cuda_detail::BlockShared<double, cuda_kernels::kSumThreads>));
}
inline LaunchConfig sum_partials() {
  return launch_detail::block_each("sum_partials", 1, cuda_kernels::kPartialThreads,
                                   sizeof(cuda_detail::BlockShared<double, cuda_kernels::kPartialThreads>));
}
inline LaunchConfig adamw_update(std::int64_t n) { return launch_detail::grid_stride("adamw_update", n); }
inline LaunchConfig ema_update(std::int64_t n) { return launch_detail::grid_stride("ema_update", n); }
}  // namespace launches

template <class G>
double sum_of_squares(Cuda& ctx, const G* g, std::int64_t n) {
  constexpr int kBlocks = cuda_kernels::kSumBlocks;
  DeviceBuffer<double> partial(ctx, Shape{kBlocks + 1});
  launch(ctx, launches::sum_of_squares_partial(), cuda_kernels::sum_of_squares_partial<G>, g, n, partial.data());
  launch(ctx, launches::sum_partials(), cuda_kernels::sum_partials<>, partial.data(), kBlocks, partial.data() + kBlocks);
  double out = 0;
  MDLM_CUDA_CHECK(cudaMemcpyAsync(&out, partial.data() + kBlocks, sizeof out, cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return out;
}

template <class G, class T>
void adamw_update(Cuda& ctx, std::int64_t n, float* master, float* m, float* v, const G* grad, T* value, AdamWStep s) {
  launch(ctx, launches::adamw_update(n), cuda_kernels::adamw_update<G, T>, n, master, m, v, grad, value, s);
}

inline void ema_update(Cuda& ctx, std::int64_t n, float* ema, const float* master, float decay) {
  launch(ctx, launches::ema_update(n), cuda_kernels::ema_update_kernel<>, n, ema, master, decay);
}

}  // namespace mdlm
