#pragma once
// main() of the CUDA benchmark programs: without a GPU they say so and exit 0 (a benchmark is
// not a test; the CUDA tests are what report "skipped").
#include <benchmark/benchmark.h>

#include <cstdio>

#include "mdlm/cuda.cuh"

inline int run_cuda_benchmarks(int argc, char** argv) {
  if (mdlm::Cuda::device_count() == 0) {
    std::printf("no CUDA device: nothing to benchmark\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
