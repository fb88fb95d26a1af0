#pragma once
// Rotary position embedding (rotate-half, GPT-NeoX / flash-attn non-interleaved layout) on the
// q and k parts of a fused qkv tensor; v is copied through.
//   qkv (B*T, 3C) = [Q | K | V], each head-major (H heads of D = C/H); position t = row % T.
//   For i < D/2, theta_i = t * base^(-2i/D):
//     q'[i]       = q[i] cos - q[i + D/2] sin
//     q'[i + D/2] = q[i + D/2] cos + q[i] sin
// Backward rotates by -theta.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

// Rotates q and k of `in` by +theta (sign = +1) or -theta (sign = -1) into `out`; copies v.
// The angles' cosines and sines are computed once per call in fp64 (seq_len x D/2 table), then
// each (head, q/k) half-pair is rotated with contiguous, vectorizable loops.
template <class T>
void rope_apply(const Host& ctx, MatrixView<const T, Host> in, std::int64_t seq_len, std::int64_t heads, double base,
                int sign, MatrixView<T, Host> out, bool accumulate) {
  using C = compute_t<T>;
  const std::int64_t cdim = in.cols / 3, d = cdim / heads, half = d / 2;
  const std::int64_t positions = std::min(seq_len, in.rows);
  std::vector<C> table(static_cast<std::size_t>(2 * positions * half));  // per t: cos[half], sin[half]
  ctx.parallel_for(positions, [&](std::int64_t t) {
    C* cs = table.data() + 2 * t * half;
    for (std::int64_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      const double angle = static_cast<double>(t) * inv_freq;
      cs[i] = static_cast<C>(std::cos(angle));
      cs[half + i] = static_cast<C>(sign * std::sin(angle));
    }
  });
  ctx.parallel_for(in.rows, [&](std::int64_t r) {
    const C* cs = table.data() + 2 * (r % seq_len) * half;
    const C* sn = cs + half;
    const T* src = in.data + r * in.ld;
    T* dst = out.data + r * out.ld;
    for (std::int64_t part = 0; part < 2; ++part) {  // q, then k
      for (std::int64_t h = 0; h < heads; ++h) {
        const T* a = src + part * cdim + h * d;
        const T* b = a + half;
        T* oa = dst + part * cdim + h * d;
        T* ob = oa + half;
        if (accumulate) {
          for (std::int64_t i = 0; i < half; ++i) {
            const C ra = C(a[i]) * cs[i] - C(b[i]) * sn[i], rb = C(b[i]) * cs[i] + C(a[i]) * sn[i];
            oa[i] = static_cast<T>(oa[i] + ra);
            ob[i] = static_cast<T>(ob[i] + rb);
          }
        } else {
          for (std::int64_t i = 0; i < half; ++i) {
            const C ra = C(a[i]) * cs[i] - C(b[i]) * sn[i], rb = C(b[i]) * cs[i] + C(a[i]) * sn[i];
            oa[i] = static_cast<T>(ra);
            ob[i] = static_cast<T>(rb);
          }
        }
      }
    }
    const T* v = src + 2 * cdim;
    T* ov = dst + 2 * cdim;
    if (accumulate) {
      for (std::int64_t c = 0; c < cdim; ++c) ov[c] = static_cast<T>(ov[c] + v[c]);
    } else {
      for (std::int64_t c = 0; c < cdim; ++c) ov[c] = v[c];
    }
  });
}

// Compute-type values of the cos/sin table of one call (positions x D/2, each twice): the CUDA
// rope_apply builds it in scratch the caller gives (the tape's); the Host builds its own.
inline std::int64_t rope_table_elements(std::int64_t rows, std::int64_t seq_len, std::int64_t cols, std::int64_t heads) {
  return 2 * std::min(seq_len, rows) * (cols / 3 / heads / 2);
}

// The backend's rope_apply; on a device with the table in the tape's scratch.
template <class B, class T, class G>
void rope_apply_on(Tape<B, T, G>& tape, MatrixView<const T, B> in, std::int64_t seq_len, std::int64_t heads, double base,
                   int sign, MatrixView<T, B> out, bool accumulate) {
  if constexpr (std::is_same_v<B, Host>) {
    rope_apply(tape.backend(), in, seq_len, heads, base, sign, out, accumulate);
  } else {
    const std::int64_t n = std::max<std::int64_t>(1, rope_table_elements(in.rows, seq_len, in.cols, heads));
    rope_apply(tape.backend(), in, seq_len, heads, base, sign, out, accumulate,
               tape.template scratch<compute_t<T>>(Shape{n}).data);
  }
}

template <class B, class T, class G = T>
struct RopeOp {
  static constexpr const char* kName = "rope";  // its profiling range
  using V = Var<T, B>;
  struct Ctx {
    V in, out;
    std::int64_t seq_len, heads;
    double base;
  };

  static V forward(Tape<B, T, G>& tape, V qkv, std::int64_t seq_len, std::int64_t heads, double base) {
    const auto range = tape.range(kName);
    MDLM_CHECK(qkv.cols() % (3 * heads) == 0, "rope: ", qkv.cols(), " columns are not 3 x ", heads, " heads");
    MDLM_CHECK((qkv.cols() / 3 / heads) % 2 == 0, "rope: head dimension ", qkv.cols() / 3 / heads, " must be even");
    V out = tape.new_var(qkv.rows(), qkv.cols());
    rope_apply_on(tape, MatrixView<const T, B>(qkv.value), seq_len, heads, base, +1, out.value, false);
    tape.template record<RopeOp>(Ctx{qkv, out, seq_len, heads, base});
    return out;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dout = tape.grad_out(ctx.out);
    auto din = tape.grad_in(ctx.in);
    if (!din.needed) return;
    rope_apply_on(tape, MatrixView<const T, B>(dout), ctx.seq_len, ctx.heads, ctx.base, -1, din.grad, din.accumulate);
  }
};

}  // namespace mdlm
