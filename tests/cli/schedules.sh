#!/bin/sh
# mdlm train --schedule NAME for each of the five schedules (a few steps on a small corpus):
# the checkpoint records the schedule, `mdlm eval` reports it and reproduces the trainer's final
# validation number with it (so eval uses the trained schedule), and `mdlm sample` runs with it.
# A checkpoint whose training state lacks the schedule (an older one) evaluates as log-linear.
# usage: schedules.sh MDLM_BINARY WORK_DIR REPO_DIR
set -eu
M=$1 W=$2 R=$3
rm -rf "$W" && mkdir -p "$W"
"$M" prepare --tokenizer bytes --input "$R/data/kjv/kjv.valid.txt" --out "$W/data" --valid-fraction 0.2 > /dev/null
tiny="--backend host --data $W/data --hidden 16 --blocks 1 --heads 2 --cond-dim 8 --seq-len 32 --batch 4 --steps 2 --eval-batches 2"
check() {  # name, extra train flags, expected JSON record
  name=$1 flags=$2 want=$3
  "$M" train $tiny --out "$W/$name" --schedule "$name" $flags > "$W/$name.train"
  grep -F "objective: {\"objective\":\"mdlm\",\"schedule\":$want}" "$W/$name.train" > /dev/null ||
    { echo "FAIL $name: the trainer's record is not $want"; cat "$W/$name.train"; exit 1; }
  "$M" eval --checkpoint "$W/$name" --batches 2 --batch 4 > "$W/$name.eval"
  grep -F "\"schedule\": $want" "$W/$name.eval" > /dev/null || { echo "FAIL $name: eval does not use $want"; cat "$W/$name.eval"; exit 1; }
  train_nats=$(sed -n 's/^final validation: \([0-9.]*\) nats.*/\1/p' "$W/$name.train")
  eval_nats=$(sed -n 's/.*"nats_per_token": \([0-9.]*\),.*/\1/p' "$W/$name.eval")
  [ "$(printf '%.4f' "$eval_nats")" = "$train_nats" ] || { echo "FAIL $name: eval $eval_nats, training validation $train_nats"; exit 1; }
  "$M" sample --checkpoint "$W/$name" --steps 4 --length 16 --num-samples 1 --json | grep -F '"ids":[256,' > /dev/null ||
    { echo "FAIL $name: sample"; exit 1; }
  echo "ok $name $want eval $eval_nats = training $train_nats"
}
check loglinear "" '{"eps":0.001,"name":"loglinear"}'
check cosine "--schedule-eps 0.01" '{"eps":0.01,"name":"cosine"}'
check linear "--sigma-min 0 --sigma-max 5" '{"name":"linear","sigma_max":5.0,"sigma_min":0.0}'
check geometric "--sigma-min 0.01 --sigma-max 2" '{"name":"geometric","sigma_max":2.0,"sigma_min":0.01}'
check polynomial "--schedule-w 2" '{"eps":0.001,"name":"polynomial","w":2.0}'
# An older checkpoint: the cosine one with the schedule taken out of its training state.
if command -v python3 > /dev/null; then
  python3 - "$W/cosine/checkpoint.safetensors" "$W/old.safetensors" <<'PY'
import json, struct, sys
src = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", src[:8])[0]
h = json.loads(src[8:8 + n])
state = json.loads(h["__metadata__"]["training_state"])
del state["schedule"]
h["__metadata__"]["training_state"] = json.dumps(state)
head = json.dumps(h).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(head)) + head + src[8 + n:])
PY
  "$M" eval --checkpoint "$W/old.safetensors" --data "$W/data" --batches 2 --batch 4 > "$W/old.eval"
  grep -F '"schedule": {"eps":0.001,"name":"loglinear"}' "$W/old.eval" > /dev/null || { echo "FAIL old: not log-linear"; cat "$W/old.eval"; exit 1; }
  cmp -s "$W/old.eval" "$W/cosine.eval" && { echo "FAIL old: same result as cosine"; exit 1; }
  echo "ok old checkpoint -> loglinear"
fi
echo "schedules: all ok"
