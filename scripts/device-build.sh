#!/usr/bin/env bash
# Prepares a GPU check on a machine without a GPU: builds every CUDA target for sm_90 into
# build-device/ with nothing the lent GPU machine lacks, then lists what the binaries need.
#   - OpenBLAS (OpenMP build) is linked statically, with libgfortran and libquadmath, and runs
#     the Host fp32 GEMMs too (MDLM_HOST_GEMM=openblas: oneDNN is not installed there);
#   - the CUDA runtime is linked statically; cuBLASLt comes from the GPU machine's CUDA 13;
#   - libutf8proc, Google Benchmark and libgomp are copied into build-device/lib;
#   - MPI and NCCL are left out (-DMDLM_MPI=OFF): the lent machine has no OpenMPI (libmpi, its
#     plugins, mpirun), so the staged `mdlm` trains as one process there.
# Everything device-check.sh runs is staged in build-device/stage and packed into
# build-device/stage.tar.xz (~5 MB): carry that one path and run scripts/device-check.sh there,
# which unpacks it (see /work/.library/device/README.md for the tool).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DMDLM_CUDA=ON \
  -DMDLM_STATIC_BLAS=ON -DMDLM_HOST_GEMM=openblas -DMDLM_NATIVE_ARCH=OFF -DCMAKE_CUDA_RUNTIME_LIBRARY=Static -DMDLM_MPI=OFF -DMDLM_NCCL=OFF -DMDLM_BUILD_TESTS=ON -DMDLM_BUILD_BENCH=ON \
  -DMDLM_BUILD_EXAMPLES=ON >/dev/null
cmake --build build-device -j "$MDLM_JOBS" --target mdlm_tests_cuda mdlm_tests_cuda_host mdlm_cli \
  mdlm_bench_gemm_cuda mdlm_bench_train_step_cuda mdlm_bench_sampler_cuda mdlm_bench_attention_cuda mdlm_profile_step_cuda
# Stage what device-check.sh runs in build-device/stage/{bin,lib}: the one path to carry.
S=build-device/stage
rm -rf "$S" && mkdir -p "$S/bin" "$S/lib"
cp build-device/tests/mdlm_tests_cuda build-device/tests/mdlm_tests_cuda_host build-device/examples/mdlm \
   build-device/bench/mdlm_bench_gemm_cuda build-device/bench/mdlm_bench_train_step_cuda \
   build-device/bench/mdlm_bench_sampler_cuda build-device/bench/mdlm_bench_attention_cuda \
   build-device/bench/mdlm_profile_step_cuda "$S/bin/"
for lib in libutf8proc.so.2 libbenchmark.so.1debian libgomp.so.1; do
  cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" "$S/lib/"
done
echo "static cudart of $(nvcc --version | grep -o 'release [0-9.]*, V[0-9.]*'), built $(date -u +%F) for sm_90" >"$S/BUILD_INFO"
strip --strip-unneeded "$S"/bin/* "$S"/lib/*  # the tree travels (64 MiB at most)
echo "shared libraries the staged binaries need:"
for b in "$S"/bin/*; do ldd "$b" | awk '{print $1}'; done | sort -u | grep -v -E '^(linux-vdso|/lib64/ld-linux)' | tr '\n' ' '
echo
du -sh "$S"
# The tree that travels is at most 64 MiB with the repository: carry the compressed stage.
tar -C build-device -cJf build-device/stage.tar.xz stage
ls -la build-device/stage.tar.xz
