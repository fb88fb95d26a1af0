// CUDA flash attention throughput (ops/cuda/flash_attention.cuh), bf16, bidirectional, H = 12
// heads of D = 64, at the small preset's shape (B = 32, T = 1024) and at the LM1B shape
// (B = 256, T = 128). FLOPs counted the usual way: 4 B H T^2 D forward, 2.5 times that backward
// (forward + backward = 3.5 times the forward). Beside them, the PyTorch anchor measured on one
// H100 at the small preset's shape (SDPA flash: forward 427 TFLOP/s, forward + backward 314).
//
//   build/bench/mdlm_bench_attention_cuda
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_main.hpp"
#include "mdlm/cuda.cuh"

namespace {

using mdlm::bf16;
using mdlm::Cuda;
constexpr std::int64_t kHeads = 12, kHeadDim = 64;
constexpr double kTorchForwardTflops = 427, kTorchForwardBackwardTflops = 314;  // H100, B=32 T=1024

std::vector<bf16> wave(std::int64_t n, float freq) {
  std::vector<bf16> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = bf16(std::sin(freq * static_cast<float>(i)));
  return v;
}

// Times `iters` calls of step() per benchmark iteration with CUDA events.
template <class Step>
void time_on_stream(benchmark::State& state, Cuda& ctx, Step&& step) {
  constexpr int kRepeats = 10;
  step();  // warm-up
  cudaEvent_t start, stop;
  MDLM_CUDA_CHECK(cudaEventCreate(&start));
  MDLM_CUDA_CHECK(cudaEventCreate(&stop));
  for (auto _ : state) {
    MDLM_CUDA_CHECK(cudaEventRecord(start, ctx.stream()));
    for (int r = 0; r < kRepeats; ++r) step();
    MDLM_CUDA_CHECK(cudaEventRecord(stop, ctx.stream()));
    MDLM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    MDLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3 / kRepeats);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

// Arg 0: B, arg 1: T. with_backward: forward (saving the log-sum-exp) then backward.
void run_attention(benchmark::State& state, bool with_backward) {
  const std::int64_t batches = state.range(0), seq = state.range(1), rows = batches * seq, cdim = kHeads * kHeadDim;
  Cuda ctx;
  auto qkv = mdlm::upload(ctx, wave(rows * 3 * cdim, 0.37f));
  auto dout = mdlm::upload(ctx, wave(rows * cdim, 0.11f));
  mdlm::DeviceBuffer<bf16> out(mdlm::Shape{rows, cdim}), dqkv(mdlm::Shape{rows, 3 * cdim});
  mdlm::DeviceBuffer<float> lse(mdlm::Shape{batches, kHeads, seq}), delta(mdlm::Shape{batches, kHeads, seq});
  const mdlm::MatrixView<const bf16, Cuda> qkv_v(qkv.data(), rows, 3 * cdim), dout_v(dout.data(), rows, cdim);
  const mdlm::MatrixView<bf16, Cuda> out_v(out.data(), rows, cdim), dqkv_v(dqkv.data(), rows, 3 * cdim);
  time_on_stream(state, ctx, [&] {
    mdlm::flash_attention_forward<bf16>(ctx, qkv_v, seq, kHeads, false, lse.data(), out_v);
    if (with_backward)
      mdlm::flash_attention_backward<bf16>(ctx, dout_v, qkv_v, mdlm::MatrixView<const bf16, Cuda>(out_v), lse.data(),
                                           delta.data(), seq, kHeads, false, dqkv_v, false);
  });
  const double forward_flops = 4.0 * static_cast<double>(batches * kHeads) * static_cast<double>(seq * seq) * kHeadDim;
  const double flops = with_backward ? 3.5 * forward_flops : forward_flops;
  state.counters["TFLOP"] = benchmark::Counter(flops * static_cast<double>(state.iterations()) / 1e12,
                                               benchmark::Counter::kIsRate);
  if (batches == 32 && seq == 1024) {
    state.counters["torch_sdpa_TFLOP"] = with_backward ? kTorchForwardBackwardTflops : kTorchForwardTflops;
    state.SetLabel("PyTorch SDPA flash anchor (H100) beside");
  } else {
    state.SetLabel("no PyTorch anchor at this shape");
  }
}

void BM_flash_attention_forward(benchmark::State& state) { run_attention(state, false); }
void BM_flash_attention_forward_backward(benchmark::State& state) { run_attention(state, true); }

}  // namespace

BENCHMARK(BM_flash_attention_forward)->Args({32, 1024})->Args({256, 128})->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_flash_attention_forward_backward)
    ->Args({32, 1024})
    ->Args({256, 128})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) { return run_cuda_benchmarks(argc, argv); }
