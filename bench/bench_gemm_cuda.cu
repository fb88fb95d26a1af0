// CUDA GEMM throughput for the Linear layers of the `small` DiT (d = 768) at B = 32, T = 1024
// (M = 32768 tokens), bf16 in, fp32 accumulation, with the epilogues training uses.
// Reports TFLOP/s and the fraction of the H100/H200 dense bf16 peak (989.4 TFLOP/s).
// The output head runs at V = 50258 (unpadded) and 50304 (padded to 128) to show why the
// library pads the vocabulary dimension.
//
//   build/bench/mdlm_bench_gemm_cuda
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdint>

#include "cuda_main.hpp"
#include "mdlm/cuda.cuh"

namespace {

using mdlm::bf16;
using mdlm::Cuda;
using mdlm::Epilogue;
using mdlm::Op;
constexpr double kPeakTflops = 989.4;

struct Problem {
  Op op_a, op_b;
  std::int64_t m, n, k;
  Epilogue epilogue;
};

__global__ void fill_kernel(bf16* p, std::int64_t n, std::uint64_t seed) {
  std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) p[i] = bf16(mdlm::Philox{seed}.uniform_float(mdlm::Purpose::Test, 0, static_cast<std::uint64_t>(i)) - 0.5f);
}

void fill(Cuda& ctx, mdlm::DeviceBuffer<bf16>& b, std::uint64_t seed) {
  fill_kernel<<<static_cast<unsigned>((b.numel() + 255) / 256), 256, 0, ctx.stream()>>>(b.data(), b.numel(), seed);
  MDLM_CUDA_CHECK_LAUNCH();
}

void run_problem(benchmark::State& state, Problem p) {
  Cuda ctx;
  const std::int64_t a_rows = p.op_a == Op::N ? p.m : p.k, a_cols = p.op_a == Op::N ? p.k : p.m;
  const std::int64_t b_rows = p.op_b == Op::N ? p.k : p.n, b_cols = p.op_b == Op::N ? p.n : p.k;
  mdlm::DeviceBuffer<bf16> a(mdlm::Shape{a_rows, a_cols}), b(mdlm::Shape{b_rows, b_cols}),
      c(mdlm::Shape{p.m, p.n}), aux(mdlm::Shape{p.m, p.n}), bias(mdlm::Shape{std::max(p.m, p.n)});
  fill(ctx, a, 1);
  fill(ctx, b, 2);
  fill(ctx, aux, 3);
  fill(ctx, bias, 4);
  mdlm::GemmEpilogue<bf16, Cuda> epi;
  epi.kind = p.epilogue;
  epi.bias = bias.data();
  epi.aux = aux.matrix();
  epi.bias_grad = bias.data();
  auto call = [&] {
    mdlm::gemm(ctx, p.op_a, mdlm::MatrixView<const bf16, Cuda>(a.matrix()), p.op_b,
               mdlm::MatrixView<const bf16, Cuda>(b.matrix()), c.matrix(), epi);
  };
  call();  // builds and caches the plan
  cudaEvent_t start, stop;
  MDLM_CUDA_CHECK(cudaEventCreate(&start));
  MDLM_CUDA_CHECK(cudaEventCreate(&stop));
  for (auto _ : state) {
    MDLM_CUDA_CHECK(cudaEventRecord(start, ctx.stream()));
    for (int r = 0; r < 10; ++r) call();
    MDLM_CUDA_CHECK(cudaEventRecord(stop, ctx.stream()));
    MDLM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    MDLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3 / 10);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double flops = 2.0 * static_cast<double>(p.m) * static_cast<double>(p.n) * static_cast<double>(p.k);
  const double tflops_per_s = flops * static_cast<double>(state.iterations()) / 1e12;
  state.counters["TFLOP"] = benchmark::Counter(tflops_per_s, benchmark::Counter::kIsRate);
  state.counters["of_peak"] = benchmark::Counter(tflops_per_s / kPeakTflops, benchmark::Counter::kIsRate);
}

constexpr std::int64_t kTokens = 32 * 1024, kD = 768;

}  // namespace

// Forward: y = x W^T (+ epilogue)
BENCHMARK_CAPTURE(run_problem, qkv_fwd, Problem{Op::N, Op::T, kTokens, 3 * kD, kD, Epilogue::None})->UseManualTime();
BENCHMARK_CAPTURE(run_problem, attn_out_fwd, Problem{Op::N, Op::T, kTokens, kD, kD, Epilogue::None})->UseManualTime();
BENCHMARK_CAPTURE(run_problem, mlp_fc_gelu_fwd, Problem{Op::N, Op::T, kTokens, 4 * kD, kD, Epilogue::GeluAuxBias})
    ->UseManualTime();
BENCHMARK_CAPTURE(run_problem, mlp_proj_bias_fwd, Problem{Op::N, Op::T, kTokens, kD, 4 * kD, Epilogue::Bias})
    ->UseManualTime();
BENCHMARK_CAPTURE(run_problem, head_fwd_V50258, Problem{Op::N, Op::T, kTokens, 50258, kD, Epilogue::Bias})
    ->UseManualTime();
BENCHMARK_CAPTURE(run_problem, head_fwd_V50304_padded, Problem{Op::N, Op::T, kTokens, 50304, kD, Epilogue::Bias})
    ->UseManualTime();
// Backward: dX = dY W (with dGELU), dW = dY^T X (with the bias gradient)
BENCHMARK_CAPTURE(run_problem, mlp_fc_dgelu_bwd, Problem{Op::N, Op::N, kTokens, 4 * kD, kD, Epilogue::DGelu})
    ->UseManualTime();
BENCHMARK_CAPTURE(run_problem, mlp_fc_dW_bgrad_bwd, Problem{Op::T, Op::N, 4 * kD, kD, kTokens, Epilogue::BiasGrad})
    ->UseManualTime();

int main(int argc, char** argv) { return run_cuda_benchmarks(argc, argv); }
