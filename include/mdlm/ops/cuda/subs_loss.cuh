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

template <class T>
__device__ inline float ce_logit(const T* l, std::int64_t v, std::int64_t suppressed) {
  return to_compute(l[v]) + (v == suppressed ? static_cast<float>(kSubsMaskLogitShift) : 0.0f);
}

template <class T>
__global__ void cross_entropy_rows(MatrixView<const T, Cuda> logits, CrossEntropyRows rows, double* lse,
                                   double* row_loss) {
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
  mx = cuda_detail::block_reduce<float, true>(mx);
  float s = 0;
  for (std::int64_t v = threadIdx.x; v < logits.cols; v += blockDim.x) s += expf(ce_logit(l, v, rows.suppressed) - mx);
  s = cuda_detail::block_reduce<float, false>(s);
  if (threadIdx.x == 0) {
    const double z = static_cast<double>(mx) + log(static_cast<double>(s));
    lse[r] = z;
    row_loss[r] = rows.coef[r] * (z - static_cast<double>(ce_logit(l, rows.target[r], rows.suppressed)));
  }
}

template <class T>
__global__ void sum_rows_ordered(const double* row_loss, std::int64_t n, T* loss) {
  double s = 0;
  for (std::int64_t r = threadIdx.x; r < n; r += blockDim.x) s += row_loss[r];
  s = cuda_detail::block_reduce<double, false>(s);
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

template <class T>
void cross_entropy_forward(Cuda& ctx, MatrixView<const T, Cuda> logits, CrossEntropyRows rows, double* lse, T* loss) {
  DeviceBuffer<double> row_loss(std::max<std::int64_t>(logits.rows, 1));
  if (logits.rows > 0) {
    cuda_kernels::cross_entropy_rows<<<static_cast<unsigned>(logits.rows), 256, 0, ctx.stream()>>>(logits, rows, lse,
                                                                                                    row_loss.data());
    MDLM_CUDA_CHECK_LAUNCH();
  }
  cuda_kernels::sum_rows_ordered<<<1, 1024, 0, ctx.stream()>>>(row_loss.data(), logits.rows, loss);
  MDLM_CUDA_CHECK_LAUNCH();
  ctx.synchronize();  // row_loss is freed at return
}

template <class T>
void cross_entropy_backward(Cuda& ctx, MatrixView<const T, Cuda> logits, CrossEntropyRows rows, const double* lse,
                            const T* dloss, MatrixView<T, Cuda> dlogits, bool accumulate) {
  if (logits.rows == 0) return;
  cuda_kernels::cross_entropy_grad<<<static_cast<unsigned>(logits.rows), 256, 0, ctx.stream()>>>(logits, rows, lse, dloss,
                                                                                                  dlogits, accumulate);
  MDLM_CUDA_CHECK_LAUNCH();
}

}  // namespace mdlm
