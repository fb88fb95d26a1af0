#!/usr/bin/env bash
# The GPU checks, in one run on the lent machine (after scripts/device-build.sh here):
# CUDA tests, golden fixtures through the CUDA path (fp32, bf16), GEMM, training-step and
# sampler benchmarks. Everything is written to $OUT (default out/device).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/build-device/lib:${LD_LIBRARY_PATH:-}"
B=build-device
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$B/tests/mdlm_tests_cuda > "$OUT/tests_cuda.txt" 2>&1; echo "tests_cuda rc=$?" | tee -a "$OUT/summary.txt"
for f in tests/fixtures/*.safetensors; do
  for dt in f32 bf16; do
    $B/examples/mdlm check-fixture "$f" --backend cuda --dtype $dt > "$OUT/fixture_$(basename "$f" .safetensors)_$dt.json" 2>&1
    echo "check-fixture $(basename "$f") $dt rc=$?" | tee -a "$OUT/summary.txt"
  done
done
timeout 120 $B/bench/mdlm_bench_gemm_cuda --benchmark_min_time=0.2 > "$OUT/bench_gemm.txt" 2>&1
timeout 120 $B/bench/mdlm_bench_sampler_cuda --benchmark_min_time=0.5 > "$OUT/bench_sampler.txt" 2>&1
timeout 240 $B/bench/mdlm_bench_train_step_cuda --benchmark_filter=B8_T256 > "$OUT/bench_train_small.txt" 2>&1
timeout 240 $B/bench/mdlm_bench_train_step_cuda --benchmark_filter=B32_T1024_trimmed --benchmark_min_time=1 > "$OUT/bench_train.txt" 2>&1
tail -n 5 "$OUT"/*.txt
