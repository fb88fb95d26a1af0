#!/usr/bin/env bash
# Prepares a GPU check on a machine without a GPU: builds every CUDA target for sm_90 into
# build-device/ and copies the two shared libraries the lent GPU machine lacks
# (libutf8proc, Google Benchmark) next to the binaries. Carry build-device/ and run
# scripts/device-check.sh there (see /work/.library/device/README.md for the tool).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DMDLM_CUDA=ON
cmake --build build-device -j "$MDLM_JOBS" --target mdlm_tests_cuda mdlm_cli mdlm_bench_gemm_cuda \
  mdlm_bench_train_step_cuda mdlm_bench_sampler_cuda
mkdir -p build-device/lib
for lib in libutf8proc.so.2 libbenchmark.so.1debian; do
  cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" build-device/lib/
done
du -sh build-device/tests/mdlm_tests_cuda build-device/examples/mdlm build-device/bench build-device/lib
