#pragma once
// CUDA twin of the fused SUBS / AR cross-entropy (diffusion/subs_loss.hpp): one block per row
// computes the (mask-suppressed) log-sum-exp in fp32 and the row's weighted loss; a single-block
// pass sums the rows in a fixed order (deterministic). Backward forms the logits gradient row by
// row from the saved log-sum-exp, without materializing probabilities.

#include <cmath>
#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/diffusion/subs_loss.hpp"

namespace mdlm {
namespace cuda_kernels {

inline constexpr int kCeThreads = 256, kCeSumThreads = 1024;
// Shared memory of the row kernel: one float reduction (max, then sum).
using CeShared = cuda_detail::BlockShared<float, kCeThreads>;

template <class T>
__device__ inline float ce_logit(const T* l, std::int64_t v, std::int64_t suppressed) {
  return to_compute(l[v]) + (v == suppressed ? static_cast<float>(kSubsMaskLogitShift) : 0.0f);
}

template <class T>
__global__ void cross_entropy_rows(MatrixView<const T, Cuda> logits, CrossEntropyRows rows, double* lse,
                                   double* row_loss) {
  __shared__ CeShared red;
  const std::int64_t r = blockIdx.x;
  if (rows.coef[r] == 0.0) {
    if (threadIdx.x == 0) {
      lse[r] = NAN;
      row_loss[r] = 0.0;
    }
    return;
  }
  const T* l = logits.data + r * logits.ld;
  float mx = -INFINITY;
  for (std::int64_t v = threadIdx.x; v < logits.cols; v += blockDim.x) mx = fmaxf(mx, ce_logit(l, v, rows.suppressed));
  mx = cuda_detail::BlockReducer<float, kCeThreads>::max(mx, red);
  float s = 0;
  for (std::int64_t v = threadIdx.x; v < logits.cols; v += blockDim.x) s += expf(ce_logit(l, v, rows.suppressed) - mx);
  s = cuda_detail::BlockReducer<float, kCeThreads>::sum(s, red);
  if (threadIdx.x == 0) {
    const double z = static_cast<double>(mx) + log(static_cast<double>(s));
    lse[r] = z;
    row_loss[r] = rows.coef[r] * (z - static_cast<double>(ce_logit(l, rows.target[r], rows.suppressed)));
  }
}

template <class T>
__global__ void sum_rows_ordered(const double* row_loss, std::int64_t n, T* loss) {
  __shared__ cuda_detail::BlockShared<double, kCeSumThreads> red;
  double s = 0;
  for (std::int64_t r = threadIdx.x; r < n; r += blockDim.x) s += row_loss[r];
  s = cuda_detail::BlockReducer<double, kCeSumThreads>::sum(s, red);
  if (threadIdx.x == 0) loss[0] = from_compute<T>(static_cast<compute_t<T>>(s));
}

template <class T>
__global__ void cross_entropy_grad(MatrixView<const T, Cuda> logits, CrossEntropyRows rows, const double* lse,
                                   const T* dloss, MatrixView<T, Cuda> dlogits, bool accumulate) {
  const std::int64_t r = blockIdx.x;
  const float c = to_compute(dloss[0]) * static_cast<float>(rows.coef[r]);
  const T* l = logits.data + r * logits.ld;
  T* d = dlogits.data + r * dlogits.ld;
  const float z = static_cast<float>(lse[r]);
  for (std::int64_t v = threadIdx.x; v < logits.cols; v += blockDim.x) {
    const float g = c == 0.0f ? 0.0f : c * (expf(ce_logit(l, v, rows.suppressed) - z) - (v == rows.target[r] ? 1.0f : 0.0f));
    d[v] = accumulate ? from_compute<T>(to_compute(d[v]) + g) : from_compute<T>(g);
  }
}

}  // namespace cuda_kernels

namespace launches {
inline LaunchConfig cross_entropy_rows(std::int64_t rows) {
  return launch_detail::block_each("cross_entropy_rows", rows, cuda_kernels::kCeThreads, sizeof(cuda_kernels::CeShared));
}
inline LaunchConfig sum_rows_ordered() {
  return launch_detail::block_each("sum_rows_ordered", 1, cuda_kernels::kCeSumThreads,
                                   sizeof(cuda_detail::BlockShared<double, cuda_kernels::kCeSumThreads>));
}
inline LaunchConfig cross_entropy_grad(std::int64_t rows) {
  return launch_detail::block_each("cross_entropy_grad", rows, cuda_kernels::kCeThreads, 0);
}
}  // namespace launches

template <class T>
void cross_entropy_forward(Cuda& ctx, MatrixView<const T, Cuda> logits, CrossEntropyRows rows, double* lse, T* loss,
                           double* row_loss_scratch = nullptr) {
  if (row_loss_scratch != nullptr) {  // the tape's scratch: no allocation, no synchronization
    if (logits.rows > 0) {
      launch(ctx, launches::cross_entropy_rows(logits.rows), cuda_kernels::cross_entropy_rows<T>, logits, rows, lse,
             row_loss_scratch);
    }
    launch(ctx, launches::sum_rows_ordered(), cuda_kernels::sum_rows_ordered<T>, row_loss_scratch, logits.rows, loss);
    return;
  }
  DeviceBuffer<double> row_loss(ctx, Shape{std::max<std::int64_t>(logits.rows, 1)});
  cross_entropy_forward(ctx, logits, rows, lse, loss, row_loss.data());
  ctx.synchronize();  // row_loss is freed at return
}

template <class T>
void cross_entropy_backward(Cuda& ctx, MatrixView<const T, Cuda> logits, CrossEntropyRows rows, const double* lse,
                            const T* dloss, MatrixView<T, Cuda> dlogits, bool accumulate) {
  launch(ctx, launches::cross_entropy_grad(logits.rows), cuda_kernels::cross_entropy_grad<T>, logits, rows, lse, dloss,
         dlogits, accumulate);
}

}  // namespace mdlm
