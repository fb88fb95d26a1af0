// Host GEMM throughput: the cblas-backed mdlm::gemm against a naive triple loop (the anchor,
// same machine, same shapes). Reports GFLOP per second; the ratio is mdlm / naive.
//
//   build/bench/mdlm_bench_gemm_host [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "mdlm/mdlm.hpp"

namespace {

template <class T>
std::vector<T> filled(std::size_t n, std::uint64_t seed) {
  mdlm::Philox rng{seed};
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(rng.uniform_float(mdlm::Purpose::Test, 0, i) - 0.5f);
  return v;
}

void set_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP"] =
      benchmark::Counter(flops_per_iter * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

// y (n, n) = x (n, n) W^T, as a Linear layer computes it.
template <class T>
void BM_mdlm_gemm(benchmark::State& state) {
  const auto n = state.range(0);
  auto a = filled<T>(static_cast<std::size_t>(n * n), 1), b = filled<T>(static_cast<std::size_t>(n * n), 2);
  std::vector<T> c(static_cast<std::size_t>(n * n));
  mdlm::Host host;
  for (auto _ : state) {
    mdlm::gemm(host, mdlm::Op::N, mdlm::MatrixView<const T, mdlm::Host>(a.data(), n, n), mdlm::Op::T,
               mdlm::MatrixView<const T, mdlm::Host>(b.data(), n, n), mdlm::MatrixView<T, mdlm::Host>(c.data(), n, n));
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(state, 2.0 * static_cast<double>(n * n * n));
}

// The anchor: a straightforward loop (i, j, p) with the same transposes.
template <class T>
void BM_naive_gemm(benchmark::State& state) {
  const auto n = state.range(0);
  auto a = filled<T>(static_cast<std::size_t>(n * n), 1), b = filled<T>(static_cast<std::size_t>(n * n), 2);
  std::vector<T> c(static_cast<std::size_t>(n * n));
  for (auto _ : state) {
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        T s = 0;
        for (std::int64_t p = 0; p < n; ++p) s += a[i * n + p] * b[j * n + p];
        c[i * n + j] = s;
      }
    benchmark::DoNotOptimize(c.data());
  }
  set_flops(state, 2.0 * static_cast<double>(n * n * n));
}

}  // namespace

BENCHMARK(BM_mdlm_gemm<float>)->Arg(128)->Arg(512)->Arg(1024)->UseRealTime();
BENCHMARK(BM_naive_gemm<float>)->Arg(128)->Arg(512)->UseRealTime();
BENCHMARK(BM_mdlm_gemm<double>)->Arg(128)->Arg(512)->UseRealTime();
BENCHMARK(BM_naive_gemm<double>)->Arg(128)->Arg(512)->UseRealTime();

BENCHMARK_MAIN();
