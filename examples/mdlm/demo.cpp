// mdlm demo: Philox draws, bf16 rounding, and a Linear-layer GEMM with a fused GELU epilogue
// on the chosen backend, checked against the Host fp64 result, with its throughput.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "cli.hpp"

namespace mdlm::cli {
namespace {

CommandSpec demo_spec() {
  return {"",
          {{"--backend", default_backend(), "host or cuda"},
           {"--size", "512", "GEMM size N"},
           {"--seed", "0", "seed of every random draw"}}};
}

template <class T>
std::vector<T> demo_uniform_pm1(Philox rng, std::uint32_t stream, std::size_t n) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(2.0 * rng.uniform_double(Purpose::Test, stream, i) - 1.0);
  return v;
}

int run_demo(const CommandLine& cl) {
  const Args args = cl.flags(demo_spec());
  const std::string backend = args.str("--backend");
  MDLM_CHECK(backend == "host" || backend == "cuda", "unknown backend '", backend, "' (expected host or cuda)");
  const std::int64_t n = args.integer("--size");
  MDLM_CHECK(n > 0 && n <= 16384, "--size ", n, " out of range [1, 16384]");
  Philox rng{static_cast<std::uint64_t>(args.integer("--seed"))};

  std::printf("mdlm %s demo (backend %s)\n\n", kVersion, backend.c_str());
  std::printf("Philox4x32-10 uniforms (seed %llu, purpose Test, step 0):\n ",
              static_cast<unsigned long long>(rng.seed));
  for (std::uint64_t i = 0; i < 6; ++i) std::printf(" %.17f", rng.uniform_double(Purpose::Test, 0, i));
  std::printf("\n\nbf16 round-to-nearest-even:\n");
  for (float f : {1.00390625f, 1.01171875f, 3.14159265f, 1e-40f, 3.4e38f}) {
    bf16 h(f);
    std::printf("  %-14.9g -> 0x%04x = %.9g\n", static_cast<double>(f), h.bits, static_cast<double>(h.to_float()));
  }

  // A Linear layer with GELU: y = gelu(x W^T + b), x (n, n), W (n, n).
  auto x = demo_uniform_pm1<float>(rng, 1, static_cast<std::size_t>(n * n));
  auto w = demo_uniform_pm1<float>(rng, 2, static_cast<std::size_t>(n * n));
  auto bias = demo_uniform_pm1<float>(rng, 3, static_cast<std::size_t>(n));
  std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), bd(bias.begin(), bias.end());
  std::vector<double> ref(static_cast<std::size_t>(n * n)), ref_aux(ref.size());
  Host host = cl.host();
  gemm(host, Op::N, MatrixView<const double, Host>(xd.data(), n, n), Op::T,
       MatrixView<const double, Host>(wd.data(), n, n), MatrixView<double, Host>(ref.data(), n, n),
       GemmEpilogue<double, Host>::gelu_aux_bias(bd.data(), MatrixView<double, Host>(ref_aux.data(), n, n)));

  std::vector<float> y(ref.size()), aux(ref.size());
  const int reps = 5;
  double seconds = 0;
  auto time_it = [&](auto&& run, auto&& sync) {
    run();
    sync();
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) run();
    sync();
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  if (backend == "host") {
    time_it(
        [&] {
          gemm(host, Op::N, MatrixView<const float, Host>(x.data(), n, n), Op::T,
               MatrixView<const float, Host>(w.data(), n, n), MatrixView<float, Host>(y.data(), n, n),
               GemmEpilogue<float, Host>::gelu_aux_bias(bias.data(), MatrixView<float, Host>(aux.data(), n, n)));
        },
        [] {});
  } else {
#if MDLM_WITH_CUDA
    MDLM_CHECK(Cuda::device_count() > 0, "--backend cuda: no CUDA device is present");
    Cuda ctx;
    auto dx = to_device(ctx, x), dw = to_device(ctx, w), db = to_device(ctx, bias);
    DeviceBuffer<float> dy(Shape{n, n}), daux(Shape{n, n});
    time_it(
        [&] {
          gemm(ctx, Op::N, MatrixView<const float, Cuda>(dx.data(), n, n), Op::T,
               MatrixView<const float, Cuda>(dw.data(), n, n), dy.matrix(),
               GemmEpilogue<float, Cuda>::gelu_aux_bias(db.data(), daux.matrix()));
        },
        [&] { ctx.synchronize(); });
    y = to_host(ctx, dy.view());
#else
    MDLM_FAIL("--backend cuda: this mdlm was built without CUDA (configure with -DMDLM_CUDA=ON)");
#endif
  }
  double err = 0, scale = 1e-30;
  for (std::size_t i = 0; i < y.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(y[i]) - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  const double gflops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / seconds / 1e9;
  std::printf("\nLinear + GELU, fp32, %lldx%lld by %lldx%lld on %s: %.3f ms, %.1f GFLOP/s\n",
              static_cast<long long>(n), static_cast<long long>(n), static_cast<long long>(n),
              static_cast<long long>(n), backend.c_str(), seconds * 1e3, gflops);
  std::printf("max error vs Host fp64: %.3g (relative to max |y| = %.3g)\n", err / scale, scale);
  const bool ok = err / scale < 1e-5;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}

}  // namespace

Command demo_command() { return {"demo", {demo_spec()}, run_demo}; }

}  // namespace mdlm::cli
