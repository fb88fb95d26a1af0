// CUDA training step: forward + SUBS loss + backward of the `small` preset (12 x 768 x 12
// heads) at the two anchor shapes of issue 17, bf16 activations with fp32 parameter gradients:
//   OWT  B = 32,  T = 1024, V = 50258 (the paper's OpenWebText model)
//   LM1B B = 256, T = 128,  V = 30522 (BERT's vocabulary)
// Counters: tokens/s, MFU (model FLOPs with the full head over the H100/H200 dense bf16 peak
// of 989.4 TFLOP/s), MFU_exec (FLOPs executed: the head on the masked rows), the device memory
// held after the steps (arenas keep their peak size, so this is the step's peak, weights and
// gradients included) and, beside them, the PyTorch anchors measured on one H100 (issue 17):
// vs_eager and vs_compiled are tokens/s over PyTorch eager's and torch.compile's tokens/s.
// Milliseconds per step are Google Benchmark's time column (whole_step_*: ms_per_step; its time
// column is 10 steps).
//   build/bench/mdlm_bench_train_step_cuda [--benchmark_filter=...]
#include <cstdio>

#include "cuda_main.hpp"
#include "mdlm/cuda.cuh"
#include "train_step.hpp"

namespace {

struct Anchor {
  double eager, compiled;  // PyTorch tokens/s on one H100
};

void run(benchmark::State& state, const char* preset, std::int64_t vocab, std::int64_t batch, std::int64_t seq,
         bool trim_head, Anchor anchor) {
  std::size_t free0 = 0, total = 0;
  MDLM_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
  {
    mdlm::Cuda ctx;
    mdlm::bench::train_step<mdlm::Cuda, mdlm::bf16, float>(state, ctx, mdlm::DiTConfig::preset(preset, vocab), batch, seq,
                                                            mdlm::bench::kH100PeakTflops, trim_head,
                                                            [&] { ctx.synchronize(); });
    std::size_t free1 = 0;
    MDLM_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
    state.counters["mem_GiB"] = static_cast<double>(free0 - free1) / (1u << 30);
  }
  const double tokens = state.counters["tokens"].value;  // the total; the rate counters divide by the time
  state.counters["vs_eager"] = benchmark::Counter(tokens / anchor.eager, benchmark::Counter::kIsRate);
  state.counters["vs_compiled"] = benchmark::Counter(tokens / anchor.compiled, benchmark::Counter::kIsRate);
}

// The whole optimizer step (bench/train_step.hpp whole_step): with AdamW and the EMA, the status
// read every 10 steps, each step a captured CUDA graph (graphs) or eager.
void run_whole(benchmark::State& state, const char* preset, std::int64_t vocab, std::int64_t batch, std::int64_t seq,
               bool graphs, Anchor anchor) {
  {
    mdlm::Cuda ctx;
    mdlm::bench::whole_step<mdlm::Cuda, mdlm::bf16, float>(state, ctx, mdlm::DiTConfig::preset(preset, vocab), batch, seq,
                                                            mdlm::bench::kH100PeakTflops, graphs, [&] { ctx.synchronize(); });
  }
  const double tokens = state.counters["tokens"].value;
  state.counters["vs_eager"] = benchmark::Counter(tokens / anchor.eager, benchmark::Counter::kIsRate);
  state.counters["vs_compiled"] = benchmark::Counter(tokens / anchor.compiled, benchmark::Counter::kIsRate);
}

constexpr Anchor kOwt{184.9e3, 282.7e3}, kLm1b{225e3, 374e3};

}  // namespace

BENCHMARK_CAPTURE(run, owt_small_B32_T1024_trimmed_head, "small", 50258, 32, 1024, true, kOwt)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run, lm1b_small_B256_T128_trimmed_head, "small", 30522, 256, 128, true, kLm1b)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run, owt_small_B32_T1024_full_head, "small", 50258, 32, 1024, false, kOwt)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run, small_B8_T256_trimmed_head, "small", 50258, 8, 256, true, kOwt)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_CAPTURE(run_whole, whole_step_owt_small_B32_T1024_graph, "small", 50258, 32, 1024, true, kOwt)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run_whole, whole_step_owt_small_B32_T1024_eager, "small", 50258, 32, 1024, false, kOwt)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run_whole, whole_step_lm1b_small_B256_T128_graph, "small", 30522, 256, 128, true, kLm1b)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);
BENCHMARK_CAPTURE(run_whole, whole_step_lm1b_small_B256_T128_eager, "small", 30522, 256, 128, false, kLm1b)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);

int main(int argc, char** argv) { return run_cuda_benchmarks(argc, argv); }
