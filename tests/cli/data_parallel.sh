#!/bin/sh
# Data-parallel training on the Host over MPI ranks, against one process (issue 18).
#   data_parallel.sh MDLM MPIRUN WORKDIR CORPUS CHECK
# CHECK is one of
#   equal      mpirun -np 2 (and 3) with global batch B gives the per-step training losses of one
#              process with batch B, within 1e-6 relative at fp64: plain, with gradient
#              accumulation, with ZeRO-1, with both; with buckets of 10 KB, so the all-reduce of
#              the output layer's and the block's gradients starts during the backward pass
#              (with and without accumulation); pad batching with an uneven split (B = 5) for
#              both objectives (their token means have different denominators)
#   resume     a 2-rank checkpoint resumes on 1 rank and a 1-rank checkpoint on 2 ranks (ZeRO-1
#              too), both reaching the losses of an uninterrupted run
#   bad-shard  rank 1 reads a truncated shard: the whole job exits non-zero within seconds with
#              rank 1's message
#   mismatch   rank 1 is started with other flags: the job stops with a message naming the cause
# Prints "data-parallel CHECK: ok" on success; any failure prints what differs and exits 1.
set -eu
MDLM=$1 MPIRUN=$2 WORK=$3 CORPUS=$4 CHECK=$5
MPI="$MPIRUN --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none -np"
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
"$MDLM" prepare --tokenizer bytes --input "$CORPUS" --out data --valid-fraction 0.2 >/dev/null
ARGS="--backend host --dtype f64 --data data --hidden 16 --blocks 1 --heads 2 --cond-dim 8 --seq-len 32 --batch 4"
ARGS="$ARGS --steps 20 --lr 3e-3 --warmup 5 --log-every 1 --eval-every 0 --eval-batches 1 --save-every 0 --threads 1"

# same_losses A B: the training losses of A/metrics.jsonl and B/metrics.jsonl, step by step.
same_losses() {
  awk -v a="$1" -v b="$2" '
    function loss(line) { match(line, /"loss":[^,}]*/); return substr(line, RSTART + 7, RLENGTH - 7) + 0 }
    FNR == NR { if ($0 ~ /"split":"train"/) { ref[n + 0] = loss($0); n++ }; next }
    $0 ~ /"split":"train"/ {
      x = loss($0); m += 0; d = (x - ref[m]) / ref[m]; if (d < 0) d = -d; if (d > worst) worst = d
      if (!(d <= 1e-6)) { printf "%s vs %s: step %d loss %.17g vs %.17g (relative %.3g)\n", a, b, m + 1, x, ref[m], d; bad = 1 }
      m++ }
    END {
      if (n != 20 || m != n) { printf "%s vs %s: %d and %d training rows, expected 20\n", a, b, n, m; exit 1 }
      printf "%s vs %s: 20 steps, worst relative difference %.3g\n", a, b, worst; exit bad }' "$1/metrics.jsonl" "$2/metrics.jsonl"
}

case "$CHECK" in
equal)
  "$MDLM" train $ARGS --out one >/dev/null
  "$MDLM" train $ARGS --accum 2 --out one_accum >/dev/null
  $MPI 2 "$MDLM" train $ARGS --out two >/dev/null
  $MPI 2 "$MDLM" train $ARGS --accum 2 --out two_accum >/dev/null
  $MPI 2 "$MDLM" train $ARGS --zero 1 --out two_zero >/dev/null
  $MPI 2 "$MDLM" train $ARGS --accum 2 --zero 1 --out two_accum_zero >/dev/null
  $MPI 2 "$MDLM" train $ARGS --bucket-mb 0.01 --out two_buckets >/dev/null
  $MPI 2 "$MDLM" train $ARGS --accum 2 --bucket-mb 0.01 --out two_accum_buckets >/dev/null
  same_losses one two_buckets
  same_losses one_accum two_accum_buckets
  same_losses one two
  same_losses one_accum two_accum
  same_losses one two_zero
  same_losses one_accum two_accum_zero
  for objective in mdlm ar; do
    PAD="--style pad --batch 5 --objective $objective"
    "$MDLM" train $ARGS $PAD --out one_pad_$objective >/dev/null
    $MPI 2 "$MDLM" train $ARGS $PAD --out two_pad_$objective >/dev/null
    $MPI 3 "$MDLM" train $ARGS $PAD --zero 1 --out three_pad_zero_$objective >/dev/null
    same_losses one_pad_$objective two_pad_$objective
    same_losses one_pad_$objective three_pad_zero_$objective
  done
  ;;
resume)
  "$MDLM" train $ARGS --out uninterrupted >/dev/null
  $MPI 2 "$MDLM" train $ARGS --stop-after 10 --out two_then_one >/dev/null
  "$MDLM" train $ARGS --resume --out two_then_one >log1.txt
  grep -q "resumed from .* at step 10" log1.txt
  "$MDLM" train $ARGS --stop-after 10 --out one_then_two >/dev/null
  $MPI 2 "$MDLM" train $ARGS --resume --out one_then_two >log2.txt
  grep -q "resumed from .* at step 10" log2.txt
  $MPI 2 "$MDLM" train $ARGS --zero 1 --stop-after 10 --out zero_then_two >/dev/null
  $MPI 2 "$MDLM" train $ARGS --resume --out zero_then_two >/dev/null
  same_losses uninterrupted two_then_one
  same_losses uninterrupted one_then_two
  same_losses uninterrupted zero_then_two
  ;;
bad-shard)
  cp -r data bad && truncate -s 100 bad/train.bin
  start=$(date +%s)
  status=0
  timeout 120 $MPI 2 sh -c 'if [ "${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}" = 1 ]; then d=bad; else d=data; fi
                             exec "$0" train '"$ARGS"' --steps 1000 --out run --data $d' "$MDLM" >out.txt 2>&1 || status=$?
  seconds=$(( $(date +%s) - start ))
  cat out.txt
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || { echo "FAIL: exit status $status (0: not stopped; 124: hung)"; exit 1; }
  [ "$seconds" -le 30 ] || { echo "FAIL: the job took $seconds s to stop"; exit 1; }
  grep -q "mdlm: error: rank 1: .*bad/train.bin: header says .* (truncated or corrupt)" out.txt ||
    { echo "FAIL: no message from rank 1"; exit 1; }
  echo "stopped in $seconds s with exit status $status"
  ;;
mismatch)
  # rank 1 started with another --steps: every rank stops at once, naming the cause
  status=0
  timeout 120 $MPI 2 sh -c 'if [ "${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}" = 1 ]; then s=21; else s=20; fi
                             exec "$0" train '"$ARGS"' --out run --steps $s' "$MDLM" >out.txt 2>&1 || status=$?
  cat out.txt
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] || { echo "FAIL: exit status $status (0: not stopped; 124: hung)"; exit 1; }
  grep -q "mdlm: error: rank [01]: .*the ranks were started with different training configurations" out.txt ||
    { echo "FAIL: no message naming the cause"; exit 1; }
  ;;
*) echo "unknown check '$CHECK'"; exit 2 ;;
esac
echo "data-parallel $CHECK: ok"
