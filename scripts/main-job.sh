#!/usr/bin/env bash
# The main job: on a fresh machine, install the dependencies, build the `mdlm` program, prepare
# the bundled King James Bible with the byte tokenizer, train a small MDLM (on the GPU when one
# is present, otherwise on the CPU), report its validation perplexity bound and print samples
# (cached ancestral sampler, prompt "And God said").
#   MDLM_STEPS=4000 MDLM_OUT=out/kjv-mdlm scripts/main-job.sh
# Without a GPU the program is built without CUDA (a plain C++ build, in build-main/), so the
# whole job takes about 5 minutes on a 2-core CPU (README, "Main job").
set -euo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/install-deps.sh
if command -v nvcc >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda=ON; else cuda=OFF; fi
BUILD=${MDLM_MAIN_BUILD_DIR:-build-main}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMDLM_CUDA=$cuda -DMDLM_BUILD_TESTS=OFF -DMDLM_BUILD_BENCH=OFF \
  ${MDLM_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j "$MDLM_JOBS" --target mdlm_cli
MDLM="$BUILD/examples/mdlm"
OUT=${MDLM_OUT:-out/kjv-mdlm}
"$MDLM" prepare --tokenizer bytes --input data/kjv/kjv.train.txt data/kjv/kjv.valid.txt --out out/kjv-bytes
STEPS=${MDLM_STEPS:-4000}
"$MDLM" train --data out/kjv-bytes --out "$OUT" --hidden 128 --blocks 4 --heads 4 --seq-len 128 --batch 16 \
  --steps "$STEPS" --lr 2e-3 --warmup 50 --lr-schedule cosine --eval-every "$STEPS" --log-every 250 --save-every 1000
"$MDLM" eval --checkpoint "$OUT"
"$MDLM" sample --checkpoint "$OUT" --sampler cached --steps 128 --length 128 --num-samples 3 --prompt "And God said"
echo "metrics: $OUT/metrics.jsonl, $OUT/metrics.csv; loss curve: $OUT/loss.svg; checkpoint: $OUT/checkpoint.safetensors"
echo "main job: $(( $(date +%s) - start )) s of wall time"
