#pragma once
// Multi-head scaled dot-product attention, bidirectional or causal, with the probabilities
// materialized (a flash version is a later performance step).
//   qkv (B*T, 3C) = [Q | K | V] head-major (H heads of D = C/H), out (B*T, C) head-major.
//   S = Q K^T / sqrt(D) (+ causal mask), P = softmax_rows(S), out = P V.   P saved: (B, H, T, T)
// Backward: dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP));  dQ = dS K / sqrt(D);
//           dK = dS^T Q / sqrt(D).
//
// Host: attention_forward / attention_backward run the products as GEMMs (cblas) on tiles of
// kAttentionTile query rows of one (sequence, head): Q, K and V are strided column blocks of the
// packed qkv buffer (ld = 3C, head h at column h*D, K at +C, V at +2C), so nothing is copied.
// Causal tiles stop at their last row's key (about half the work of the full T x T). The tasks
// run in parallel, each calling single-threaded BLAS (attention_blas_single_threaded); the tile
// size is fixed, so results are the same bits on every run and thread count. fp32 and fp64 take
// this path; other element types, and the tests, use attention_forward_reference /
// attention_backward_reference (row by row, the definition).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"
#include "mdlm/core/math.hpp"
#include "mdlm/ops/gemm.hpp"

namespace mdlm {

// Inference (tape not recording) keeps no probabilities: the scores live in scratch (on the
// Host one kAttentionTile x T tile per thread; on CUDA one row in shared memory: up to this
// sequence length), so the (B, H, T, T) tensor is neither written nor allocated.
inline constexpr std::int64_t kAttentionRowScratchMax = 8192;  // 32 KiB of shared memory

// Dot product over d values in 8 interleaved partial sums, combined in a fixed order: the same
// bits on every run and thread count, and independent chains the compiler can vectorize (a
// single running sum is bound by the add latency).
template <class C, class A, class B>
inline C dot_lanes(const A* a, const B* b, std::int64_t d) {
  C part[8] = {};
  std::int64_t e = 0;
  for (; e + 8 <= d; e += 8)
    for (int k = 0; k < 8; ++k) part[k] += C(a[e + k]) * C(b[e + k]);
  C s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; e < d; ++e) s += C(a[e]) * C(b[e]);
  return s;
}

// The reference forward: one task per (sequence, head), row by row.
// probs: (B, H, T, T) saved for backward, or nullptr (inference).
template <class T>
void attention_forward_reference(const Host& ctx, MatrixView<const T, Host> qkv, std::int64_t seq_len, std::int64_t heads,
                       bool causal, compute_t<T>* probs, MatrixView<T, Host> out) {
  using C = compute_t<T>;
  const std::int64_t cdim = qkv.cols / 3, d = cdim / heads, batches = qkv.rows / seq_len, tl = seq_len;
  const C scale = C(1) / std::sqrt(static_cast<C>(d));
  // One task per (sequence, head); per query row: scores, softmax, then out = P V accumulated
  // row by row of V (contiguous reads; the sum over j runs in the same order for every e).
  ctx.parallel_for(batches * heads, [&](std::int64_t bh) {
    const std::int64_t b = bh / heads, h = bh % heads;
    std::vector<C> scratch(static_cast<std::size_t>((probs == nullptr ? tl : 0) + d));
    C* acc = scratch.data();
    for (std::int64_t i = 0; i < tl; ++i) {
      const std::int64_t idx = bh * tl + i;
      const T* q = qkv.data + (b * tl + i) * qkv.ld + h * d;
      C* p = probs != nullptr ? probs + idx * tl : scratch.data() + d;
      const std::int64_t nk = causal ? i + 1 : tl;
      C mx = -std::numeric_limits<C>::infinity();
      for (std::int64_t j = 0; j < nk; ++j) {
        const T* k = qkv.data + (b * tl + j) * qkv.ld + cdim + h * d;
        p[j] = dot_lanes<C>(q, k, d) * scale;
        mx = p[j] > mx ? p[j] : mx;
      }
      C sum = 0;
      for (std::int64_t j = 0; j < nk; ++j) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      for (std::int64_t j = 0; j < nk; ++j) p[j] /= sum;
      if (probs != nullptr)
        for (std::int64_t j = nk; j < tl; ++j) p[j] = 0;
      for (std::int64_t e = 0; e < d; ++e) acc[e] = 0;
      for (std::int64_t j = 0; j < nk; ++j) {
        const T* v = qkv.data + (b * tl + j) * qkv.ld + 2 * cdim + h * d;
        for (std::int64_t e = 0; e < d; ++e) acc[e] += p[j] * C(v[e]);
      }
      T* o = out.data + (b * tl + i) * out.ld + h * d;
      for (std::int64_t e = 0; e < d; ++e) o[e] = static_cast<T>(acc[e]);
    }
  });
}

// The reference backward. dqkv (B*T, 3C) written (or added when accumulate).
template <class T>
void attention_backward_reference(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> qkv,
                        const compute_t<T>* probs, std::int64_t seq_len, std::int64_t heads, bool causal,
                        MatrixView<T, Host> dqkv, bool accumulate) {
  using C = compute_t<T>;
  const std::int64_t cdim = qkv.cols / 3, d = cdim / heads, batches = qkv.rows / seq_len, tl = seq_len;
  const C scale = C(1) / std::sqrt(static_cast<C>(d));
  auto at = [&](std::int64_t row, std::int64_t col) -> const T& { return qkv.data[row * qkv.ld + col]; };
  // One task per (sequence, head): dQ, dK, dV of that head are written by it alone.
  ctx.parallel_for(batches * heads, [&](std::int64_t bh) {
    const std::int64_t b = bh / heads, h = bh % heads;
    std::vector<C> dq(static_cast<std::size_t>(tl * d), C(0)), dk(dq.size(), C(0)), dv(dq.size(), C(0));
    std::vector<C> ds(static_cast<std::size_t>(tl));
    for (std::int64_t i = 0; i < tl; ++i) {
      const C* p = probs + (bh * tl + i) * tl;
      const std::int64_t nk = causal ? i + 1 : tl;
      const T* go = dout.data + (b * tl + i) * dout.ld + h * d;
      C dot = 0;
      for (std::int64_t j = 0; j < nk; ++j) {
        const C dp = dot_lanes<C>(go, &at(b * tl + j, 2 * cdim + h * d), d);
        ds[static_cast<std::size_t>(j)] = dp;
        dot += p[j] * dp;
      }
      for (std::int64_t j = 0; j < nk; ++j) {
        const C dsj = p[j] * (ds[static_cast<std::size_t>(j)] - dot) * scale;
        for (std::int64_t e = 0; e < d; ++e) {
          dq[static_cast<std::size_t>(i * d + e)] += dsj * C(at(b * tl + j, cdim + h * d + e));
          dk[static_cast<std::size_t>(j * d + e)] += dsj * C(at(b * tl + i, h * d + e));
          dv[static_cast<std::size_t>(j * d + e)] += p[j] * C(go[e]);
        }
      }
    }
    for (std::int64_t t = 0; t < tl; ++t) {
      T* row = dqkv.data + (b * tl + t) * dqkv.ld;
      for (std::int64_t e = 0; e < d; ++e) {
        const std::size_t k = static_cast<std::size_t>(t * d + e);
        C vals[3] = {dq[k], dk[k], dv[k]};
        for (int part = 0; part < 3; ++part) {
          T& o = row[part * cdim + h * d + e];
          o = accumulate ? static_cast<T>(o + vals[part]) : static_cast<T>(vals[part]);
        }
      }
    }
  });
}

// Query rows per GEMM tile. Fixed (never derived from the thread count): the tiling, and so
// every sum's order, is the same on every run.
inline constexpr std::int64_t kAttentionTile = 64;

namespace detail {

// Within an OpenMP parallel region OpenBLAS (OpenMP build) runs single-threaded already, but a
// region of one thread is not "active", and BLAS would start its own team from inside it. The
// ICV set here belongs to the calling task only (it ends with the region), so no other thread
// and no later top-level call is affected.
inline void attention_blas_single_threaded() { omp_set_num_threads(1); }

// Splits [0, n) into `slots` contiguous ranges; slot s gets [begin, end).
inline void slot_range(std::int64_t n, std::int64_t slots, std::int64_t s, std::int64_t& begin, std::int64_t& end) {
  begin = n * s / slots;
  end = n * (s + 1) / slots;
}

// Row softmax of one tile in place: rows i0 .. i0+m-1 of scores s (ld lds, nk columns
// computed); row i attends to keys [0, n_i) (n_i = i+1 when causal, else T), the rest of the
// nk columns become 0.
template <class T>
void attention_softmax_tile(T* s, std::int64_t lds, std::int64_t i0, std::int64_t m, std::int64_t nk, std::int64_t tl,
                            bool causal) {
  for (std::int64_t r = 0; r < m; ++r) {
    T* p = s + r * lds;
    const std::int64_t n = causal ? i0 + r + 1 : tl;
    const T mx = host_lane_max<T>(n, [&](std::int64_t j) { return p[j]; });
    for (std::int64_t j = 0; j < n; ++j) p[j] = exp_of(p[j] - mx);
    const T inv = T(1) / host_lane_sum<T>(n, [&](std::int64_t j) { return p[j]; });
    for (std::int64_t j = 0; j < n; ++j) p[j] *= inv;
    for (std::int64_t j = n; j < nk; ++j) p[j] = 0;
  }
}

}  // namespace detail

// GEMM forward (fp32, fp64). probs: (B, H, T, T) saved for backward (zeros above the diagonal
// when causal), or nullptr (inference: each task's tile of scores lives in one kAttentionTile x T
// scratch slot per thread, allocated once per call).
template <class T>
void attention_forward_gemm(const Host& ctx, MatrixView<const T, Host> qkv, std::int64_t seq_len, std::int64_t heads,
                            bool causal, T* probs, MatrixView<T, Host> out) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "GEMM attention is fp32 or fp64");
  const std::int64_t cdim = qkv.cols / 3, d = cdim / heads, batches = qkv.rows / seq_len, tl = seq_len;
  const std::int64_t ld = qkv.ld, tiles = (tl + kAttentionTile - 1) / kAttentionTile;
  const std::int64_t tasks = batches * heads * tiles, tile_rows = std::min(tl, kAttentionTile);
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  const std::int64_t slots = std::min<std::int64_t>(ctx.thread_count(), tasks);
  std::vector<T> scratch(probs == nullptr ? static_cast<std::size_t>(slots * tile_rows * tl) : 0);
  // Task = (sequence, head, tile of query rows): S = scale Q K^T, softmax, O = P V.
  auto run = [&](std::int64_t task, T* slot) {
    const std::int64_t bh = task / tiles, tile = task % tiles, b = bh / heads, h = bh % heads;
    const std::int64_t i0 = tile * kAttentionTile, m = std::min(kAttentionTile, tl - i0), nk = causal ? i0 + m : tl;
    const T* q = qkv.data + (b * tl + i0) * ld + h * d;
    const T* k = qkv.data + b * tl * ld + cdim + h * d;
    const T* v = k + cdim;
    T* s = probs != nullptr ? probs + (bh * tl + i0) * tl : slot;
    const std::int64_t lds = probs != nullptr ? tl : nk;
    detail::host_blas_gemm<T>(Op::N, Op::T, {m, nk, d}, scale, q, ld, k, ld, T(0), s, lds);
    detail::attention_softmax_tile(s, lds, i0, m, nk, tl, causal);
    if (probs != nullptr)
      for (std::int64_t r = 0; r < m; ++r) std::fill(s + r * lds + nk, s + r * lds + tl, T(0));
    detail::host_blas_gemm<T>(Op::N, Op::N, {m, d, nk}, T(1), s, lds, v, ld, T(0), out.data + (b * tl + i0) * out.ld + h * d,
                          out.ld);
  };
  ctx.parallel_for(slots, [&](std::int64_t sl) {
    detail::attention_blas_single_threaded();
    std::int64_t begin = 0, end = 0;
    detail::slot_range(tasks, slots, sl, begin, end);
    T* slot = scratch.empty() ? nullptr : scratch.data() + sl * tile_rows * tl;
    for (std::int64_t task = begin; task < end; ++task) run(task, slot);
  });
}

// GEMM backward (fp32, fp64). dqkv (B*T, 3C) written (or added when accumulate). One task per
// (sequence, head), its tiles from the last to the first: the last tile reaches every key, so
// it writes (or adds to) all of dK and dV and the earlier tiles add to them.
template <class T>
void attention_backward_gemm(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> qkv,
                             const T* probs, std::int64_t seq_len, std::int64_t heads, bool causal,
                             MatrixView<T, Host> dqkv, bool accumulate) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "GEMM attention is fp32 or fp64");
  const std::int64_t cdim = qkv.cols / 3, d = cdim / heads, batches = qkv.rows / seq_len, tl = seq_len;
  const std::int64_t ld = qkv.ld, ldg = dqkv.ld, tiles = (tl + kAttentionTile - 1) / kAttentionTile;
  const std::int64_t tasks = batches * heads, tile_rows = std::min(tl, kAttentionTile);
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  const std::int64_t slots = std::min<std::int64_t>(ctx.thread_count(), tasks);
  std::vector<T> scratch(static_cast<std::size_t>(slots * tile_rows * tl));  // dP, then dS, per slot
  auto run = [&](std::int64_t bh, T* dp) {
    const std::int64_t b = bh / heads, h = bh % heads;
    const T* q = qkv.data + b * tl * ld + h * d;
    const T* k = q + cdim;
    const T* v = q + 2 * cdim;
    T* dq = dqkv.data + b * tl * ldg + h * d;
    T* dk = dq + cdim;
    T* dv = dq + 2 * cdim;
    for (std::int64_t tile = tiles - 1; tile >= 0; --tile) {
      const std::int64_t i0 = tile * kAttentionTile, m = std::min(kAttentionTile, tl - i0), nk = causal ? i0 + m : tl;
      const T* p = probs + (bh * tl + i0) * tl;
      const T* go = dout.data + (b * tl + i0) * dout.ld + h * d;
      const T beta_kv = (tile == tiles - 1 && !accumulate) ? T(0) : T(1);
      // dV[0:nk] (+)= P^T dO
      detail::host_blas_gemm<T>(Op::T, Op::N, {nk, d, m}, T(1), p, tl, go, dout.ld, beta_kv, dv, ldg);
      // dP = dO V[0:nk]^T, then dS = scale P (dP - rowsum(P dP)) in place
      detail::host_blas_gemm<T>(Op::N, Op::T, {m, nk, d}, T(1), go, dout.ld, v, ld, T(0), dp, nk);
      for (std::int64_t r = 0; r < m; ++r) {
        const T* pr = p + r * tl;
        T* ds = dp + r * nk;
        const std::int64_t n = causal ? i0 + r + 1 : tl;
        const T dot = host_lane_sum<T>(n, [&](std::int64_t j) { return pr[j] * ds[j]; });
        for (std::int64_t j = 0; j < n; ++j) ds[j] = pr[j] * (ds[j] - dot) * scale;
        for (std::int64_t j = n; j < nk; ++j) ds[j] = 0;
      }
      // dQ[i0:i0+m] (+)= dS K[0:nk];  dK[0:nk] (+)= dS^T Q[i0:i0+m]
      detail::host_blas_gemm<T>(Op::N, Op::N, {m, d, nk}, T(1), dp, nk, k, ld, accumulate ? T(1) : T(0), dq + i0 * ldg, ldg);
      detail::host_blas_gemm<T>(Op::T, Op::N, {nk, d, m}, T(1), dp, nk, q + i0 * ld, ld, beta_kv, dk, ldg);
    }
  };
  ctx.parallel_for(slots, [&](std::int64_t sl) {
    detail::attention_blas_single_threaded();
    std::int64_t begin = 0, end = 0;
    detail::slot_range(tasks, slots, sl, begin, end);
    for (std::int64_t bh = begin; bh < end; ++bh) run(bh, scratch.data() + sl * tile_rows * tl);
  });
}

// The Host entry points: GEMM attention for fp32 and fp64, the reference otherwise.
template <class T>
void attention_forward(const Host& ctx, MatrixView<const T, Host> qkv, std::int64_t seq_len, std::int64_t heads,
                       bool causal, compute_t<T>* probs, MatrixView<T, Host> out) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    attention_forward_gemm<T>(ctx, qkv, seq_len, heads, causal, probs, out);
  } else {
    attention_forward_reference<T>(ctx, qkv, seq_len, heads, causal, probs, out);
  }
}

template <class T>
void attention_backward(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> qkv,
                        const compute_t<T>* probs, std::int64_t seq_len, std::int64_t heads, bool causal,
                        MatrixView<T, Host> dqkv, bool accumulate) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    attention_backward_gemm<T>(ctx, dout, qkv, probs, seq_len, heads, causal, dqkv, accumulate);
  } else {
    attention_backward_reference<T>(ctx, dout, qkv, probs, seq_len, heads, causal, dqkv, accumulate);
  }
}

template <class B, class T, class G = T>
struct AttentionOp {
  static constexpr const char* kName = "attention";  // its profiling range
  using V = Var<T, B>;
  struct Ctx {
    V qkv, out;
    std::int64_t seq_len, heads;
    bool causal;
    compute_t<T>* probs;
  };

  static V forward(Tape<B, T, G>& tape, V qkv, std::int64_t seq_len, std::int64_t heads, bool causal) {
    const auto range = tape.range(kName);
    MDLM_CHECK(qkv.cols() % (3 * heads) == 0, "attention: ", qkv.cols(), " columns are not 3 x ", heads, " heads");
    MDLM_CHECK(seq_len > 0 && qkv.rows() % seq_len == 0, "attention: ", qkv.rows(), " rows are not whole sequences of ",
               seq_len);
    const std::int64_t batches = qkv.rows() / seq_len;
    V out = tape.new_var(qkv.rows(), qkv.cols() / 3);
    compute_t<T>* probs = nullptr;
    if (tape.recording() || seq_len > kAttentionRowScratchMax) {
      probs = tape.template scratch<compute_t<T>>(Shape{batches, heads, seq_len, seq_len}).data;
    }
    attention_forward(tape.backend(), MatrixView<const T, B>(qkv.value), seq_len, heads, causal, probs, out.value);
    tape.template record<AttentionOp>(Ctx{qkv, out, seq_len, heads, causal, probs});
    return out;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dout = tape.grad_out(ctx.out);
    auto dqkv = tape.grad_in(ctx.qkv);
    if (!dqkv.needed) return;
    attention_backward(tape.backend(), MatrixView<const T, B>(dout), MatrixView<const T, B>(ctx.qkv.value), ctx.probs,
                       ctx.seq_len, ctx.heads, ctx.causal, dqkv.grad, dqkv.accumulate);
  }
};

}  // namespace mdlm
