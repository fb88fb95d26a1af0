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
// Backward: flash_backward_delta (D = rowsum(dO o O)), then dK, dV per key block (over the query
// blocks that see it) and dQ per query block: flash_backward_{dkdv,dq}_mma_d64 on tensor cores
// for bf16 at D = 64 (4 warps of 16 key or query rows; P, dP and dS stay in registers), else
// flash_backward_{dkdv,dq}_simt (one thread per key or query row). Each gradient element has
// one writer: no atomics, the same bits on every run.
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

// The SIMT backward's per-query-row values of one query block.
struct FlashRowStats {
  float lse[kFlashQueryBlock];
  float delta[kFlashQueryBlock];
};

// What one flash block works on: sequence b and head h (bh = b H + h, blockIdx.x) and rows
// [r0, r0 + rows) of the sequence (the query or key block blockIdx.y; both blocks are 64 rows).
struct FlashBlock {
  std::int64_t bh, b, h, r0, rows;
};
__device__ inline FlashBlock flash_block(const AttentionShape& s) {
  const std::int64_t bh = blockIdx.x, r0 = static_cast<std::int64_t>(blockIdx.y) * kFlashQueryBlock;
  return {bh, bh / s.heads, bh % s.heads, r0, min(kFlashQueryBlock, s.seq - r0)};
}

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
  const auto [bh, b, h, i0, m] = flash_block(s);
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

// ---- tensor cores (bf16, D = 64) -------------------------------------------------------------
// Every product is a warp's 16 x 64 tile times a 64 x 64 tile in shared memory (the query and key
// blocks and the head dimension are all 64): 8 n-tiles of 8 columns, 4 k-steps of 16.
// Fragment layouts (PTX ISA, m16n8k16), lane = 4 g + t: A a0a1 (g, 2t), a2a3 (g+8, 2t),
// a4a5 (g, 2t+8), a6a7 (g+8, 2t+8); B b0b1 (k 2t, n g), b2b3 (k 2t+8, n g); C c0c1 (g, 2t),
// c2c3 (g+8, 2t). Thread (g, t) of warp w holds rows w*16 + g and w*16 + g + 8 of the tile.
static_assert(kFlashQueryBlock == 64 && kFlashKeyBlock == 64 && kFlashMmaHeadDim == 64,
              "the tensor-core kernels multiply 64 x 64 tiles");
inline constexpr int kFlashMmaNTiles = 8, kFlashMmaKSteps = 4;
using FlashMmaAcc = float[kFlashMmaNTiles][4];                  // a warp's 16 x 64 fp32 tile
using FlashMmaA = std::uint32_t[kFlashMmaKSteps][4];            // a warp's 16 x 64 bf16 A operand

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
__device__ inline int flash_lane_g() { return (threadIdx.x % 32) / 4; }
__device__ inline int flash_lane_t() { return threadIdx.x % 4; }
__device__ inline int flash_warp_row0() { return static_cast<int>(threadIdx.x / 32) * 16; }

// The A operand of rows [row0, row0 + 16) of a shared tile (64 columns).
__device__ inline void flash_mma_a_from_tile(const bf16* tile, int row0, FlashMmaA& a) {
  const int g = flash_lane_g(), t = flash_lane_t();
#pragma unroll
  for (int ks = 0; ks < kFlashMmaKSteps; ++ks) {
    a[ks][0] = flash_pair(tile, row0 + g, ks * 16 + 2 * t);
    a[ks][1] = flash_pair(tile, row0 + g + 8, ks * 16 + 2 * t);
    a[ks][2] = flash_pair(tile, row0 + g, ks * 16 + 2 * t + 8);
    a[ks][3] = flash_pair(tile, row0 + g + 8, ks * 16 + 2 * t + 8);
  }
}

// The A operand from an fp32 accumulator (rounded to bf16): k-step ks is C tiles 2 ks, 2 ks + 1.
__device__ inline void flash_mma_a_from_acc(const FlashMmaAcc& c, FlashMmaA& a) {
#pragma unroll
  for (int ks = 0; ks < kFlashMmaKSteps; ++ks) {
    a[ks][0] = flash_pack(c[2 * ks][0], c[2 * ks][1]);
    a[ks][1] = flash_pack(c[2 * ks][2], c[2 * ks][3]);
    a[ks][2] = flash_pack(c[2 * ks + 1][0], c[2 * ks + 1][1]);
    a[ks][3] = flash_pack(c[2 * ks + 1][2], c[2 * ks + 1][3]);
  }
}

// acc (16 x 64) += A (16 x 64) B, where B[k][n] = b_tile[n][k] (the tile holds B's columns as
// rows: K for Q K^T, V^T for P V, ...).
__device__ inline void flash_mma_product(FlashMmaAcc& acc, const FlashMmaA& a, const bf16* b_tile) {
  const int g = flash_lane_g(), t = flash_lane_t();
#pragma unroll
  for (int nt = 0; nt < kFlashMmaNTiles; ++nt)
#pragma unroll
    for (int ks = 0; ks < kFlashMmaKSteps; ++ks)
      mma_bf16_m16n8k16(acc[nt], a[ks], flash_pair(b_tile, nt * 8 + g, ks * 16 + 2 * t),
                        flash_pair(b_tile, nt * 8 + g, ks * 16 + 2 * t + 8));
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

// Element (nt, c) of a thread's accumulator: tile row (c < 2 ? g : g + 8), column nt*8 + 2t + c%2.
__device__ inline int flash_acc_col(int nt, int c) { return nt * 8 + 2 * flash_lane_t() + (c & 1); }

// Writes (or adds) a warp's 16 x 64 fp32 tile to rows[0..1] (the thread's two rows, skipped at or
// past seq) of a bf16 matrix at column col0, times `scale`.
__device__ inline void flash_mma_store(const FlashMmaAcc& acc, const std::int64_t (&rows)[2], const float (&scale)[2],
                                       std::int64_t seq, bf16* base, std::int64_t ld, std::int64_t col0,
                                       bool accumulate) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (rows[half] >= seq) continue;
    bf16* dst = base + rows[half] * ld + col0;
#pragma unroll
    for (int nt = 0; nt < kFlashMmaNTiles; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float v = acc[nt][2 * half + c] * scale[half];
        bf16& o = dst[flash_acc_col(nt, c)];
        o = accumulate ? from_compute<bf16>(to_compute(o) + v) : from_compute<bf16>(v);
      }
  }
}

// The tensor-core forward's shared tiles: Q, K (row-major) and V transposed (dims x keys).
struct FlashMmaShared {
  bf16 q[kFlashQueryBlock * kFlashMmaStride];
  bf16 k[kFlashKeyBlock * kFlashMmaStride];
  bf16 vt[kFlashMmaHeadDim * kFlashMmaStride];
};

__global__ void __launch_bounds__(kFlashMmaThreads)
    flash_forward_mma_d64(MatrixView<const bf16, Cuda> qkv, AttentionShape s, float* lse, MatrixView<bf16, Cuda> out) {
  constexpr int kD = static_cast<int>(kFlashMmaHeadDim);
  __shared__ FlashMmaShared sh;
  const auto [bh, b, h, i0, m] = flash_block(s);
  const int g = flash_lane_g(), row0 = flash_warp_row0();
  flash_mma_load_rows(qkv.data + (b * s.seq + i0) * qkv.ld + h * kD, qkv.ld, m, sh.q);
  __syncthreads();
  FlashMmaA qa;
  flash_mma_a_from_tile(sh.q, row0, qa);
  const std::int64_t rows[2] = {i0 + row0 + g, i0 + row0 + g + 8};
  FlashMmaAcc o = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0, 0};
  const std::int64_t kblocks = flash_key_blocks_for(i0, m, s.seq, s.causal);
  for (std::int64_t kb = 0; kb < kblocks; ++kb) {
    const std::int64_t j0 = kb * kFlashKeyBlock, n = min(kFlashKeyBlock, s.seq - j0);
    __syncthreads();
    const bf16* k = qkv.data + (b * s.seq + j0) * qkv.ld + s.cdim + h * kD;
    flash_mma_load_rows(k, qkv.ld, n, sh.k);
    flash_mma_load_rows_transposed(k + s.cdim, qkv.ld, n, sh.vt);
    __syncthreads();
    FlashMmaAcc sc = {};  // S of this warp's 16 rows x 64 keys
    flash_mma_product(sc, qa, sh.k);
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // rows g and g + 8
      float block_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kFlashMmaNTiles; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const std::int64_t key = j0 + flash_acc_col(nt, c);
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
      for (int nt = 0; nt < kFlashMmaNTiles; ++nt)
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
      for (int nt = 0; nt < kFlashMmaNTiles; ++nt) {
        o[nt][2 * half] *= alpha;
        o[nt][2 * half + 1] *= alpha;
      }
      row_max[half] = new_max;
    }
    FlashMmaA pa;  // O += P V: P stays in registers as the A operand
    flash_mma_a_from_acc(sc, pa);
    flash_mma_product(o, pa, sh.vt);
  }
  const float inv[2] = {1.0f / row_sum[0], 1.0f / row_sum[1]};
  flash_mma_store(o, rows, inv, s.seq, out.data + b * s.seq * out.ld, out.ld, h * kD, false);
  if (lse != nullptr && flash_lane_t() == 0)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      if (rows[half] < s.seq) lse[bh * s.seq + rows[half]] = row_max[half] + logf(row_sum[half]);
}

// The tensor-core backward's shared tiles: two row-major tiles and their transposes, and the
// log-sum-exp and D of the query block (dK/dV kernel: Q, Q^T, dO, dO^T; dQ kernel: K, K^T, V).
struct FlashMmaBackwardShared {
  bf16 a[kFlashQueryBlock * kFlashMmaStride];
  bf16 at[kFlashMmaHeadDim * kFlashMmaStride];
  bf16 b[kFlashQueryBlock * kFlashMmaStride];
  bf16 bt[kFlashMmaHeadDim * kFlashMmaStride];
  float lse[kFlashQueryBlock];
  float delta[kFlashQueryBlock];
};

// dK, dV of one key block; warp w owns keys j0 + 16 w .. + 16. Per query block that sees it:
//   S^T = K Q^T, P^T = exp(scale S^T - lse) (masked 0), dV += P^T dO, dP^T = V dO^T,
//   dS^T = scale P^T o (dP^T - D), dK += dS^T Q.
__global__ void __launch_bounds__(kFlashMmaThreads)
    flash_backward_dkdv_mma_d64(MatrixView<const bf16, Cuda> dout, MatrixView<const bf16, Cuda> qkv, AttentionShape s,
                                const float* lse, const float* delta, MatrixView<bf16, Cuda> dqkv, bool accumulate) {
  constexpr int kD = static_cast<int>(kFlashMmaHeadDim);
  __shared__ FlashMmaBackwardShared sh;
  const auto [bh, b, h, j0, n] = flash_block(s);
  const int g = flash_lane_g(), row0 = flash_warp_row0();
  const bf16* k = qkv.data + (b * s.seq + j0) * qkv.ld + s.cdim + h * kD;
  flash_mma_load_rows(k, qkv.ld, n, sh.a);
  flash_mma_load_rows(k + s.cdim, qkv.ld, n, sh.b);
  __syncthreads();
  FlashMmaA ka, va;
  flash_mma_a_from_tile(sh.a, row0, ka);
  flash_mma_a_from_tile(sh.b, row0, va);
  const std::int64_t keys[2] = {j0 + row0 + g, j0 + row0 + g + 8};
  FlashMmaAcc dk = {}, dv = {};
  const std::int64_t qblocks = flash_block_count(s.seq, kFlashQueryBlock);
  for (std::int64_t qb = flash_first_query_block(j0, s.causal); qb < qblocks; ++qb) {
    const std::int64_t i0 = qb * kFlashQueryBlock, m = min(kFlashQueryBlock, s.seq - i0);
    __syncthreads();  // the previous block's tiles (and the K, V tiles at first) are consumed
    const bf16* q = qkv.data + (b * s.seq + i0) * qkv.ld + h * kD;
    const bf16* go = dout.data + (b * s.seq + i0) * dout.ld + h * kD;
    flash_mma_load_rows(q, qkv.ld, m, sh.a);
    flash_mma_load_rows_transposed(q, qkv.ld, m, sh.at);
    flash_mma_load_rows(go, dout.ld, m, sh.b);
    flash_mma_load_rows_transposed(go, dout.ld, m, sh.bt);
    for (int r = threadIdx.x; r < kFlashQueryBlock; r += blockDim.x) {
      sh.lse[r] = r < m ? lse[bh * s.seq + i0 + r] : 0.0f;
      sh.delta[r] = r < m ? delta[bh * s.seq + i0 + r] : 0.0f;
    }
    __syncthreads();
    FlashMmaAcc pt = {}, dpt = {};
    flash_mma_product(pt, ka, sh.a);   // S^T (16 keys x 64 queries)
    flash_mma_product(dpt, va, sh.b);  // dP^T
#pragma unroll
    for (int nt = 0; nt < kFlashMmaNTiles; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int col = flash_acc_col(nt, c);
        const std::int64_t query = i0 + col, key = keys[c >> 1];
        const bool visible = query < s.seq && (!s.causal || key <= query);
        const float p = visible ? expf(pt[nt][c] * s.scale - sh.lse[col]) : 0.0f;
        pt[nt][c] = p;
        dpt[nt][c] = s.scale * p * (dpt[nt][c] - sh.delta[col]);
      }
    FlashMmaA pa, dsa;
    flash_mma_a_from_acc(pt, pa);
    flash_mma_product(dv, pa, sh.bt);  // dV += P^T dO
    flash_mma_a_from_acc(dpt, dsa);
    flash_mma_product(dk, dsa, sh.at);  // dK += dS^T Q
  }
  const float one[2] = {1.0f, 1.0f};
  bf16* base = dqkv.data + b * s.seq * dqkv.ld;
  flash_mma_store(dk, keys, one, s.seq, base, dqkv.ld, s.cdim + h * kD, accumulate);
  flash_mma_store(dv, keys, one, s.seq, base, dqkv.ld, 2 * s.cdim + h * kD, accumulate);
}

// dQ of one query block; warp w owns rows i0 + 16 w .. + 16. Per key block it sees:
//   S = Q K^T, P = exp(scale S - lse) (masked 0), dP = dO V^T, dS = scale P o (dP - D), dQ += dS K.
__global__ void __launch_bounds__(kFlashMmaThreads)
    flash_backward_dq_mma_d64(MatrixView<const bf16, Cuda> dout, MatrixView<const bf16, Cuda> qkv, AttentionShape s,
                              const float* lse, const float* delta, MatrixView<bf16, Cuda> dqkv, bool accumulate) {
  constexpr int kD = static_cast<int>(kFlashMmaHeadDim);
  __shared__ FlashMmaBackwardShared sh;
  const auto [bh, b, h, i0, m] = flash_block(s);
  const int g = flash_lane_g(), row0 = flash_warp_row0();
  flash_mma_load_rows(qkv.data + (b * s.seq + i0) * qkv.ld + h * kD, qkv.ld, m, sh.a);
  flash_mma_load_rows(dout.data + (b * s.seq + i0) * dout.ld + h * kD, dout.ld, m, sh.b);
  __syncthreads();
  FlashMmaA qa, doa;
  flash_mma_a_from_tile(sh.a, row0, qa);
  flash_mma_a_from_tile(sh.b, row0, doa);
  const std::int64_t rows[2] = {i0 + row0 + g, i0 + row0 + g + 8};
  float row_lse[2], row_delta[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    row_lse[half] = rows[half] < s.seq ? lse[bh * s.seq + rows[half]] : 0.0f;
    row_delta[half] = rows[half] < s.seq ? delta[bh * s.seq + rows[half]] : 0.0f;
  }
  FlashMmaAcc dq = {};
  const std::int64_t kblocks = flash_key_blocks_for(i0, m, s.seq, s.causal);
  for (std::int64_t kb = 0; kb < kblocks; ++kb) {
    const std::int64_t j0 = kb * kFlashKeyBlock, n = min(kFlashKeyBlock, s.seq - j0);
    __syncthreads();
    const bf16* k = qkv.data + (b * s.seq + j0) * qkv.ld + s.cdim + h * kD;
    flash_mma_load_rows(k, qkv.ld, n, sh.a);
    flash_mma_load_rows_transposed(k, qkv.ld, n, sh.at);
    flash_mma_load_rows(k + s.cdim, qkv.ld, n, sh.b);
    __syncthreads();
    FlashMmaAcc p = {}, dp = {};
    flash_mma_product(p, qa, sh.a);    // S
    flash_mma_product(dp, doa, sh.b);  // dP
#pragma unroll
    for (int nt = 0; nt < kFlashMmaNTiles; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int half = c >> 1;
        const std::int64_t key = j0 + flash_acc_col(nt, c);
        const bool visible = key < s.seq && (!s.causal || key <= rows[half]);
        const float pv = visible ? expf(p[nt][c] * s.scale - row_lse[half]) : 0.0f;
        dp[nt][c] = s.scale * pv * (dp[nt][c] - row_delta[half]);
      }
    FlashMmaA dsa;
    flash_mma_a_from_acc(dp, dsa);
    flash_mma_product(dq, dsa, sh.at);  // dQ += dS K
  }
  const float one[2] = {1.0f, 1.0f};
  flash_mma_store(dq, rows, one, s.seq, dqkv.data + b * s.seq * dqkv.ld, dqkv.ld, h * kD, accumulate);
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
  const auto [bh, b, h, j0, n] = flash_block(s);
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
  const auto [bh, b, h, i0, m] = flash_block(s);
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

// The tensor-core kernels take bf16 at head dimension 64 from buffers whose rows are 4-byte
// aligned (their tiles are loaded in 32-bit words); everything else the SIMT kernels.
template <class T>
constexpr bool flash_uses_mma_head_dim(std::int64_t d) {
  return std::is_same_v<T, bf16> && d == kFlashMmaHeadDim;
}
template <class T>
bool flash_words_aligned(MatrixView<const T, Cuda> m) {
  return m.ld % 2 == 0 && reinterpret_cast<std::uintptr_t>(m.data) % 4 == 0;
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
  LaunchConfig c = launch_detail::block_each(kernel, s.batches * s.heads, threads, static_smem, dynamic_smem);
  c.grid.y = flash_block_count(s.seq, kFlashQueryBlock);
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
// dK, dV: one block per key block; tensor cores (bf16, D = 64: Q, dO and their transposes, static)
// or SIMT (Q and dO tiles of T, row statistics static).
template <class T>
LaunchConfig flash_attention_backward_dkdv(const cuda_kernels::AttentionShape& s, bool tensor_cores) {
  if (tensor_cores)
    return cuda_detail::flash_grid("flash_backward_dkdv_mma_d64", s, cuda_kernels::kFlashMmaThreads,
                                   sizeof(cuda_kernels::FlashMmaBackwardShared), 0);
  cuda_detail::flash_check_head_dim<T>("flash_backward_dkdv_simt", s.d);
  return cuda_detail::flash_grid("flash_backward_dkdv_simt", s, cuda_kernels::kFlashSimtThreads,
                                 sizeof(cuda_kernels::FlashRowStats),
                                 2 * static_cast<std::size_t>(kFlashQueryBlock * s.d) * sizeof(T));
}
// dQ: one block per query block; tensor cores (K, K^T, V, static) or SIMT (K and V tiles of T).
template <class T>
LaunchConfig flash_attention_backward_dq(const cuda_kernels::AttentionShape& s, bool tensor_cores) {
  if (tensor_cores)
    return cuda_detail::flash_grid("flash_backward_dq_mma_d64", s, cuda_kernels::kFlashMmaThreads,
                                   sizeof(cuda_kernels::FlashMmaBackwardShared), 0);
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
  const bool tensor_cores = cuda_detail::flash_uses_mma_head_dim<T>(s.d) && cuda_detail::flash_words_aligned(qkv);
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
  const bool tensor_cores = cuda_detail::flash_uses_mma_head_dim<T>(s.d) && cuda_detail::flash_words_aligned(qkv) &&
                            cuda_detail::flash_words_aligned(dout);
  const LaunchConfig dkdv = launches::flash_attention_backward_dkdv<T>(s, tensor_cores);
  const LaunchConfig dq = launches::flash_attention_backward_dq<T>(s, tensor_cores);
  launch(ctx, launches::flash_attention_backward_delta(s), cuda_kernels::flash_backward_delta<T>, dout, out, s, delta);
  if constexpr (std::is_same_v<T, bf16>) {
    if (tensor_cores) {
      launch(ctx, dkdv, cuda_kernels::flash_backward_dkdv_mma_d64, dout, qkv, s, lse, delta, dqkv, accumulate);
      launch(ctx, dq, cuda_kernels::flash_backward_dq_mma_d64, dout, qkv, s, lse, delta, dqkv, accumulate);
      return;
    }
  }
  cuda_detail::with_flash_head_dim_bucket<T>(s.d, [&](auto bucket) {
    constexpr int kMaxD = decltype(bucket)::value;
    launch(ctx, dkdv, cuda_kernels::flash_backward_dkdv_simt<T, kMaxD>, dout, qkv, s, lse, delta, dqkv, accumulate);
    launch(ctx, dq, cuda_kernels::flash_backward_dq_simt<T, kMaxD>, dout, qkv, s, lse, delta, dqkv, accumulate);
  });
}

}  // namespace mdlm
