#!/usr/bin/env bash
# The test command: install missing dependencies, configure, build everything (CUDA targets too where nvcc exists, even
# without a GPU) and run the whole suite with ctest. CUDA tests report "skipped" without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/install-deps.sh
cmake -S . -B "$MDLM_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${MDLM_CMAKE_ARGS:-}
cmake --build "$MDLM_BUILD_DIR" -j "$MDLM_JOBS"
ctest --test-dir "$MDLM_BUILD_DIR" --output-on-failure -j "$MDLM_JOBS"
