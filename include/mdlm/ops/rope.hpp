#pragma once
// Rotary position embedding (rotate-half, GPT-NeoX / flash-attn non-interleaved layout) on the
// q and k parts of a fused qkv tensor; v is copied through.
//   qkv (B*T, 3C) = [Q | K | V], each head-major (H heads of D = C/H); position t = row % T.
//   For i < D/2, theta_i = t * base^(-2i/D):
//     q'[i]       = q[i] cos - q[i + D/2] sin
//     q'[i + D/2] = q[i + D/2] cos + q[i] sin
// Backward rotates by -theta.

#include <cmath>
#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

// Rotates q and k of `in` by +theta (sign = +1) or -theta (sign = -1) into `out`; copies v.
template <class T>
void rope_apply(const Host& ctx, MatrixView<const T, Host> in, std::int64_t seq_len, std::int64_t heads, double base,
                int sign, MatrixView<T, Host> out, bool accumulate) {
  using C = compute_t<T>;
  const std::int64_t cdim = in.cols / 3, d = cdim / heads, half = d / 2;
  ctx.parallel_for(in.rows, [&](std::int64_t r) {
    const double t = static_cast<double>(r % seq_len);
    const T* src = in.data + r * in.ld;
    T* dst = out.data + r * out.ld;
    auto put = [&](std::int64_t c, C v) { dst[c] = accumulate ? static_cast<T>(dst[c] + v) : static_cast<T>(v); };
    for (std::int64_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      const C cs = static_cast<C>(std::cos(t * inv_freq));
      const C sn = static_cast<C>(sign * std::sin(t * inv_freq));
      for (std::int64_t part = 0; part < 2; ++part) {     // q, then k
        for (std::int64_t h = 0; h < heads; ++h) {
          const std::int64_t c0 = part * cdim + h * d + i, c1 = c0 + half;
          const C a = src[c0], b = src[c1];
          put(c0, a * cs - b * sn);
          put(c1, b * cs + a * sn);
        }
      }
    }
    for (std::int64_t c = 2 * cdim; c < 3 * cdim; ++c) put(c, src[c]);
  });
}

template <class B, class T, class G = T>
struct RopeOp {
  using V = Var<T, B>;
  struct Ctx {
    V in, out;
    std::int64_t seq_len, heads;
    double base;
  };

  static V forward(Tape<B, T, G>& tape, V qkv, std::int64_t seq_len, std::int64_t heads, double base) {
    MDLM_CHECK(qkv.cols() % (3 * heads) == 0, "rope: ", qkv.cols(), " columns are not 3 x ", heads, " heads");
    MDLM_CHECK((qkv.cols() / 3 / heads) % 2 == 0, "rope: head dimension ", qkv.cols() / 3 / heads, " must be even");
    V out = tape.new_var(qkv.rows(), qkv.cols());
    rope_apply(tape.backend(), MatrixView<const T, B>(qkv.value), seq_len, heads, base, +1, out.value, false);
    tape.template record<RopeOp>(Ctx{qkv, out, seq_len, heads, base});
    return out;
  }

  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dout = tape.grad_out(ctx.out);
    auto din = tape.grad_in(ctx.in);
    if (!din.needed) return;
    rope_apply(tape.backend(), MatrixView<const T, B>(dout), ctx.seq_len, ctx.heads, ctx.base, -1, din.grad,
               din.accumulate);
  }
};

}  // namespace mdlm
