#pragma once
// SiLU y = x * sigmoid(x);  dy/dx = s (1 + x (1 - s)).  x, y (N, C)

#include <cmath>
#include <cstdint>

#include "mdlm/autograd/tape.hpp"
#include "mdlm/backend/host.hpp"

namespace mdlm {

template <class T>
void silu_forward(const Host& ctx, MatrixView<const T, Host> x, MatrixView<T, Host> y) {
  using C = compute_t<T>;
  ctx.parallel_for(x.rows, [&](std::int64_t r) {
    for (std::int64_t c = 0; c < x.cols; ++c) {
      const C v = x.data[r * x.ld + c];
      y.data[r * y.ld + c] = static_cast<T>(v / (C(1) + std::exp(-v)));
    }
  });
}

template <class T>
void silu_backward(const Host& ctx, MatrixView<const T, Host> dy, MatrixView<const T, Host> x, MatrixView<T, Host> dx,
                   bool accumulate) {
  using C = compute_t<T>;
  ctx.parallel_for(x.rows, [&](std::int64_t r) {
    for (std::int64_t c = 0; c < x.cols; ++c) {
      const C v = x.data[r * x.ld + c];
      const C s = C(1) / (C(1) + std::exp(-v));
      const C g = C(dy.data[r * dy.ld + c]) * s * (C(1) + v * (C(1) - s));
      T& o = dx.data[r * dx.ld + c];
      o = accumulate ? static_cast<T>(o + g) : static_cast<T>(g);
    }
  });
}

template <class B, class T, class G = T>
struct SiluOp {
  static constexpr const char* kName = "silu";  // its profiling range
  using V = Var<T, B>;
  struct Ctx {
    V x, y;
  };
  static V forward(Tape<B, T, G>& tape, V x) {
    const auto range = tape.range(kName);
    V y = tape.new_var(x.rows(), x.cols());
    silu_forward(tape.backend(), MatrixView<const T, B>(x.value), y.value);
    tape.template record<SiluOp>(Ctx{x, y});
    return y;
  }
  static void backward(Tape<B, T, G>& tape, const Ctx& ctx) {
    MatrixView<T, B> dy = tape.grad_out(ctx.y);
    auto dx = tape.grad_in(ctx.x);
    if (!dx.needed) return;
    silu_backward(tape.backend(), MatrixView<const T, B>(dy), MatrixView<const T, B>(ctx.x.value), dx.grad, dx.accumulate);
  }
};

}  // namespace mdlm
