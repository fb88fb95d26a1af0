// Host GEMM throughput. Two comparisons, each against an anchor run in the same process:
//   - mdlm::gemm on n x n x n against a naive triple loop;
//   - the library's own GEMM shapes (the main job's model, the tiny preset's layers and output
//     head in its three orientations, the single-threaded attention tiles): mdlm::gemm (fp32:
//     the Host BLAS of this build, oneDNN by default) against cblas_sgemm of the OpenBLAS it also
//     links (as installed: OPENBLAS_CORETYPE, where the environment sets it, picks its kernels).
// Reports GFLOP per second; the ratios are mdlm / anchor.
//
//   build/bench/mdlm_bench_gemm_host [--benchmark_filter=shape]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include <cblas.h>
#include <omp.h>

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

// The library's fp32 GEMM shapes (row-major, op(A) M x K times op(B) K x N). one_thread: the
// attention tiles, which run as single-threaded BLAS calls, one per task, on every thread.
struct ModelShape {
  const char* name;
  mdlm::Op op_a, op_b;
  std::int64_t m, n, k;
  bool one_thread;
};
constexpr mdlm::Op N = mdlm::Op::N, T = mdlm::Op::T;
constexpr ModelShape kShapes[] = {
    {"main-job qkv (x W^T)", N, T, 2048, 384, 128, false},
    {"main-job mlp.0", N, T, 2048, 512, 128, false},
    {"main-job mlp.2", N, T, 2048, 128, 512, false},
    {"main-job qkv dX (dY W)", N, N, 2048, 128, 384, false},
    {"main-job qkv dW (dY^T X)", T, N, 384, 128, 2048, false},
    {"main-job head, masked rows", N, T, 1024, 260, 128, false},
    {"attention S = Q K^T, 1 thread", N, T, 64, 128, 32, true},
    {"attention O = P V, 1 thread", N, N, 64, 32, 128, true},
    {"tiny qkv", N, T, 256, 1536, 512, false},
    {"tiny mlp.2", N, T, 256, 512, 2048, false},
    {"tiny mlp.0 dW", T, N, 2048, 512, 256, false},
    {"tiny head", N, T, 121, 50258, 512, false},
    {"tiny head dX", N, N, 121, 512, 50258, false},
    {"tiny head dW", T, N, 50258, 512, 121, false},
};

// Runs one shape with `gemm_fn(a, lda, b, ldb, c)`; one_thread shapes run on every OpenMP thread
// at once, each its own product (as the attention tiles do).
template <class Fn>
void run_shape(benchmark::State& state, Fn&& gemm_fn) {
  const ModelShape& s = kShapes[state.range(0)];
  state.SetLabel(s.name);
  const std::int64_t ar = s.op_a == N ? s.m : s.k, ac = s.op_a == N ? s.k : s.m;
  const std::int64_t br = s.op_b == N ? s.k : s.n, bc = s.op_b == N ? s.n : s.k;
  const int copies = s.one_thread ? omp_get_max_threads() : 1;
  std::vector<std::vector<float>> a, b, c;
  for (int i = 0; i < copies; ++i) {
    a.push_back(filled<float>(static_cast<std::size_t>(ar * ac), 1));
    b.push_back(filled<float>(static_cast<std::size_t>(br * bc), 2));
    c.emplace_back(static_cast<std::size_t>(s.m * s.n));
  }
  for (auto _ : state) {
    if (s.one_thread) {
#pragma omp parallel num_threads(copies)
      {
        omp_set_num_threads(1);  // the BLAS inside runs on this thread only, as in attention
        const int t = omp_get_thread_num();
        gemm_fn(s, a[t].data(), ac, b[t].data(), bc, c[t].data());
      }
    } else {
      gemm_fn(s, a[0].data(), ac, b[0].data(), bc, c[0].data());
    }
    benchmark::DoNotOptimize(c[0].data());
  }
  set_flops(state, 2.0 * static_cast<double>(s.m * s.n * s.k) * copies);
}

void BM_shape_mdlm(benchmark::State& state) {
  mdlm::Host host;
  state.counters["onednn"] = std::string(mdlm::host_sgemm_library()) == "onednn" ? 1 : 0;
  run_shape(state, [&](const ModelShape& s, const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* c) {
    const std::int64_t ar = s.op_a == N ? s.m : s.k, ac = s.op_a == N ? s.k : s.m;
    const std::int64_t br = s.op_b == N ? s.k : s.n, bc = s.op_b == N ? s.n : s.k;
    mdlm::gemm(host, s.op_a, mdlm::MatrixView<const float, mdlm::Host>(a, ar, ac, lda), s.op_b,
               mdlm::MatrixView<const float, mdlm::Host>(b, br, bc, ldb), mdlm::MatrixView<float, mdlm::Host>(c, s.m, s.n));
  });
}

void BM_shape_openblas(benchmark::State& state) {
  run_shape(state, [](const ModelShape& s, const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* c) {
    auto tr = [](mdlm::Op op) { return op == N ? CblasNoTrans : CblasTrans; };
    cblas_sgemm(CblasRowMajor, tr(s.op_a), tr(s.op_b), static_cast<blasint>(s.m), static_cast<blasint>(s.n),
                static_cast<blasint>(s.k), 1.0f, a, static_cast<blasint>(lda), b, static_cast<blasint>(ldb), 0.0f, c,
                static_cast<blasint>(s.n));
  });
}

}  // namespace

BENCHMARK(BM_shape_mdlm)->DenseRange(0, std::size(kShapes) - 1)->UseRealTime()->MinTime(0.3);
BENCHMARK(BM_shape_openblas)->DenseRange(0, std::size(kShapes) - 1)->UseRealTime()->MinTime(0.3);
BENCHMARK(BM_mdlm_gemm<float>)->Arg(128)->Arg(512)->Arg(1024)->UseRealTime();
BENCHMARK(BM_naive_gemm<float>)->Arg(128)->Arg(512)->UseRealTime();
BENCHMARK(BM_mdlm_gemm<double>)->Arg(128)->Arg(512)->UseRealTime();
BENCHMARK(BM_naive_gemm<double>)->Arg(128)->Arg(512)->UseRealTime();

#include "host_bench_main.hpp"
