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

struct AttentionShape {
  std::int64_t batches, heads, seq, d, cdim;
  bool causal;
  float scale;
};

template <class T>
__global__ void attention_forward(MatrixView<const T, Cuda> qkv, AttentionShape s, float* probs, MatrixView<T, Cuda> out) {
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
  mx = cuda_detail::block_reduce<float, true>(mx);
  float sum = 0;
  for (std::int64_t j = threadIdx.x; j < s.seq; j += blockDim.x) {
    if (j < nk) {
      p[j] = expf(p[j] - mx);
      sum += p[j];
    }
  }
  sum = cuda_detail::block_reduce<float, false>(sum);
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
  dot = cuda_detail::block_reduce<float, false>(dot);
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

template <class T>
void attention_forward(Cuda& ctx, MatrixView<const T, Cuda> qkv, std::int64_t seq_len, std::int64_t heads, bool causal,
                       float* probs, MatrixView<T, Cuda> out) {
  const auto s = cuda_detail::attention_shape(qkv.rows, qkv.cols, seq_len, heads, causal);
  const std::int64_t rows = s.batches * s.heads * s.seq;
  MDLM_CHECK(rows < (std::int64_t{1} << 31), "attention: ", rows, " query rows exceed one launch");
  const std::size_t smem = probs != nullptr ? 0 : static_cast<std::size_t>(seq_len) * sizeof(float);
  MDLM_CHECK(seq_len <= kAttentionRowScratchMax || probs != nullptr, "attention: sequence length ", seq_len,
             " needs saved probabilities");
  cuda_kernels::attention_forward<<<static_cast<unsigned>(rows), 128, smem, ctx.stream()>>>(qkv, s, probs, out);
  MDLM_CUDA_CHECK_LAUNCH();
}

// Note: overwrites `probs` with dS (the probabilities are not needed after backward).
template <class T>
void attention_backward(Cuda& ctx, MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> qkv, const float* probs,
                        std::int64_t seq_len, std::int64_t heads, bool causal, MatrixView<T, Cuda> dqkv, bool accumulate) {
  using namespace cuda_detail;
  const auto s = attention_shape(qkv.rows, qkv.cols, seq_len, heads, causal);
  const std::int64_t rows = s.batches * s.heads * s.seq, elems = rows * s.d;
  float* p = const_cast<float*>(probs);
  cuda_kernels::attention_backward_dv<<<blocks_for(elems), kThreads, 0, ctx.stream()>>>(dout, s, p, dqkv, accumulate);
  MDLM_CUDA_CHECK_LAUNCH();
  const std::size_t smem = static_cast<std::size_t>(seq_len) * sizeof(float);
  MDLM_CHECK(smem <= 48 * 1024, "attention: sequence length ", seq_len, " exceeds the reference kernel's 12288");
  cuda_kernels::attention_backward_ds<<<static_cast<unsigned>(rows), 128, smem, ctx.stream()>>>(dout, qkv, s, p);
  MDLM_CUDA_CHECK_LAUNCH();
  cuda_kernels::attention_backward_dqk<<<blocks_for(2 * elems), kThreads, 0, ctx.stream()>>>(qkv, s, p, dqkv, accumulate);
  MDLM_CUDA_CHECK_LAUNCH();
}

}  // namespace mdlm
