#pragma once
// CUDA flash attention: the kernels whose Host twin is ops/flash_attention.hpp (the algorithm,
// the blocks kFlashQueryBlock x kFlashKeyBlock, the order of key blocks and of the online-softmax
// update, and the three backward passes are described there). Nothing of size (B, H, T, T) is
// allocated: forward saves the log-sum-exp (B, H, T) in fp32, inference saves nothing.
//
// Forward, one block per (sequence and head, block of 64 query rows):
//   bf16, D = 64: flash_forward_mma_d64, 4 warps of 16 query rows each; S = Q K^T and O += P V
//     on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate; sm_80+); P stays in
//     registers (the S accumulator is the A operand of P V); V is stored transposed in shared
//     memory so every B fragment is one 32-bit load.
//   otherwise (fp32, other head dims up to kFlashMaxHeadDim): flash_forward_simt, one thread per
//     query row, K and V tiles and the P tile in shared memory, q and the output accumulator in
//     registers (head dims bucketed to 64 or 128 at compile time).
// Backward (SIMT for every type and head dim so far): flash_backward_delta (D = rowsum(dO o O)),
// flash_backward_dkdv_simt (one thread per key row of a key block, over the query blocks that
// see it), flash_backward_dq_simt (one thread per query row). Each gradient element has one
// writer: no atomics, the same bits on every run.
//
// Verification status: compiled (sm_90), checked against the Host reference by tests/cuda
// (skipped without a GPU); not yet run on a GPU.

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "mdlm/backend/cuda/check.cuh"
#include "mdlm/backend/cuda/context.cuh"
#include "mdlm/backend/cuda/launch.cuh"
#include "mdlm/core/bf16.hpp"
#include "mdlm/ops/cuda/attention.cuh"
#include "mdlm/ops/flash_attention.hpp"

namespace mdlm {

// Models on CUDA use flash attention (nn/dit.hpp: ModelAttentionOp).
template <>
inline constexpr bool kFlashAttentionDefault<Cuda> = true;

// The SIMT kernels' largest register bucket; their K and V (or Q and dO) tiles must fit the
// 48 KiB of shared memory a block has without opt-in, so 4-byte elements stop at 64.
inline constexpr std::int64_t kFlashMaxHeadDim = 128;
template <class T>
inline constexpr std::int64_t kFlashMaxHeadDimFor = sizeof(T) <= 2 ? kFlashMaxHeadDim : kFlashMaxHeadDim / 2;
inline constexpr std::int64_t kFlashMmaHeadDim = 64;   // the tensor-core forward's head dimension

namespace cuda_kernels {

inline constexpr int kFlashSimtThreads = static_cast<int>(kFlashQueryBlock);  // one thread per row of a block
static_assert(kFlashQueryBlock == kFlashKeyBlock, "the SIMT kernels load query and key tiles with one block shape");
inline constexpr int kFlashMmaWarps = static_cast<int>(kFlashQueryBlock) / 16;  // 16 query rows per warp
inline constexpr int kFlashMmaThreads = 32 * kFlashMmaWarps;
inline constexpr int kFlashMmaStride = 72;  // bf16 per shared row: 64 + 8 padding, conflict-free fragments

// The tensor-core forward's shared tiles: Q, K (row-major) and V transposed (dims x keys).
struct FlashMmaShared {
  bf16 q[kFlashQueryBlock * kFlashMmaStride];
  bf16 k[kFlashKeyBlock * kFlashMmaStride];
  bf16 vt[kFlashMmaHeadDim * kFlashMmaStride];
};

// The SIMT backward's per-query-row values of one query block.
struct FlashRowStats {
  float lse[kFlashQueryBlock];
  float delta[kFlashQueryBlock];
};

// Rows [0, rows) of one head's d columns starting at src (leading dimension ld) into a tile of
// kFlashQueryBlock x d in shared memory (row-major); rows past `rows` are zero.
template <class T>
__device__ inline void flash_load_tile(const T* src, std::int64_t ld, std::int64_t rows, std::int64_t d, T* tile) {
  for (std::int64_t idx = threadIdx.x; idx < kFlashQueryBlock * d; idx += blockDim.x) {
    const std::int64_t r = idx / d, e = idx % d;
    tile[idx] = r < rows ? src[r * ld + e] : from_compute<T>(compute_t<T>(0));
  }
}

// One row of d values into registers (bucket kMaxD, zero past d).
template <int kMaxD, class T>
__device__ inline void flash_load_row(const T* src, std::int64_t d, float (&row)[kMaxD]) {
#pragma unroll
  for (int e = 0; e < kMaxD; ++e) row[e] = e < d ? to_compute(src[e]) : 0.0f;
}

template <int kMaxD, class T>
__device__ inline float flash_dot(const float (&row)[kMaxD], const T* tile_row, std::int64_t d) {
  float acc = 0;
#pragma unroll
  for (int e = 0; e < kMaxD; ++e)
    if (e < d) acc += row[e] * to_compute(tile_row[e]);
  return acc;
}

template <int kMaxD, class T>
__device__ inline void flash_axpy(float a, const T* tile_row, std::int64_t d, float (&acc)[kMaxD]) {
#pragma unroll
  for (int e = 0; e < kMaxD; ++e)
    if (e < d) acc[e] += a * to_compute(tile_row[e]);
}

template <int kMaxD, class T>
__device__ inline void flash_store_row(const float (&acc)[kMaxD], float scale, std::int64_t d, T* dst, bool accumulate) {
#pragma unroll
  for (int e = 0; e < kMaxD; ++e)
    if (e < d) dst[e] = accumulate ? from_compute<T>(to_compute(dst[e]) + acc[e] * scale) : from_compute<T>(acc[e] * scale);
}

// ---- forward, SIMT -----------------------------------------------------------------------------
// Block (b*H + h, query block); thread r owns query row i0 + r. Dynamic shared memory: K and V
// tiles (kFlashKeyBlock x d of T each), then P (kFlashKeyBlock x kFlashQueryBlock floats, key-major
// so a warp's threads touch consecutive banks).
template <class T, int kMaxD>
__global__ void __launch_bounds__(kFlashSimtThreads)
    flash_forward_simt(MatrixView<const T, Cuda> qkv, AttentionShape s, float* lse, MatrixView<T, Cuda> out) {
  extern __shared__ float4 flash_dynamic_smem[];
  float* pt = reinterpret_cast<float*>(flash_dynamic_smem);
  T* kt = reinterpret_cast<T*>(pt + kFlashKeyBlock * kFlashQueryBlock);
  T* vt = kt + kFlashKeyBlock * s.d;
  const std::int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.y) * kFlashQueryBlock;
  const std::int64_t m = min(kFlashQueryBlock, s.seq - i0);
  const int r = threadIdx.x;
  const bool active = r < m;
  const std::int64_t i = i0 + (active ? r : 0);
  float q[kMaxD], acc[kMaxD];
  flash_load_row<kMaxD>(qkv.data + (b * s.seq + i) * qkv.ld + h * s.d, s.d, q);
#pragma unroll
  for (int e = 0; e < kMaxD; ++e) acc[e] = 0;
  float row_max = -INFINITY, row_sum = 0;
  const std::int64_t kblocks = flash_key_blocks_for(i0, m, s.seq, s.causal);
  for (std::int64_t kb = 0; kb < kblocks; ++kb) {
    const std::int64_t j0 = kb * kFlashKeyBlock, n = min(kFlashKeyBlock, s.seq - j0);
    __syncthreads();  // the previous block's tiles are consumed
    const T* k = qkv.data + (b * s.seq + j0) * qkv.ld + s.cdim + h * s.d;
    flash_load_tile(k, qkv.ld, n, s.d, kt);
    flash_load_tile(k + s.cdim, qkv.ld, n, s.d, vt);
    __syncthreads();
    if (!active) continue;
    const std::int64_t seen = flash_visible_keys(i, j0, n, s.causal);
    float block_max = -INFINITY;
    for (std::int64_t j = 0; j < seen; ++j) {
      const float sc = flash_dot<kMaxD>(q, kt + j * s.d, s.d) * s.scale;
      pt[j * kFlashQueryBlock + r] = sc;
      block_max = fmaxf(block_max, sc);
    }
    const float new_max = fmaxf(row_max, block_max);
    const float alpha = row_max == -INFINITY ? 0.0f : expf(row_max - new_max);
    float block_sum = 0;
    for (std::int64_t j = 0; j < seen; ++j) {
      const float p = expf(pt[j * kFlashQueryBlock + r] - new_max);
      pt[j * kFlashQueryBlock + r] = p;
      block_sum += p;
    }
    row_sum = alpha * row_sum + block_sum;
#pragma unroll
    for (int e = 0; e < kMaxD; ++e) acc[e] *= alpha;
    for (std::int64_t j = 0; j < seen; ++j) flash_axpy<kMaxD>(pt[j * kFlashQueryBlock + r], vt + j * s.d, s.d, acc);
    row_max = new_max;
  }
  if (!active) return;
  flash_store_row<kMaxD>(acc, 1.0f / row_sum, s.d, out.data + (b * s.seq + i) * out.ld + h * s.d, false);
  if (lse != nullptr) lse[bh * s.seq + i] = row_max + logf(row_sum);
}

// ---- forward, tensor cores (bf16, D = 64) ------------------------------------------------------

// D += A B for one m16n8k16 tile: A 16x16 bf16 (row), B 16x8 bf16 (col), C/D 16x8 fp32.
__device__ inline void mma_bf16_m16n8k16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // the library builds for sm_80 and sm_90 only
#endif
}

// Two bf16 at tile[row * kFlashMmaStride + col] (col even) as one 32-bit fragment register.
__device__ inline std::uint32_t flash_pair(const bf16* tile, int row, int col) {
  return *reinterpret_cast<const std::uint32_t*>(tile + row * kFlashMmaStride + col);
}
__device__ inline std::uint32_t flash_pack(float lo, float hi) {
  return static_cast<std::uint32_t>(from_compute<bf16>(lo).bits) |
         (static_cast<std::uint32_t>(from_compute<bf16>(hi).bits) << 16);
}

// Rows [0, rows) of one head (64 bf16 each) into a padded shared tile, 32-bit words; zero past rows.
__device__ inline void flash_mma_load_rows(const bf16* src, std::int64_t ld, std::int64_t rows, bf16* tile) {
  constexpr int kWords = static_cast<int>(kFlashMmaHeadDim) / 2;
  for (int idx = threadIdx.x; idx < kFlashQueryBlock * kWords; idx += blockDim.x) {
    const int r = idx / kWords, w = idx % kWords;
    const std::uint32_t v = r < rows ? *reinterpret_cast<const std::uint32_t*>(src + r * ld + 2 * w) : 0u;
    *reinterpret_cast<std::uint32_t*>(tile + r * kFlashMmaStride + 2 * w) = v;
  }
}
// The same rows transposed: tile[e * stride + r] = src[r][e].
__device__ inline void flash_mma_load_rows_transposed(const bf16* src, std::int64_t ld, std::int64_t rows, bf16* tile) {
  constexpr int kWords = static_cast<int>(kFlashMmaHeadDim) / 2;
  for (int idx = threadIdx.x; idx < kFlashKeyBlock * kWords; idx += blockDim.x) {
    const int r = idx / kWords, w = idx % kWords;
    const std::uint32_t v = r < rows ? *reinterpret_cast<const std::uint32_t*>(src + r * ld + 2 * w) : 0u;
    tile[(2 * w) * kFlashMmaStride + r] = bf16::from_bits(static_cast<std::uint16_t>(v & 0xffffu));
    tile[(2 * w + 1) * kFlashMmaStride + r] = bf16::from_bits(static_cast<std::uint16_t>(v >> 16));
  }
}

// Fragment layouts (PTX ISA, m16n8k16): lane = 4 g + t. A: a0a1 (g, 2t), a2a3 (g+8, 2t),
// a4a5 (g, 2t+8), a6a7 (g+8, 2t+8). B: b0b1 (k 2t, n g), b2b3 (k 2t+8, n g). C: c0c1 (g, 2t),
// c2c3 (g+8, 2t). Thread (g, t) of warp w holds query rows w*16 + g and w*16 + g + 8.
__global__ void __launch_bounds__(kFlashMmaThreads)
    flash_forward_mma_d64(MatrixView<const bf16, Cuda> qkv, AttentionShape s, float* lse, MatrixView<bf16, Cuda> out) {
  constexpr int kD = static_cast<int>(kFlashMmaHeadDim);
  __shared__ FlashMmaShared sh;
  const std::int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.y) * kFlashQueryBlock;
  const std::int64_t m = min(kFlashQueryBlock, s.seq - i0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, row0 = warp * 16;
  flash_mma_load_rows(qkv.data + (b * s.seq + i0) * qkv.ld + h * kD, qkv.ld, m, sh.q);
  __syncthreads();
  std::uint32_t qa[kD / 16][4];  // Q's A fragments, one per 16 dims
#pragma unroll
  for (int ks = 0; ks < kD / 16; ++ks) {
    qa[ks][0] = flash_pair(sh.q, row0 + g, ks * 16 + 2 * t);
    qa[ks][1] = flash_pair(sh.q, row0 + g + 8, ks * 16 + 2 * t);
    qa[ks][2] = flash_pair(sh.q, row0 + g, ks * 16 + 2 * t + 8);
    qa[ks][3] = flash_pair(sh.q, row0 + g + 8, ks * 16 + 2 * t + 8);
  }
  const std::int64_t rows[2] = {i0 + row0 + g, i0 + row0 + g + 8};
  float o[kD / 8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0, 0};
  const std::int64_t kblocks = flash_key_blocks_for(i0, m, s.seq, s.causal);
  for (std::int64_t kb = 0; kb < kblocks; ++kb) {
    const std::int64_t j0 = kb * kFlashKeyBlock, n = min(kFlashKeyBlock, s.seq - j0);
    __syncthreads();
    const bf16* k = qkv.data + (b * s.seq + j0) * qkv.ld + s.cdim + h * kD;
    flash_mma_load_rows(k, qkv.ld, n, sh.k);
    flash_mma_load_rows_transposed(k + s.cdim, qkv.ld, n, sh.vt);
    __syncthreads();
    float sc[kFlashKeyBlock / 8][4] = {};  // S of this warp's 16 rows x 64 keys
#pragma unroll
    for (int nt = 0; nt < kFlashKeyBlock / 8; ++nt)
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks)
        mma_bf16_m16n8k16(sc[nt], qa[ks], flash_pair(sh.k, nt * 8 + g, ks * 16 + 2 * t),
                          flash_pair(sh.k, nt * 8 + g, ks * 16 + 2 * t + 8));
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // rows g and g + 8
      float block_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kFlashKeyBlock / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const std::int64_t key = j0 + nt * 8 + 2 * t + c;
          const bool visible = key < s.seq && (!s.causal || key <= rows[half]);
          float& v = sc[nt][2 * half + c];
          v = visible ? v * s.scale : -INFINITY;
          block_max = fmaxf(block_max, v);
        }
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 2));
      const float new_max = fmaxf(row_max[half], block_max);
      const float alpha = row_max[half] == -INFINITY ? 0.0f : expf(row_max[half] - new_max);
      float block_sum = 0;
#pragma unroll
      for (int nt = 0; nt < kFlashKeyBlock / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& v = sc[nt][2 * half + c];
          v = expf(v - new_max);
          block_sum += v;
        }
      block_sum += __shfl_xor_sync(0xffffffffu, block_sum, 1);
      block_sum += __shfl_xor_sync(0xffffffffu, block_sum, 2);
      row_sum[half] = alpha * row_sum[half] + block_sum;
#pragma unroll
      for (int nt = 0; nt < kD / 8; ++nt) {
        o[nt][2 * half] *= alpha;
        o[nt][2 * half + 1] *= alpha;
      }
      row_max[half] = new_max;
    }
    // O += P V: P's A fragment for keys [16 ks, 16 ks + 16) is S's C tiles 2 ks and 2 ks + 1.
#pragma unroll
    for (int ks = 0; ks < kFlashKeyBlock / 16; ++ks) {
      const std::uint32_t pa[4] = {flash_pack(sc[2 * ks][0], sc[2 * ks][1]), flash_pack(sc[2 * ks][2], sc[2 * ks][3]),
                                   flash_pack(sc[2 * ks + 1][0], sc[2 * ks + 1][1]),
                                   flash_pack(sc[2 * ks + 1][2], sc[2 * ks + 1][3])};
#pragma unroll
      for (int nt = 0; nt < kD / 8; ++nt)
        mma_bf16_m16n8k16(o[nt], pa, flash_pair(sh.vt, nt * 8 + g, ks * 16 + 2 * t),
                          flash_pair(sh.vt, nt * 8 + g, ks * 16 + 2 * t + 8));
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (rows[half] >= s.seq) continue;
    const float inv = 1.0f / row_sum[half];
    bf16* dst = out.data + (b * s.seq + rows[half]) * out.ld + h * kD;
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) {
      dst[nt * 8 + 2 * t] = from_compute<bf16>(o[nt][2 * half] * inv);
      dst[nt * 8 + 2 * t + 1] = from_compute<bf16>(o[nt][2 * half + 1] * inv);
    }
    if (lse != nullptr && t == 0) lse[bh * s.seq + rows[half]] = row_max[half] + logf(row_sum[half]);
  }
}

// ---- backward ----------------------------------------------------------------------------------

// D[bh, i] = dO_i . O_i, one thread per (b, h, i).
template <class T>
__global__ void flash_backward_delta(MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> out, AttentionShape s,
                                     float* delta) {
  const std::int64_t idx = cuda_detail::global_index();
  if (idx >= s.batches * s.heads * s.seq) return;
  const std::int64_t i = idx % s.seq, bh = idx / s.seq, b = bh / s.heads, h = bh % s.heads;
  const T* go = dout.data + (b * s.seq + i) * dout.ld + h * s.d;
  const T* o = out.data + (b * s.seq + i) * out.ld + h * s.d;
  float acc = 0;
  for (std::int64_t e = 0; e < s.d; ++e) acc += to_compute(go[e]) * to_compute(o[e]);
  delta[idx] = acc;
}

// dK, dV of one key block: thread r owns key j0 + r; per query block that sees the key block,
// Q and dO tiles (dynamic shared memory, kFlashQueryBlock x d of T each) and lse, D (static).
template <class T, int kMaxD>
__global__ void __launch_bounds__(kFlashSimtThreads)
    flash_backward_dkdv_simt(MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> qkv, AttentionShape s,
                             const float* lse, const float* delta, MatrixView<T, Cuda> dqkv, bool accumulate) {
  extern __shared__ float4 flash_dynamic_smem[];
  __shared__ FlashRowStats stats;
  T* qt = reinterpret_cast<T*>(flash_dynamic_smem);
  T* dot_tile = qt + kFlashQueryBlock * s.d;
  const std::int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.y) * kFlashKeyBlock;
  const std::int64_t n = min(kFlashKeyBlock, s.seq - j0);
  const int r = threadIdx.x;
  const bool active = r < n;
  const std::int64_t j = j0 + (active ? r : 0);
  float k[kMaxD], v[kMaxD], dk[kMaxD], dv[kMaxD];
  flash_load_row<kMaxD>(qkv.data + (b * s.seq + j) * qkv.ld + s.cdim + h * s.d, s.d, k);
  flash_load_row<kMaxD>(qkv.data + (b * s.seq + j) * qkv.ld + 2 * s.cdim + h * s.d, s.d, v);
#pragma unroll
  for (int e = 0; e < kMaxD; ++e) dk[e] = dv[e] = 0;
  const std::int64_t qblocks = flash_block_count(s.seq, kFlashQueryBlock);
  for (std::int64_t qb = flash_first_query_block(j0, s.causal); qb < qblocks; ++qb) {
    const std::int64_t i0 = qb * kFlashQueryBlock, m = min(kFlashQueryBlock, s.seq - i0);
    __syncthreads();
    flash_load_tile(qkv.data + (b * s.seq + i0) * qkv.ld + h * s.d, qkv.ld, m, s.d, qt);
    flash_load_tile(dout.data + (b * s.seq + i0) * dout.ld + h * s.d, dout.ld, m, s.d, dot_tile);
    for (int rr = threadIdx.x; rr < m; rr += blockDim.x) {
      stats.lse[rr] = lse[bh * s.seq + i0 + rr];
      stats.delta[rr] = delta[bh * s.seq + i0 + rr];
    }
    __syncthreads();
    if (!active) continue;
    for (std::int64_t rr = 0; rr < m; ++rr) {
      if (s.causal && j > i0 + rr) continue;  // masked: P = 0
      const float p = expf(flash_dot<kMaxD>(k, qt + rr * s.d, s.d) * s.scale - stats.lse[rr]);
      flash_axpy<kMaxD>(p, dot_tile + rr * s.d, s.d, dv);
      const float dp = flash_dot<kMaxD>(v, dot_tile + rr * s.d, s.d);
      flash_axpy<kMaxD>(s.scale * p * (dp - stats.delta[rr]), qt + rr * s.d, s.d, dk);
    }
  }
  if (!active) return;
  T* dst = dqkv.data + (b * s.seq + j) * dqkv.ld + h * s.d;
  flash_store_row<kMaxD>(dk, 1.0f, s.d, dst + s.cdim, accumulate);
  flash_store_row<kMaxD>(dv, 1.0f, s.d, dst + 2 * s.cdim, accumulate);
}

// dQ of one query block: thread r owns query row i0 + r; K and V tiles in dynamic shared memory.
template <class T, int kMaxD>
__global__ void __launch_bounds__(kFlashSimtThreads)
    flash_backward_dq_simt(MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> qkv, AttentionShape s,
                           const float* lse, const float* delta, MatrixView<T, Cuda> dqkv, bool accumulate) {
  extern __shared__ float4 flash_dynamic_smem[];
  T* kt = reinterpret_cast<T*>(flash_dynamic_smem);
  T* vt = kt + kFlashKeyBlock * s.d;
  const std::int64_t bh = blockIdx.x, b = bh / s.heads, h = bh % s.heads;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.y) * kFlashQueryBlock;
  const std::int64_t m = min(kFlashQueryBlock, s.seq - i0);
  const int r = threadIdx.x;
  const bool active = r < m;
  const std::int64_t i = i0 + (active ? r : 0);
  float q[kMaxD], go[kMaxD], dq[kMaxD];
  flash_load_row<kMaxD>(qkv.data + (b * s.seq + i) * qkv.ld + h * s.d, s.d, q);
  flash_load_row<kMaxD>(dout.data + (b * s.seq + i) * dout.ld + h * s.d, s.d, go);
#pragma unroll
  for (int e = 0; e < kMaxD; ++e) dq[e] = 0;
  const float row_lse = lse[bh * s.seq + i], row_delta = delta[bh * s.seq + i];
  const std::int64_t kblocks = flash_key_blocks_for(i0, m, s.seq, s.causal);
  for (std::int64_t kb = 0; kb < kblocks; ++kb) {
    const std::int64_t j0 = kb * kFlashKeyBlock, n = min(kFlashKeyBlock, s.seq - j0);
    __syncthreads();
    const T* k = qkv.data + (b * s.seq + j0) * qkv.ld + s.cdim + h * s.d;
    flash_load_tile(k, qkv.ld, n, s.d, kt);
    flash_load_tile(k + s.cdim, qkv.ld, n, s.d, vt);
    __syncthreads();
    if (!active) continue;
    const std::int64_t seen = flash_visible_keys(i, j0, n, s.causal);
    for (std::int64_t jj = 0; jj < seen; ++jj) {
      const float p = expf(flash_dot<kMaxD>(q, kt + jj * s.d, s.d) * s.scale - row_lse);
      const float dp = flash_dot<kMaxD>(go, vt + jj * s.d, s.d);
      flash_axpy<kMaxD>(s.scale * p * (dp - row_delta), kt + jj * s.d, s.d, dq);
    }
  }
  if (!active) return;
  flash_store_row<kMaxD>(dq, 1.0f, s.d, dqkv.data + (b * s.seq + i) * dqkv.ld + h * s.d, accumulate);
}

}  // namespace cuda_kernels

namespace cuda_detail {

// The tensor-core forward takes bf16 at head dimension 64 from a qkv buffer whose rows are
// 4-byte aligned (its fragments are 32-bit loads); everything else the SIMT kernels.
template <class T>
constexpr bool flash_uses_mma_head_dim(std::int64_t d) {
  return std::is_same_v<T, bf16> && d == kFlashMmaHeadDim;
}
template <class T>
bool flash_uses_mma(std::int64_t d, MatrixView<const T, Cuda> qkv) {
  return flash_uses_mma_head_dim<T>(d) && qkv.ld % 2 == 0 && reinterpret_cast<std::uintptr_t>(qkv.data) % 4 == 0;
}

// Rejects head dimensions the SIMT kernels cannot take for element type T.
template <class T>
void flash_check_head_dim(const char* kernel, std::int64_t d) {
  MDLM_CHECK(d >= 1 && d <= kFlashMaxHeadDimFor<T>, "flash attention (", kernel, "): head dimension ", d,
             " is not supported for ", sizeof(T), "-byte elements (1 to ", kFlashMaxHeadDimFor<T>, ")");
}

// Runs f(std::integral_constant<int, kMaxD>) with the register bucket for head dimension d
// (checked by the launch configurations first): 64, or 128 for 2-byte elements.
template <class T, class F>
void with_flash_head_dim_bucket(std::int64_t d, F&& f) {
  if constexpr (kFlashMaxHeadDimFor<T> > 64) {
    if (d > 64) {
      f(std::integral_constant<int, static_cast<int>(kFlashMaxHeadDimFor<T>)>{});
      return;
    }
  }
  f(std::integral_constant<int, 64>{});
}

// A flash launch: (b*H + h) on x, blocks of 64 rows of the sequence on y.
inline LaunchConfig flash_grid(const char* kernel, const cuda_kernels::AttentionShape& s, int threads,
                               std::size_t static_smem, std::size_t dynamic_smem) {
  LaunchConfig c;
  c.kernel = kernel;
  c.grid.x = s.batches * s.heads;
  c.grid.y = flash_block_count(s.seq, kFlashQueryBlock);
  c.block.x = threads;
  c.static_smem = static_smem;
  c.dynamic_smem = dynamic_smem;
  c.warp_multiple = true;
  return c;
}

}  // namespace cuda_detail

namespace launches {

// Forward: the tensor-core kernel (bf16, D = 64) or the SIMT kernel (K, V tiles of T and the P tile).
template <class T>
LaunchConfig flash_attention_forward(const cuda_kernels::AttentionShape& s, bool tensor_cores) {
  if (tensor_cores)
    return cuda_detail::flash_grid("flash_forward_mma_d64", s, cuda_kernels::kFlashMmaThreads,
                                   sizeof(cuda_kernels::FlashMmaShared), 0);
  cuda_detail::flash_check_head_dim<T>("flash_forward_simt", s.d);
  return cuda_detail::flash_grid("flash_forward_simt", s, cuda_kernels::kFlashSimtThreads, 0,
                                 static_cast<std::size_t>(kFlashKeyBlock * kFlashQueryBlock) * sizeof(float) +
                                     2 * static_cast<std::size_t>(kFlashKeyBlock * s.d) * sizeof(T));
}
inline LaunchConfig flash_attention_backward_delta(const cuda_kernels::AttentionShape& s) {
  return launch_detail::one_thread_each("flash_backward_delta", s.batches * s.heads * s.seq);
}
// dK, dV: one block per key block; Q and dO tiles of T, row statistics static.
template <class T>
LaunchConfig flash_attention_backward_dkdv(const cuda_kernels::AttentionShape& s) {
  cuda_detail::flash_check_head_dim<T>("flash_backward_dkdv_simt", s.d);
  return cuda_detail::flash_grid("flash_backward_dkdv_simt", s, cuda_kernels::kFlashSimtThreads,
                                 sizeof(cuda_kernels::FlashRowStats),
                                 2 * static_cast<std::size_t>(kFlashQueryBlock * s.d) * sizeof(T));
}
// dQ: one block per query block; K and V tiles of T.
template <class T>
LaunchConfig flash_attention_backward_dq(const cuda_kernels::AttentionShape& s) {
  cuda_detail::flash_check_head_dim<T>("flash_backward_dq_simt", s.d);
  return cuda_detail::flash_grid("flash_backward_dq_simt", s, cuda_kernels::kFlashSimtThreads, 0,
                                 2 * static_cast<std::size_t>(kFlashKeyBlock * s.d) * sizeof(T));
}

}  // namespace launches

// Forward. lse: (B, H, T) fp32 saved for backward, or nullptr (inference).
template <class T>
void flash_attention_forward(Cuda& ctx, MatrixView<const T, Cuda> qkv, std::int64_t seq_len, std::int64_t heads,
                             bool causal, float* lse, MatrixView<T, Cuda> out) {
  const auto s = cuda_detail::attention_shape(qkv.rows, qkv.cols, seq_len, heads, causal);
  const bool tensor_cores = cuda_detail::flash_uses_mma<T>(s.d, qkv);
  const LaunchConfig c = launches::flash_attention_forward<T>(s, tensor_cores);
  if constexpr (std::is_same_v<T, bf16>) {
    if (tensor_cores) {
      launch(ctx, c, cuda_kernels::flash_forward_mma_d64, qkv, s, lse, out);
      return;
    }
  }
  cuda_detail::with_flash_head_dim_bucket<T>(s.d, [&](auto bucket) {
    launch(ctx, c, cuda_kernels::flash_forward_simt<T, decltype(bucket)::value>, qkv, s, lse, out);
  });
}

// Backward. out and lse are the forward's; delta: (B, H, T) fp32 workspace. dqkv written (or
// added when accumulate).
template <class T>
void flash_attention_backward(Cuda& ctx, MatrixView<const T, Cuda> dout, MatrixView<const T, Cuda> qkv,
                              MatrixView<const T, Cuda> out, const float* lse, float* delta, std::int64_t seq_len,
                              std::int64_t heads, bool causal, MatrixView<T, Cuda> dqkv, bool accumulate) {
  const auto s = cuda_detail::attention_shape(qkv.rows, qkv.cols, seq_len, heads, causal);
  const LaunchConfig dkdv = launches::flash_attention_backward_dkdv<T>(s), dq = launches::flash_attention_backward_dq<T>(s);
  launch(ctx, launches::flash_attention_backward_delta(s), cuda_kernels::flash_backward_delta<T>, dout, out, s, delta);
  cuda_detail::with_flash_head_dim_bucket<T>(s.d, [&](auto bucket) {
    constexpr int kMaxD = decltype(bucket)::value;
    launch(ctx, dkdv, cuda_kernels::flash_backward_dkdv_simt<T, kMaxD>, dout, qkv, s, lse, delta, dqkv, accumulate);
    launch(ctx, dq, cuda_kernels::flash_backward_dq_simt<T, kMaxD>, dout, qkv, s, lse, delta, dqkv, accumulate);
  });
}

}  // namespace mdlm
