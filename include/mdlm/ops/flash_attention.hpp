#pragma once
// Flash attention (Dao et al. 2022; FlashAttention-2's loop order): the tiled algorithm that
// never forms the (B, H, T, T) probabilities. Same math as ops/attention.hpp:
//   qkv (B*T, 3C) = [Q | K | V] head-major (H heads of D = C/H), out (B*T, C) head-major.
//   S = Q K^T / sqrt(D) (+ causal mask), P = softmax_rows(S), out = P V.
// Saved for backward: only the row log-sum-exp  lse (B, H, T) = log sum_j exp(S_ij), in the
// compute type (fp32 for fp32 and bf16, fp64 for fp64).
//
// Forward, one task per (sequence, head, block of kFlashQueryBlock query rows). Per block of
// kFlashKeyBlock keys, in key order (causal: up to the block holding the last query row):
//   S = scale Q_blk K_blk^T, masked (causal j > i, and keys past T) to -inf
//   m' = max(m, rowmax S);  P = exp(S - m');  alpha = exp(m - m')
//   l = alpha l + rowsum P;  acc = alpha acc + P V_blk;  m = m'
// then O = acc / l and lse = m + log l. A row's first key block always holds a key it may see
// (key 0), so m is finite from the first block on.
//
// Backward (three passes, each output written by exactly one task: no atomics, the same bits
// on every run and thread count):
//   1. D = rowsum(dO o O)                                   (B, H, T), one task per row block
//   2. per (sequence, head, key block): for each query block that can see it,
//        P = exp(scale Q K^T - lse) (masked 0),  dV += P^T dO,  dP = dO V^T,
//        dS = scale P o (dP - D),  dK += dS^T Q
//   3. per (sequence, head, query block): for each key block it can see, P, dP and dS again,
//        dQ += dS K
// This file is the Host twin of the CUDA kernels (ops/cuda/flash_attention.cuh): the same
// blocks (kFlashQueryBlock, kFlashKeyBlock), the same order of blocks and of the online-softmax
// update, the same passes. The products inside one tile are GEMMs (cblas, single-threaded per
// task); on CUDA they are tensor-core MMAs (d = 64, bf16) or SIMT loops. fp32 and fp64.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/core/config.hpp"
#include "mdlm/core/math.hpp"
#include "mdlm/ops/attention.hpp"
#include "mdlm/ops/gemm.hpp"

namespace mdlm {

// The tiles shared by the Host twin and the CUDA kernels: on CUDA a query block is 4 warps of
// 16 rows (one m16n8k16 MMA row tile each).
inline constexpr std::int64_t kFlashQueryBlock = 64;
inline constexpr std::int64_t kFlashKeyBlock = 64;

// Blocks of `block` rows covering n rows. (These helpers run in the CUDA kernels too.)
MDLM_HD inline constexpr std::int64_t flash_block_count(std::int64_t n, std::int64_t block) {
  return (n + block - 1) / block;
}

// Keys of block [j0, j0 + n) that query row i may see: n, or (causal) those with j <= i.
MDLM_HD inline constexpr std::int64_t flash_visible_keys(std::int64_t i, std::int64_t j0, std::int64_t n, bool causal) {
  return !causal ? n : (i + 1 - j0 < 0 ? 0 : (i + 1 - j0 < n ? i + 1 - j0 : n));
}

// Key blocks a query block starting at i0 with m rows reads: all, or (causal) up to the one
// holding its last row.
MDLM_HD inline constexpr std::int64_t flash_key_blocks_for(std::int64_t i0, std::int64_t m, std::int64_t seq,
                                                           bool causal) {
  return flash_block_count(causal ? i0 + m : seq, kFlashKeyBlock);
}

// The first query block that sees key block starting at j0 (causal: the one holding row j0).
MDLM_HD inline constexpr std::int64_t flash_first_query_block(std::int64_t j0, bool causal) {
  return causal ? j0 / kFlashQueryBlock : 0;
}

namespace flash_detail {

// Where one (sequence, head) lives in the packed buffers.
struct FlashHead {
  std::int64_t b, h;
};

template <class T>
struct FlashGeometry {
  std::int64_t cdim, d, batches, seq;
  T scale;
  FlashGeometry(std::int64_t cols, std::int64_t rows, std::int64_t seq_len, std::int64_t heads)
      : cdim(cols / 3), d(cols / 3 / heads), batches(rows / seq_len), seq(seq_len),
        scale(T(1) / std::sqrt(static_cast<T>(cols / 3 / heads))) {}
};

// P = exp(scale Q_blk K_blk^T - lse_i) for rows [i0, i0+m) and keys [j0, j0+n), masked 0; the
// product scale Q K^T is written to p first (ld n).
template <class T>
void flash_recompute_probs(const T* q, const T* k, std::int64_t ld, std::int64_t d, T scale, const T* lse,
                           std::int64_t i0, std::int64_t m, std::int64_t j0, std::int64_t n, bool causal, T* p) {
  detail::host_blas_gemm<T>(Op::N, Op::T, {m, n, d}, scale, q, ld, k, ld, T(0), p, n);
  for (std::int64_t r = 0; r < m; ++r) {
    T* pr = p + r * n;
    const std::int64_t seen = flash_visible_keys(i0 + r, j0, n, causal);
    const T l = lse[i0 + r];
    for (std::int64_t j = 0; j < seen; ++j) pr[j] = exp_of(pr[j] - l);
    for (std::int64_t j = seen; j < n; ++j) pr[j] = 0;
  }
}

// dS = scale P o (dP - D_i), in place of dP (m x n, ld n).
template <class T>
void flash_probs_to_score_grad(const T* p, const T* delta, std::int64_t i0, std::int64_t m, std::int64_t n, T scale,
                               T* dp) {
  for (std::int64_t r = 0; r < m; ++r) {
    const T dr = delta[i0 + r];
    for (std::int64_t j = 0; j < n; ++j) dp[r * n + j] = scale * p[r * n + j] * (dp[r * n + j] - dr);
  }
}

// Writes (or adds) an m x d tile held contiguously into a strided destination.
template <class T>
void flash_store_tile(const T* tile, std::int64_t m, std::int64_t d, T* dst, std::int64_t ld, bool accumulate) {
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t e = 0; e < d; ++e) dst[r * ld + e] = accumulate ? dst[r * ld + e] + tile[r * d + e] : tile[r * d + e];
}

// Runs run(task, slot) for tasks [0, n) on at most thread_count contiguous ranges, each with its
// own scratch slot of `slot_size` elements and single-threaded BLAS.
template <class T, class F>
void flash_for_each_task(const Host& ctx, std::int64_t n, std::int64_t slot_size, F&& run) {
  const std::int64_t slots = std::max<std::int64_t>(1, std::min<std::int64_t>(ctx.thread_count(), n));
  std::vector<T> scratch(static_cast<std::size_t>(slots * slot_size));
  ctx.parallel_for(slots, [&](std::int64_t sl) {
    detail::attention_blas_single_threaded();
    std::int64_t begin = 0, end = 0;
    detail::slot_range(n, slots, sl, begin, end);
    for (std::int64_t task = begin; task < end; ++task) run(task, scratch.data() + sl * slot_size);
  });
}

}  // namespace flash_detail

// Forward. lse: (B, H, T) saved for backward, or nullptr (inference: nothing is saved).
template <class T>
void flash_attention_forward(const Host& ctx, MatrixView<const T, Host> qkv, std::int64_t seq_len, std::int64_t heads,
                             bool causal, T* lse, MatrixView<T, Host> out) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "the Host flash attention is fp32 or fp64");
  const flash_detail::FlashGeometry<T> g(qkv.cols, qkv.rows, seq_len, heads);
  const std::int64_t ld = qkv.ld, qblocks = flash_block_count(g.seq, kFlashQueryBlock), d = g.d;
  // Per slot: S/P tile (Bq x Bk), acc (Bq x d), running max m and sum l (Bq each).
  const std::int64_t slot = kFlashQueryBlock * (kFlashKeyBlock + d + 2);
  flash_detail::flash_for_each_task<T>(ctx, g.batches * heads * qblocks, slot, [&](std::int64_t task, T* s) {
    const std::int64_t bh = task / qblocks, b = bh / heads, h = bh % heads;
    const std::int64_t i0 = (task % qblocks) * kFlashQueryBlock, m = std::min(kFlashQueryBlock, g.seq - i0);
    T* acc = s + kFlashQueryBlock * kFlashKeyBlock;
    T* row_max = acc + kFlashQueryBlock * d;
    T* row_sum = row_max + kFlashQueryBlock;
    std::fill(acc, acc + m * d, T(0));
    std::fill(row_max, row_max + m, -std::numeric_limits<T>::infinity());
    std::fill(row_sum, row_sum + m, T(0));
    const T* q = qkv.data + (b * g.seq + i0) * ld + h * d;
    const std::int64_t kblocks = flash_key_blocks_for(i0, m, g.seq, causal);
    for (std::int64_t kb = 0; kb < kblocks; ++kb) {
      const std::int64_t j0 = kb * kFlashKeyBlock, n = std::min(kFlashKeyBlock, g.seq - j0);
      const T* k = qkv.data + (b * g.seq + j0) * ld + g.cdim + h * d;
      detail::host_blas_gemm<T>(Op::N, Op::T, {m, n, d}, g.scale, q, ld, k, ld, T(0), s, n);
      for (std::int64_t r = 0; r < m; ++r) {
        T* pr = s + r * n;
        const std::int64_t seen = flash_visible_keys(i0 + r, j0, n, causal);
        const T block_max = host_lane_max<T>(seen, [&](std::int64_t j) { return pr[j]; });
        const T new_max = std::max(row_max[r], block_max);
        const T alpha = row_max[r] == -std::numeric_limits<T>::infinity() ? T(0) : exp_of(row_max[r] - new_max);
        for (std::int64_t j = 0; j < seen; ++j) pr[j] = exp_of(pr[j] - new_max);
        for (std::int64_t j = seen; j < n; ++j) pr[j] = 0;
        row_sum[r] = alpha * row_sum[r] + host_lane_sum<T>(seen, [&](std::int64_t j) { return pr[j]; });
        for (std::int64_t e = 0; e < d; ++e) acc[r * d + e] *= alpha;
        row_max[r] = new_max;
      }
      const T* v = k + g.cdim;
      detail::host_blas_gemm<T>(Op::N, Op::N, {m, d, n}, T(1), s, n, v, ld, T(1), acc, d);
    }
    for (std::int64_t r = 0; r < m; ++r) {
      const T inv = T(1) / row_sum[r];
      T* o = out.data + (b * g.seq + i0 + r) * out.ld + h * d;
      for (std::int64_t e = 0; e < d; ++e) o[e] = acc[r * d + e] * inv;
      if (lse != nullptr) lse[bh * g.seq + i0 + r] = row_max[r] + std::log(row_sum[r]);
    }
  });
}

// Backward. out and lse are the forward's; delta: (B, H, T) workspace for D. dqkv (B*T, 3C)
// written (or added when accumulate).
template <class T>
void flash_attention_backward(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> qkv,
                              MatrixView<const T, Host> out, const T* lse, T* delta, std::int64_t seq_len,
                              std::int64_t heads, bool causal, MatrixView<T, Host> dqkv, bool accumulate) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "the Host flash attention is fp32 or fp64");
  const flash_detail::FlashGeometry<T> g(qkv.cols, qkv.rows, seq_len, heads);
  const std::int64_t ld = qkv.ld, ldg = dqkv.ld, d = g.d;
  const std::int64_t qblocks = flash_block_count(g.seq, kFlashQueryBlock), kblocks = flash_block_count(g.seq, kFlashKeyBlock);
  const std::int64_t tile = kFlashQueryBlock * kFlashKeyBlock;
  // 1. D = rowsum(dO o O), one task per (sequence, head, query block).
  ctx.parallel_for(g.batches * heads * qblocks, [&](std::int64_t task) {
    const std::int64_t bh = task / qblocks, b = bh / heads, h = bh % heads;
    const std::int64_t i0 = (task % qblocks) * kFlashQueryBlock, m = std::min(kFlashQueryBlock, g.seq - i0);
    for (std::int64_t r = 0; r < m; ++r) {
      const std::int64_t row = b * g.seq + i0 + r;
      delta[bh * g.seq + i0 + r] = dot_lanes<T>(dout.data + row * dout.ld + h * d, out.data + row * out.ld + h * d, d);
    }
  });
  // 2. dK, dV per key block. Slot: P, dP (Bq x Bk each), dK, dV accumulators (Bk x d each).
  flash_detail::flash_for_each_task<T>(
      ctx, g.batches * heads * kblocks, 2 * tile + 2 * kFlashKeyBlock * d, [&](std::int64_t task, T* s) {
        const std::int64_t bh = task / kblocks, b = bh / heads, h = bh % heads;
        const std::int64_t j0 = (task % kblocks) * kFlashKeyBlock, n = std::min(kFlashKeyBlock, g.seq - j0);
        T* p = s;
        T* dp = s + tile;
        T* dk = dp + tile;
        T* dv = dk + kFlashKeyBlock * d;
        std::fill(dk, dk + 2 * kFlashKeyBlock * d, T(0));
        const T* k = qkv.data + (b * g.seq + j0) * ld + g.cdim + h * d;
        const T* v = k + g.cdim;
        const T* lse_bh = lse + bh * g.seq;
        const T* delta_bh = delta + bh * g.seq;
        for (std::int64_t qb = flash_first_query_block(j0, causal); qb < qblocks; ++qb) {
          const std::int64_t i0 = qb * kFlashQueryBlock, m = std::min(kFlashQueryBlock, g.seq - i0);
          const T* q = qkv.data + (b * g.seq + i0) * ld + h * d;
          const T* go = dout.data + (b * g.seq + i0) * dout.ld + h * d;
          flash_detail::flash_recompute_probs(q, k, ld, d, g.scale, lse_bh, i0, m, j0, n, causal, p);
          detail::host_blas_gemm<T>(Op::T, Op::N, {n, d, m}, T(1), p, n, go, dout.ld, T(1), dv, d);
          detail::host_blas_gemm<T>(Op::N, Op::T, {m, n, d}, T(1), go, dout.ld, v, ld, T(0), dp, n);
          flash_detail::flash_probs_to_score_grad(p, delta_bh, i0, m, n, g.scale, dp);
          detail::host_blas_gemm<T>(Op::T, Op::N, {n, d, m}, T(1), dp, n, q, ld, T(1), dk, d);
        }
        T* dst = dqkv.data + (b * g.seq + j0) * ldg + h * d;
        flash_detail::flash_store_tile(dk, n, d, dst + g.cdim, ldg, accumulate);
        flash_detail::flash_store_tile(dv, n, d, dst + 2 * g.cdim, ldg, accumulate);
      });
  // 3. dQ per query block. Slot: P, dP (Bq x Bk each), dQ accumulator (Bq x d).
  flash_detail::flash_for_each_task<T>(
      ctx, g.batches * heads * qblocks, 2 * tile + kFlashQueryBlock * d, [&](std::int64_t task, T* s) {
        const std::int64_t bh = task / qblocks, b = bh / heads, h = bh % heads;
        const std::int64_t i0 = (task % qblocks) * kFlashQueryBlock, m = std::min(kFlashQueryBlock, g.seq - i0);
        T* p = s;
        T* dp = s + tile;
        T* dq = dp + tile;
        std::fill(dq, dq + m * d, T(0));
        const T* q = qkv.data + (b * g.seq + i0) * ld + h * d;
        const T* go = dout.data + (b * g.seq + i0) * dout.ld + h * d;
        const std::int64_t nkb = flash_key_blocks_for(i0, m, g.seq, causal);
        for (std::int64_t kb = 0; kb < nkb; ++kb) {
          const std::int64_t j0 = kb * kFlashKeyBlock, n = std::min(kFlashKeyBlock, g.seq - j0);
          const T* k = qkv.data + (b * g.seq + j0) * ld + g.cdim + h * d;
          const T* v = k + g.cdim;
          flash_detail::flash_recompute_probs(q, k, ld, d, g.scale, lse + bh * g.seq, i0, m, j0, n, causal, p);
          detail::host_blas_gemm<T>(Op::N, Op::T, {m, n, d}, T(1), go, dout.ld, v, ld, T(0), dp, n);
          flash_detail::flash_probs_to_score_grad(p, delta + bh * g.seq, i0, m, n, g.scale, dp);
          detail::host_blas_gemm<T>(Op::N, Op::N, {m, d, n}, T(1), dp, n, k, ld, T(1), dq, d);
        }
        flash_detail::flash_store_tile(dq, m, d, dqkv.data + (b * g.seq + i0) * ldg + h * d, ldg, accumulate);
      });
}

// The tape op: saves the output (a Var) and the log-sum-exp only. The backend's
// flash_attention_forward / flash_attention_backward (Host here, Cuda in ops/cuda/) do the work.
template <class B, class T, class G = T>
struct FlashAttentionOp {
  static constexpr const char* kName = "flash_attention";  // its profiling range
  using V = Var<T, B>;
  using C = compute_t<T>;
  struct Ctx {
    V qkv, out;
    std::int64_t seq_len, heads;
    bool causal;
    C* lse;    // (B, H, T)
    C* delta;  // (B, H, T) workspace for backward's D = rowsum(dO o O)
  };

  static V forward(Tape<B, T, G>& tape, V qkv, std::int64_t seq_len, std::int64_t heads, bool causal) {
    const auto range = tape.range(kName);
    MDLM_CHECK(qkv.cols() % (3 * heads) == 0, "flash attention: ", qkv.cols(), " columns are not 3 x ", heads, " heads");
    MDLM_CHECK(seq_len > 0 && qkv.rows() % seq_len == 0, "flash attention: ", qkv.rows(),
               " rows are not whole sequences of ", seq_len);
    const std::int64_t batches = qkv.rows() / seq_len;
    V out = tape.new_var(qkv.rows(), qkv.cols() / 3);
    C* lse = nullptr;
    C* delta = nullptr;
    if (tape.recording()) {  // inference saves nothing
      lse = tape.template scratch<C>(Shape{batches, heads, seq_len}).data;
      delta = tape.template scratch<C>(Shape{batches, heads, seq_len}).data;
    }
    flash_attention_forward(tape.backend(), MatrixView<const T, B>(qkv.value), seq_len, heads, causal, lse, out.value);
    tape.template record<FlashAttentionOp>(Ctx{qkv, out, seq_len, heads, causal, lse, delta});
    return out;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dout = tape.grad_out(ctx.out);
    auto dqkv = tape.grad_in(ctx.qkv);
    if (!dqkv.needed) return;
    flash_attention_backward(tape.backend(), MatrixView<const T, B>(dout), MatrixView<const T, B>(ctx.qkv.value),
                             MatrixView<const T, B>(ctx.out.value), ctx.lse, ctx.delta, ctx.seq_len, ctx.heads, ctx.causal,
                             dqkv.grad, dqkv.accumulate);
  }
};

// The attention the models (nn/dit.hpp) use on backend B: flash where kFlashAttentionDefault<B>
// (Cuda: ops/cuda/flash_attention.cuh), else the materialized AttentionOp. On the Host the
// materialized GEMM path stays the default: it is faster there (bench/bench_attention_host.cpp:
// at the main job's shape, B=16 T=128 H=4 D=32, one thread, forward 2.3 vs 2.8 ms and backward
// 3.2 vs 6.6 ms; the twin's backward computes P and dP twice), and the Host's (B, H, T, T) fits
// in memory.
template <class B>
inline constexpr bool kFlashAttentionDefault = false;

template <class B, class T, class G = T>
using ModelAttentionOp =
    std::conditional_t<kFlashAttentionDefault<B>, FlashAttentionOp<B, T, G>, AttentionOp<B, T, G>>;

}  // namespace mdlm
