#!/usr/bin/env bash
# Crash-safe training, proven by killing it: starts `mdlm train` (a checkpoint after every step)
# and SIGKILLs it at TRIALS random moments, many of them during a checkpoint write (the fsync
# and rename). After every kill the checkpoint on disk must load; the run then resumes from it.
# In the end the killed-and-resumed run's checkpoint must be byte-identical to the checkpoint
# of one uninterrupted run, and its metrics must hold each step once. One thread: the runs must
# repeat bit for bit, and a 2-thread OpenMP team slows down many times over when ctest runs
# another test on one of the cores.
#   tests/cli/kill_resume.sh MDLM CORPUS WORKDIR [TRIALS] [SEED]
set -euo pipefail
mdlm=$1 corpus=$2 work=$3 trials=${4:-20} seed=${5:-12345}
rm -rf "$work" && mkdir -p "$work"
"$mdlm" prepare --tokenizer bytes --input "$corpus" --out "$work/data" --valid-fraction 0.2 >/dev/null
steps=300
flags=(--backend host --threads 1 --data "$work/data" --hidden 16 --blocks 1 --heads 2 --cond-dim 8 --seq-len 32
       --batch 4 --steps "$steps" --save-every 1 --log-every 1 --eval-every 1000000 --eval-batches 1)
start=$(date +%s%N)
"$mdlm" train "${flags[@]}" --out "$work/whole" >/dev/null
whole_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "uninterrupted run: $steps steps in $whole_ms ms"
RANDOM=$seed
killed=0
for i in $(seq 1 "$trials"); do
  resume=()
  [ -f "$work/killed/checkpoint.safetensors" ] && resume=(--resume)
  "$mdlm" train "${flags[@]}" --out "$work/killed" "${resume[@]}" >"$work/trial.log" 2>&1 &
  pid=$!
  # A random moment within the first ~1/(trials/2) of a whole run, so the 20 kills spread
  # over the run instead of landing after it has finished.
  delay_ms=$(( 30 + RANDOM % (2 * whole_ms / trials + 1) ))
  sleep "$(awk -v ms="$delay_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
  if kill -KILL "$pid" 2>/dev/null; then killed=$((killed + 1)); fi
  wait "$pid" 2>/dev/null || true
  if [ -f "$work/killed/checkpoint.safetensors" ]; then
    if ! "$mdlm" eval --checkpoint "$work/killed" --batches 1 --batch 4 >"$work/eval.log" 2>&1; then
      echo "FAIL trial $i (killed after $delay_ms ms): the checkpoint on disk does not load:"; cat "$work/eval.log"; exit 1
    fi
    state="checkpoint loads; $(grep -c '"split":"train"' "$work/killed/metrics.jsonl" || true) steps logged"
  else
    state="killed before the first checkpoint"
  fi
  echo "trial $i: killed after $delay_ms ms; $state"
done
resume=()
[ -f "$work/killed/checkpoint.safetensors" ] && resume=(--resume)
"$mdlm" train "${flags[@]}" --out "$work/killed" "${resume[@]}" >/dev/null
echo "$killed of $trials runs were killed while running"
[ "$killed" -ge $((trials / 2)) ] || { echo "FAIL: too few kills landed ($killed)"; exit 1; }
cmp "$work/whole/checkpoint.safetensors" "$work/killed/checkpoint.safetensors" || {
  echo "FAIL: the resumed run's final checkpoint differs from the uninterrupted run's"; exit 1; }
dups=$(grep '"split":"train"' "$work/killed/metrics.jsonl" | grep -o '"step":[0-9]*' | sort | uniq -d | wc -l)
rows=$(grep -c '"split":"train"' "$work/killed/metrics.jsonl")
[ "$dups" -eq 0 ] && [ "$rows" -eq "$steps" ] || { echo "FAIL: metrics hold $rows train rows ($dups steps twice), expected $steps"; exit 1; }
echo "PASS: $trials kills, every checkpoint loaded, final checkpoint byte-identical, $rows metric rows, none twice"
