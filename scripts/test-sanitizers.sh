#!/usr/bin/env bash
# The Host test suite under AddressSanitizer + UndefinedBehaviorSanitizer (g++): an
# out-of-bounds access, a use after free, a leak or undefined behaviour in any test fails it.
# Then the libFuzzer targets replay their corpora and regression inputs (scripts/fuzz.sh).
# Run by CI after scripts/test.sh; build-asan/ is its own build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/install-deps.sh
BUILD=${MDLM_ASAN_BUILD_DIR:-build-asan}
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMDLM_CUDA=OFF -DMDLM_BUILD_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$BUILD" -j "$MDLM_JOBS" --target mdlm_tests_host
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$BUILD/tests/mdlm_tests_host"
echo "sanitizers: the Host test suite passed under -fsanitize=address,undefined"
# The fuzz targets (clang + libFuzzer) replay their corpora and every committed regression input.
# (libomp-14-dev: the tokenizer targets include <omp.h> and build with -fopenmp.)
if ! command -v clang++ >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' libclang-rt-14-dev libomp-14-dev 2>/dev/null |
     grep -c "ok installed" | grep -q '^2$'; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev libomp-14-dev
fi
bash scripts/fuzz.sh
