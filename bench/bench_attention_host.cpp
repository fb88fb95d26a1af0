// Host attention, fp32, bidirectional: the materialized GEMM path the models use on the Host
// (attention_forward_gemm / attention_backward_gemm, probabilities saved) against the flash twin
// (flash_attention_forward / flash_attention_backward, log-sum-exp saved), forward and backward
// separately, at the main job's shape (B=16, T=128, H=4, D=32) and the tiny preset's (B=2,
// T=128, H=8, D=64). This is the measurement behind ModelAttentionOp's Host choice.
//
//   build/bench/mdlm_bench_attention_host [--benchmark_filter=main_job]
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "mdlm/mdlm.hpp"

namespace {

enum class Algorithm { gemm, flash };

// Args: B, T, H, D; one thread (1) or all (0).
template <Algorithm A, bool Backward>
void BM_attention(benchmark::State& state) {
  const std::int64_t batches = state.range(0), seq = state.range(1), heads = state.range(2), d = state.range(3);
  const std::int64_t rows = batches * seq, cdim = heads * d;
  mdlm::Host host;
  if (state.range(4) != 0) host.threads = 1;
  std::vector<float> qkv(static_cast<std::size_t>(rows * 3 * cdim)), dout(static_cast<std::size_t>(rows * cdim));
  for (std::size_t i = 0; i < qkv.size(); ++i) qkv[i] = std::sin(0.37f * static_cast<float>(i));
  for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = std::cos(0.11f * static_cast<float>(i));
  std::vector<float> out(dout.size()), dqkv(qkv.size()), probs, lse, delta;
  if (A == Algorithm::gemm) {
    probs.resize(static_cast<std::size_t>(batches * heads * seq * seq));
  } else {
    lse.resize(static_cast<std::size_t>(batches * heads * seq));
    delta.resize(lse.size());
  }
  const mdlm::MatrixView<const float, mdlm::Host> q(qkv.data(), rows, 3 * cdim), go(dout.data(), rows, cdim),
      o(out.data(), rows, cdim);
  const mdlm::MatrixView<float, mdlm::Host> out_v(out.data(), rows, cdim), dqkv_v(dqkv.data(), rows, 3 * cdim);
  auto forward = [&] {
    if constexpr (A == Algorithm::gemm) mdlm::attention_forward_gemm<float>(host, q, seq, heads, false, probs.data(), out_v);
    else mdlm::flash_attention_forward<float>(host, q, seq, heads, false, lse.data(), out_v);
  };
  auto backward = [&] {
    if constexpr (A == Algorithm::gemm)
      mdlm::attention_backward_gemm<float>(host, go, q, probs.data(), seq, heads, false, dqkv_v, false);
    else
      mdlm::flash_attention_backward<float>(host, go, q, o, lse.data(), delta.data(), seq, heads, false, dqkv_v, false);
  };
  forward();
  for (auto _ : state) {
    if constexpr (Backward) backward();
    else forward();
    benchmark::DoNotOptimize(dqkv.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double forward_flops = 4.0 * static_cast<double>(batches * heads) * static_cast<double>(seq * seq) * static_cast<double>(d);
  state.counters["GFLOP"] = benchmark::Counter((Backward ? 2.5 : 1.0) * forward_flops * static_cast<double>(state.iterations()) / 1e9,
                                               benchmark::Counter::kIsRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "T", "H", "D", "one_thread"});
  for (int one_thread : {1, 0}) {
    b->Args({16, 128, 4, 32, one_thread});  // the main job
    b->Args({2, 128, 8, 64, one_thread});   // the tiny preset
  }
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_attention<Algorithm::gemm, false>)->Name("forward/gemm")->Apply(shapes);
BENCHMARK(BM_attention<Algorithm::flash, false>)->Name("forward/flash")->Apply(shapes);
BENCHMARK(BM_attention<Algorithm::gemm, true>)->Name("backward/gemm")->Apply(shapes);
BENCHMARK(BM_attention<Algorithm::flash, true>)->Name("backward/flash")->Apply(shapes);

#include "host_bench_main.hpp"
