#pragma once
// main() of the Host benchmarks: Google Benchmark's, after the one process-wide setting the
// `mdlm` program makes too (mdlm::host_retain_freed_memory, backend/host.hpp), so a benchmark
// measures what the program runs.
#include <benchmark/benchmark.h>

#include "mdlm/backend/host.hpp"

int main(int argc, char** argv) {
  mdlm::host_retain_freed_memory();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
