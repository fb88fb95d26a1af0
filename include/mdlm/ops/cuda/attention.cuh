#pragma once
// CUDA attention with materialized probabilities (the reference version; a flash kernel is a
// later performance step). See ops/attention.hpp for the math.
//   forward:  one block per query row (b, h, i): scores, softmax (block reductions), P V.
//   backward: dV (thread per (b,h,j,e)), then dS in place of P (block per row), then
//             dQ and dK (thread per (b,h,i,e) / (b,h,j,e)); all sums in a fixed order.

#include <cmath>
#include <cstdint>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/ops/attention.hpp"

namespace mdlm {
namespace cuda_kernels {

inline constexpr int kAttentionThreads = 128;  // the row kernels' block (block reductions)
using AttentionShared = cuda_detail::BlockShared<float, kAttentionThreads>;

struct AttentionShape {
  std::int64_t batches, heads, seq, d, cdim;
  bool causal;
  float scale;
};

template <class T>
__global__ void attention_forward(MatrixView<const T, Cuda> qkv, AttentionShape s, float* probs, MatrixView<T, Cuda> out) {
  __shared__ AttentionShared red;
  const std::int64_t row = blockIdx.x;  // (b, h, i)
  const std::int64_t b = row / (s.heads * s.seq), h = (row / s.seq) % s.heads, i = row % s.seq;
  const T* q = qkv.data + (b * s.seq + i) * qkv.ld + h * s.d;
  extern __shared__ float row_scratch[];  // the scores when nothing is saved (inference)
  float* p = probs != nullptr ? probs + row * s.seq : row_scratch;
  const std::int64_t nk = s.causal ? i + 1 : s.seq;
  float mx = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < s.seq; j += blockDim.x) {
    if (j < nk) {
      const T* k = qkv.data + (b * s.seq + j) * qkv.ld + s.cdim + h * s.d;
      float acc = 0;
      for (std::int64_t e = 0; e < s.d; ++e) acc += to_compute(q[e]) * to_compute(k[e]);
      p[j] = acc * s.scale;
      mx = fmaxf(mx, p[j]);
    }
  }
  mx = cuda_detail::BlockReducer<float, kAttentionThreads>::max(mx, red);
  float sum = 0;
  for (std::int64_t j = threadIdx.x; j < s.seq; j += blockDim.x) {
    if (j < nk) {
      p[j] = expf(p[j] - mx);
      sum += p[j];
    }
  }
  sum = cuda_detail::BlockReducer<float, kAttentionThreads>::sum(sum, red);
  for (std::int64_t j = threadIdx.x; j < s.seq; j += blockDim.x) p[j] = j < nk ? p[j] / sum : 0.0f;
  __syncthreads();
  for (std::int64_t e = threadIdx.x; e < s.d; e += blockDim.x) {
    float acc = 0;
    for (std::int64_t j = 0; j < nk; ++j) acc += p[j] * to_compute(qkv.data[(b * s.seq + j) * qkv.ld + 2 * s.cdim + h * s.d + e]);
    out.data[(b * s.seq + i) * out.ld + h * s.d + e] = from_compute<T>(acc);
  }
}

// dV[b,h,j,e] = sum_i P[i,j] dO[i,e]
template <class T>
__global__ void attention_backward_dv(MatrixView<const T, Cuda> dout, AttentionShape s, const float* probs,
                                      MatrixView<T, Cuda> dqkv, bool accumulate) {
  const std::int64_t idx = cuda_detail::global_index();
  if (idx >= s.batches * s.heads * s.seq * s.d) return;
  const std::int64_t e = idx % s.d, j = (idx / s.d) % s.seq, bh = idx / (s.d * s.seq);
  const std::int64_t b = bh / s.heads, h = bh % s.heads;
  float acc = 0;
  for (std::int64_t i = s.causal ? j : 0; i < s.seq; ++i) {
    acc += probs[(bh * s.seq + i) * s.seq + j] * to_compute(dout.data[(b * s.seq + i) * dout.ld + h * s.d + e]);
  }
  T& o = dqkv.data[(b * s.seq + j) * dqkv.ld + 2 * s.cdim + h * s.d + e];
  o = accumulate ? from_compute<T>(to_compute(o) + acc) : from_compute<T>(acc);
}

// P -> dS = P * (dP - rowsum(P * dP)) * scale, in place; dP[i,j] = dO[i] . V[j]
template <class T>
__global__ void attention_backward_ds(MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> qkv, AttentionShape s,
                                      float* probs) {
  __shared__ AttentionShared red;
  const std::int64_t row = blockIdx.x;
  const std::int64_t b = row / (s.heads * s.seq), h = (row / s.seq) % s.heads, i = row % s.seq;
  const std::int64_t nk = s.causal ? i + 1 : s.seq;
  float* p = probs + row * s.seq;
  const T* go = dout.data + (b * s.seq + i) * dout.ld + h * s.d;
  extern __shared__ float dp[];  // seq floats
  float dot = 0;
  for (std::int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
    const T* v = qkv.data + (b * s.seq + j) * qkv.ld + 2 * s.cdim + h * s.d;
    float acc = 0;
    for (std::int64_t e = 0; e < s.d; ++e) acc += to_compute(go[e]) * to_compute(v[e]);
    dp[j] = acc;
    dot += p[j] * acc;
  }
  dot = cuda_detail::BlockReducer<float, kAttentionThreads>::sum(dot, red);
  for (std::int64_t j = threadIdx.x; j < nk; j += blockDim.x) p[j] = p[j] * (dp[j] - dot) * s.scale;
}

// dQ[i] = sum_j dS[i,j] K[j]  (part 0)   and   dK[j] = sum_i dS[i,j] Q[i]  (part 1)
template <class T>
__global__ void attention_backward_dqk(MatrixView<const T, Cuda> qkv, AttentionShape s, const float* ds,
                                       MatrixView<T, Cuda> dqkv, bool accumulate) {
  const std::int64_t idx = cuda_detail::global_index();
  const std::int64_t per_part = s.batches * s.heads * s.seq * s.d;
  if (idx >= 2 * per_part) return;
  const int part = static_cast<int>(idx / per_part);
  const std::int64_t k = idx % per_part;
  const std::int64_t e = k % s.d, t = (k / s.d) % s.seq, bh = k / (s.d * s.seq);
  const std::int64_t b = bh / s.heads, h = bh % s.heads;
  float acc = 0;
  if (part == 0) {  // dQ[t]
    const std::int64_t nk = s.causal ? t + 1 : s.seq;
    for (std::int64_t j = 0; j < nk; ++j) {
      acc += ds[(bh * s.seq + t) * s.seq + j] * to_compute(qkv.data[(b * s.seq + j) * qkv.ld + s.cdim + h * s.d + e]);
    }
  } else {  // dK[t]
    for (std::int64_t i = s.causal ? t : 0; i < s.seq; ++i) {
      acc += ds[(bh * s.seq + i) * s.seq + t] * to_compute(qkv.data[(b * s.seq + i) * qkv.ld + h * s.d + e]);
    }
  }
  T& o = dqkv.data[(b * s.seq + t) * dqkv.ld + part * s.cdim + h * s.d + e];
  o = accumulate ? from_compute<T>(to_compute(o) + acc) : from_compute<T>(acc);
}

}  // namespace cuda_kernels

namespace cuda_detail {
inline cuda_kernels::AttentionShape attention_shape(std::int64_t rows, std::int64_t cols, std::int64_t seq_len,
                                                    std::int64_t heads, bool causal) {
  const std::int64_t cdim = cols / 3, d = cdim / heads;
  return {rows / seq_len, heads, seq_len, d, cdim, causal, 1.0f / std::sqrt(static_cast<float>(d))};
}
}  // namespace cuda_detail

namespace launches {
// Forward: one block per query row; without saved probabilities the row's scores live in
// dynamic shared memory (seq floats).
inline LaunchConfig attention_forward(const cuda_kernels::AttentionShape& s, bool saved) {
  return launch_detail::block_each("attention_forward", s.batches * s.heads * s.seq, cuda_kernels::kAttentionThreads,
                                   sizeof(cuda_kernels::AttentionShared),
                                   saved ? 0 : static_cast<std::size_t>(s.seq) * sizeof(float));
}
inline LaunchConfig attention_backward_dv(const cuda_kernels::AttentionShape& s) {
  return launch_detail::one_thread_each("attention_backward_dv", s.batches * s.heads * s.seq * s.d);
}
// dS: one block per query row, dP of the row in dynamic shared memory (seq floats).
inline LaunchConfig attention_backward_ds(const cuda_kernels::AttentionShape& s) {
  return launch_detail::block_each("attention_backward_ds", s.batches * s.heads * s.seq, cuda_kernels::kAttentionThreads,
                                   sizeof(cuda_kernels::AttentionShared), static_cast<std::size_t>(s.seq) * sizeof(float));
}
inline LaunchConfig attention_backward_dqk(const cuda_kernels::AttentionShape& s) {
  return launch_detail::one_thread_each("attention_backward_dqk", 2 * s.batches * s.heads * s.seq * s.d);
}
}  // namespace launches

template <class T>
void attention_forward(Cuda& ctx, MatrixView<const T, Cuda> qkv, std::int64_t seq_len, std::int64_t heads, bool causal,
                       float* probs, MatrixView<T, Cuda> out) {
  const auto s = cuda_detail::attention_shape(qkv.rows, qkv.cols, seq_len, heads, causal);
  MDLM_CHECK(seq_len <= kAttentionRowScratchMax || probs != nullptr, "attention: sequence length ", seq_len,
             " needs saved probabilities (inference keeps at most ", kAttentionRowScratchMax, " scores per row)");
  launch(ctx, launches::attention_forward(s, probs != nullptr), cuda_kernels::attention_forward<T>, qkv, s, probs, out);
}

// Note: overwrites `probs` with dS (the probabilities are not needed after backward).
template <class T>
void attention_backward(Cuda& ctx, MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> qkv, const float* probs,
                        std::int64_t seq_len, std::int64_t heads, bool causal, MatrixView<T, Cuda> dqkv, bool accumulate) {
  const auto s = cuda_detail::attention_shape(qkv.rows, qkv.cols, seq_len, heads, causal);
  float* p = const_cast<float*>(probs);
  launch(ctx, launches::attention_backward_dv(s), cuda_kernels::attention_backward_dv<T>, dout, s, p, dqkv, accumulate);
  launch(ctx, launches::attention_backward_ds(s), cuda_kernels::attention_backward_ds<T>, dout, qkv, s, p);
  launch(ctx, launches::attention_backward_dqk(s), cuda_kernels::attention_backward_dqk<T>, qkv, s, p, dqkv, accumulate);
}

}  // namespace mdlm
