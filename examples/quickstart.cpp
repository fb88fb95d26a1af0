// Quickstart: the pieces that exist today, used the way later components use them.
//   - a Host backend context and a per-step arena for activations,
//   - a Linear layer with GELU as one GEMM with a fused epilogue,
//   - reproducible randomness from Philox keyed by (seed, purpose, step, index),
//   - bf16 storage with round-to-nearest-even.
#include <mdlm/mdlm.hpp>

#include <cstdio>

int main() {
  using namespace mdlm;
  Host host;
  Arena<Host> arena(1 << 20);  // activations for one step; reset() at the next

  const std::int64_t tokens = 4, d_in = 8, d_out = 16;
  Philox rng{42};
  HostBuffer<float> w(Shape{d_out, d_in}), b(Shape{d_out});  // PyTorch layout: W is [out, in]
  for (std::int64_t i = 0; i < w.numel(); ++i) w.data()[i] = rng.uniform_float(Purpose::Init, 0, static_cast<std::uint64_t>(i)) - 0.5f;
  for (std::int64_t i = 0; i < b.numel(); ++i) b.data()[i] = 0.01f * static_cast<float>(i);

  for (std::uint32_t step = 0; step < 3; ++step) {
    arena.reset();
    auto x = arena.alloc<float>(Shape{tokens, d_in});     // (T, C_in)
    auto pre = arena.alloc<float>(Shape{tokens, d_out});  // (T, C_out) saved for backward
    auto y = arena.alloc<float>(Shape{tokens, d_out});    // (T, C_out)
    for (std::int64_t i = 0; i < x.numel(); ++i) x.data[i] = rng.uniform_float(Purpose::Test, step, static_cast<std::uint64_t>(i));
    // y = gelu(x W^T + b), pre = x W^T + b: one GEMM with the GELU_AUX_BIAS epilogue.
    gemm(host, Op::N, MatrixView<const float, Host>(x), Op::T, MatrixView<const float, Host>(w.matrix()),
         MatrixView<float, Host>(y), GemmEpilogue<float, Host>::gelu_aux_bias(b.data(), MatrixView<float, Host>(pre)));
    std::printf("step %u: y[0, 0:4] = %.5f %.5f %.5f %.5f (bf16: 0x%04x), arena used %zu bytes\n", step,
                static_cast<double>(y.data[0]), static_cast<double>(y.data[1]), static_cast<double>(y.data[2]),
                static_cast<double>(y.data[3]), bf16(y.data[0]).bits, arena.used());
  }
  return 0;
}
