#!/usr/bin/env bash
# The main job. Today (foundation release) it installs the dependencies, builds, and runs the
# `mdlm demo`: Philox draws, bf16 rounding and a Linear+GELU GEMM checked against fp64, on the
# GPU when one is present. Training and sampling on the bundled corpus arrive with the
# trainer (see README, "Status").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/install-deps.sh
cmake -S . -B "$MDLM_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${MDLM_CMAKE_ARGS:-}
cmake --build "$MDLM_BUILD_DIR" -j "$MDLM_JOBS" --target mdlm_cli
"$MDLM_BUILD_DIR"/examples/mdlm demo --size 1024
