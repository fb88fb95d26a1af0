#!/usr/bin/env bash
# The main job: on a fresh machine, install the dependencies, build the `mdlm` program, prepare
# the bundled King James Bible with the byte tokenizer, train a small MDLM for a few minutes
# (the GPU when one is present, otherwise the CPU), and report the validation perplexity bound.
# and print a few samples (cached ancestral sampler, prompt "And God said").
#   MDLM_STEPS=600 MDLM_OUT=out/kjv-mdlm scripts/main-job.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/install-deps.sh
cmake -S . -B "$MDLM_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${MDLM_CMAKE_ARGS:-}
cmake --build "$MDLM_BUILD_DIR" -j "$MDLM_JOBS" --target mdlm_cli
MDLM="$MDLM_BUILD_DIR/examples/mdlm"
OUT=${MDLM_OUT:-out/kjv-mdlm}
"$MDLM" prepare --tokenizer bytes --input data/kjv/kjv.train.txt data/kjv/kjv.valid.txt --out out/kjv-bytes
"$MDLM" train --data out/kjv-bytes --out "$OUT" --hidden 128 --blocks 4 --heads 4 --seq-len 128 --batch 16 \
  --steps "${MDLM_STEPS:-600}" --lr 2e-3 --warmup 50 --eval-every 200 --log-every 50 --save-every 200
"$MDLM" eval --checkpoint "$OUT"
"$MDLM" sample --checkpoint "$OUT" --sampler cached --steps 128 --length 128 --num-samples 3 --prompt "And God said"
echo "metrics: $OUT/metrics.jsonl, $OUT/metrics.csv; loss curve: $OUT/loss.svg; checkpoint: $OUT/checkpoint.safetensors"
