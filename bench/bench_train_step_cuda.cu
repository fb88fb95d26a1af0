// CUDA training step: forward + SUBS loss + backward of the `small` preset (12 x 768 x 12
// heads, V = 50258) at B = 32, T = 1024, bf16 activations with fp32 parameter gradients,
// reporting tokens/s and MFU (peak 989.4 TFLOP/s, H100/H200 dense bf16). Attention is the
// materialized reference kernel in this release, so expect it to dominate.
//   build/bench/mdlm_bench_train_step_cuda [--benchmark_filter=...]
#include <cstdio>

#include "cuda_main.hpp"
#include "mdlm/cuda.cuh"
#include "train_step.hpp"

namespace {

void run(benchmark::State& state, const char* preset, std::int64_t batch, std::int64_t seq, bool trim_head) {
  mdlm::Cuda ctx;
  mdlm::bench::train_step<mdlm::Cuda, mdlm::bf16, float>(state, ctx, mdlm::DiTConfig::preset(preset, 50258), batch, seq,
                                                          mdlm::bench::kH100PeakTflops, trim_head,
                                                          [&] { ctx.synchronize(); });
}

}  // namespace

BENCHMARK_CAPTURE(run, small_B32_T1024_trimmed_head, "small", 32, 1024, true)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run, small_B32_T1024_full_head, "small", 32, 1024, false)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run, small_B8_T256_trimmed_head, "small", 8, 256, true)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) { return run_cuda_benchmarks(argc, argv); }
