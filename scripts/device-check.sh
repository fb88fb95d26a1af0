#!/usr/bin/env bash
# The GPU checks on the lent machine (after scripts/device-build.sh here), written to $OUT
# (default out/device). Two phases that fit one call each (a call may run 10 minutes):
#   scripts/device-check.sh correctness   CUDA tests, golden fixtures through the CUDA path
#                                         (fp32, bf16), train on the GPU + every sampler on
#                                         both backends                     (~3-5 minutes)
#   scripts/device-check.sh perf          GEMM, sampler and training-step benchmarks (<= 8 min)
#   scripts/device-check.sh               both
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/build-device/lib:${LD_LIBRARY_PATH:-}"
B=build-device
PHASE=${1:-all}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
if [ "$PHASE" != perf ]; then
timeout 240 $B/tests/mdlm_tests_cuda > "$OUT/tests_cuda.txt" 2>&1; echo "tests_cuda rc=$?" | tee -a "$OUT/summary.txt"
for f in tests/fixtures/*.safetensors; do
  for dt in f32 bf16; do
    $B/examples/mdlm check-fixture "$f" --backend cuda --dtype $dt > "$OUT/fixture_$(basename "$f" .safetensors)_$dt.json" 2>&1
    echo "check-fixture $(basename "$f") $dt rc=$?" | tee -a "$OUT/summary.txt"
  done
done
# End to end: a small byte-level model trained on the GPU, then every sampler on both backends
# with the same seed (race-based samplers: the same tokens expected; see tests for why the
# confidence ranking may differ at near-ties).
M=$B/examples/mdlm
$M prepare --tokenizer bytes --input data/kjv/kjv.train.txt data/kjv/kjv.valid.txt --out out/dev-bytes > "$OUT/prepare.txt" 2>&1
timeout 120 $M train --backend cuda --data out/dev-bytes --out out/dev-mdlm --hidden 128 --blocks 4 --heads 4 \
  --seq-len 128 --batch 16 --steps 200 --lr 2e-3 --warmup 20 --eval-every 100 --log-every 20 --save-every 100 \
  > "$OUT/train_cuda.txt" 2>&1; echo "train cuda rc=$?" | tee -a "$OUT/summary.txt"
cp out/dev-mdlm/metrics.jsonl out/dev-mdlm/loss.svg "$OUT/" 2>/dev/null
for s in ancestral cached confidence remdm first-hit; do
  for be in host cuda; do
    timeout 60 $M sample --checkpoint out/dev-mdlm --backend $be --sampler $s --steps 64 --length 128 --num-samples 4 \
      --prompt "And God said" --top-p 0.95 --json > "$OUT/sample_${s}_$be.jsonl" 2> "$OUT/sample_${s}_$be.err"
    echo "sample $s $be rc=$?" | tee -a "$OUT/summary.txt"
  done
  python3 - "$OUT/sample_${s}_host.jsonl" "$OUT/sample_${s}_cuda.jsonl" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
h, c = ([json.loads(l) for l in open(f) if l.startswith("{")] for f in sys.argv[1:3])
same = sum(a == b for x, y in zip(h, c) for a, b in zip(x["ids"], y["ids"]))
total = sum(len(x["ids"]) for x in h)
print(f"{sys.argv[1].split('sample_')[1]}: host==cuda tokens {same}/{total}; cuda graph {[y.get('cuda_graph') for y in c][:1]}; "
      f"seconds host {h[0]['seconds']:.3f} cuda {c[0]['seconds']:.3f}" if h and c else "no output")
PY
done
fi
if [ "$PHASE" != correctness ]; then
timeout 60 $B/bench/mdlm_bench_gemm_cuda --benchmark_min_time=0.2 > "$OUT/bench_gemm.txt" 2>&1
timeout 60 $B/bench/mdlm_bench_sampler_cuda --benchmark_filter=step --benchmark_min_time=0.5 > "$OUT/bench_sampler.txt" 2>&1
timeout 200 $B/bench/mdlm_bench_sampler_cuda --benchmark_filter=sample_small > "$OUT/bench_sampler_e2e.txt" 2>&1
timeout 60 $B/bench/mdlm_bench_train_step_cuda --benchmark_filter=B8_T256 > "$OUT/bench_train_small.txt" 2>&1
timeout 150 $B/bench/mdlm_bench_train_step_cuda --benchmark_filter=B32_T1024_trimmed --benchmark_min_time=1 > "$OUT/bench_train.txt" 2>&1
fi
tail -n 5 "$OUT"/*.txt
