#pragma once
// CUDA twins of the optimizer kernels in optim/adamw.hpp: the fused AdamW + cast pass and the
// EMA pass (one launch each over the parameter buffer), and a deterministic sum of squares
// (fixed per-block partial sums, then one block in order); and of the step-status functions in
// optim/step_status.hpp (one thread each), so a training step keeps its loss, norm, clipping
// multiplier and non-finite flag on the device: nothing is allocated and nothing synchronized.

#include <cmath>
#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/optim/adamw.hpp"
#include "mdlm/optim/step_status.hpp"

namespace mdlm {
namespace cuda_kernels {

// `status` (may be null): the clipping multiplier is read from it, and the kernel does nothing
// once its flag says a step was not finite.
template <class G, class T>
__global__ void adamw_update(std::int64_t n, float* master, float* m, float* v, const G* grad, T* value, AdamWStep s,
                             const StepStatus* status) {
  if (status != nullptr) {
    if (status->bad != 0) return;
    s.grad_scale = static_cast<float>(status->multiplier);
  }
  const AdamWScalars<float> k = adamw_scalars(s);
  for (std::int64_t i = cuda_detail::global_index(); i < n; i += cuda_detail::global_stride()) {
    const float g = static_cast<float>(to_compute(grad[i])) * s.grad_scale;
    float mi = m[i], vi = v[i], w = master[i];
    value[i] = from_compute<T>(adamw_element(w, mi, vi, g, s, k));  // the Host's arithmetic (optim/adamw.hpp)
    m[i] = mi;
    v[i] = vi;
    master[i] = w;
  }
}

template <int kUnused = 0>
__global__ void ema_update_kernel(std::int64_t n, float* ema, const float* master, float decay, const StepStatus* status) {
  if (status != nullptr && status->bad != 0) return;
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

template <class T>
__global__ void step_status_add_loss(StepStatus* s, const T* loss, std::int64_t accum, bool first) {
  ::mdlm::step_status_add(*s, static_cast<double>(to_compute(loss[0])), accum, first);
}

template <int kUnused = 0>
__global__ void step_status_finish(StepStatus* s, double clip, std::int64_t step, double* window) {
  ::mdlm::step_status_finish(*s, clip, step, window);
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
// One thread: a scalar update of the step status.
inline LaunchConfig step_status_add_loss() { return launch_detail::one_thread_each("step_status_add_loss", 1, 1); }
inline LaunchConfig step_status_finish() { return launch_detail::one_thread_each("step_status_finish", 1, 1); }
}  // namespace launches

// The partial sums sum_of_squares_into needs (one per block of the first stage, whatever n).
inline std::int64_t sum_of_squares_partials(const Cuda&, std::int64_t) { return cuda_kernels::kSumBlocks; }

// Sum of squares of g[0, n) into *out (device memory), with `partial` (sum_of_squares_partials
// doubles, device memory) for the first stage: two launches, no allocation, no synchronization.
template <class G>
void sum_of_squares_into(Cuda& ctx, const G* g, std::int64_t n, double* partial, double* out) {
  launch(ctx, launches::sum_of_squares_partial(), cuda_kernels::sum_of_squares_partial<G>, g, n, partial);
  launch(ctx, launches::sum_partials(), cuda_kernels::sum_partials<>, partial, cuda_kernels::kSumBlocks, out);
}

// The same, returned to the host (allocates and synchronizes: not for a training step).
template <class G>
double sum_of_squares(Cuda& ctx, const G* g, std::int64_t n) {
  constexpr int kBlocks = cuda_kernels::kSumBlocks;
  DeviceBuffer<double> partial(ctx, Shape{kBlocks + 1});
  sum_of_squares_into(ctx, g, n, partial.data(), partial.data() + kBlocks);
  double out = 0;
  MDLM_CUDA_CHECK(cudaMemcpyAsync(&out, partial.data() + kBlocks, sizeof out, cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return out;
}

template <class G, class T>
void adamw_update(Cuda& ctx, std::int64_t n, float* master, float* m, float* v, const G* grad, T* value, AdamWStep s,
                  const StepStatus* status = nullptr) {
  launch(ctx, launches::adamw_update(n), cuda_kernels::adamw_update<G, T>, n, master, m, v, grad, value, s, status);
}

inline void ema_update(Cuda& ctx, std::int64_t n, float* ema, const float* master, float decay,
                       const StepStatus* status = nullptr) {
  launch(ctx, launches::ema_update(n), cuda_kernels::ema_update_kernel<>, n, ema, master, decay, status);
}

template <class T>
void step_status_add_loss(Cuda& ctx, StepStatus* s, const T* loss, std::int64_t accum, bool first) {
  launch(ctx, launches::step_status_add_loss(), cuda_kernels::step_status_add_loss<T>, s, loss, accum, first);
}

inline void step_status_finish(Cuda& ctx, StepStatus* s, double clip, std::int64_t step, double* window) {
  launch(ctx, launches::step_status_finish(), cuda_kernels::step_status_finish<>, s, clip, step, window);
}

}  // namespace mdlm
