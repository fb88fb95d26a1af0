#pragma once
// Multi-head scaled dot-product attention, bidirectional or causal, with the probabilities
// materialized (the reference implementation; a flash version is a later performance step).
//   qkv (B*T, 3C) = [Q | K | V] head-major (H heads of D = C/H), out (B*T, C) head-major.
//   S = Q K^T / sqrt(D) (+ causal mask), P = softmax_rows(S), out = P V.   P saved: (B, H, T, T)
// Backward: dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(P * dP));  dQ = dS K / sqrt(D);
//           dK = dS^T Q / sqrt(D).

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

// Inference (tape not recording) keeps no probabilities: each query row's scores live in
// per-row scratch (on CUDA, shared memory: up to this sequence length), so the (B, H, T, T)
// tensor is neither written nor allocated.
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

// probs: (B, H, T, T) saved for backward, or nullptr (inference).
template <class T>
void attention_forward(const Host& ctx, MatrixView<const T, Host> qkv, std::int64_t seq_len, std::int64_t heads,
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

// dqkv (B*T, 3C) written (or added when accumulate).
template <class T>
void attention_backward(const Host& ctx, MatrixView<const T, Host> dout, MatrixView<const T, Host> qkv,
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

template <class B, class T, class G = T>
struct AttentionOp {
  using V = Var<T, B>;
  struct Ctx {
    V qkv, out;
    std::int64_t seq_len, heads;
    bool causal;
    compute_t<T>* probs;
  };

  static V forward(Tape<B, T, G>& tape, V qkv, std::int64_t seq_len, std::int64_t heads, bool causal) {
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
