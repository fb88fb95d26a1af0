#!/usr/bin/env bash
# libFuzzer targets (clang, with AddressSanitizer + UndefinedBehaviorSanitizer), one per input a
# user can hand the library (fuzz/fuzz_TARGET.cpp):
#   shard            a token shard                  safetensors      a safetensors file
#   checkpoint       a training checkpoint          data_meta        a data directory's meta.json
#   gpt2_vocab       vocab.json NUL merges.txt      tokenizer_json   a tokenizer.json
#   wordpiece_vocab  a BERT vocab.txt               encode           text for GPT-2, WordPiece, bytes
#   scripts/fuzz.sh                    replay every corpus and regression input through its target (CI)
#   scripts/fuzz.sh TARGET [SECONDS [LIBFUZZER OPTIONS...]]
#                                      fuzz TARGET for SECONDS (default 60), corpus in
#                                      build-fuzz/corpus/TARGET (seeded from fuzz/corpus/TARGET);
#                                      e.g. scripts/fuzz.sh encode 1800 -runs=10000000
# A crash, leak, hang or sanitizer report writes its input to build-fuzz/; commit it under
# fuzz/regressions/TARGET/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${MDLM_FUZZ_CXX:-clang++}
command -v "$CXX" >/dev/null || { echo "fuzz.sh: $CXX not found (apt-get install clang)"; exit 1; }
mkdir -p build-fuzz
build() {
  local t=$1
  "$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fopenmp -Iinclude \
    -DMDLM_FUZZ_DATA_DIR="\"$PWD/data\"" "fuzz/fuzz_$t.cpp" -o "build-fuzz/fuzz_$t" -lutf8proc
}
targets=(shard safetensors checkpoint data_meta gpt2_vocab tokenizer_json wordpiece_vocab encode)
if [ $# -eq 0 ]; then
  for t in "${targets[@]}"; do
    build "$t"
    inputs=(fuzz/corpus/"$t"/* fuzz/regressions/"$t"/*)
    existing=()
    for f in "${inputs[@]}"; do [ -f "$f" ] && existing+=("$f"); done
    "build-fuzz/fuzz_$t" -runs=1 "${existing[@]}" >"build-fuzz/replay_$t.log" 2>&1 ||
      { cat "build-fuzz/replay_$t.log"; echo "fuzz.sh: replay of $t FAILED"; exit 1; }
    echo "fuzz.sh: $t: ${#existing[@]} corpus and regression inputs replayed, no finding"
  done
  exit 0
fi
t=$1 seconds=${2:-60}
shift $(( $# < 2 ? $# : 2 ))
build "$t"
mkdir -p "build-fuzz/corpus/$t"
cp -n fuzz/corpus/"$t"/* "build-fuzz/corpus/$t/" 2>/dev/null || true
cd build-fuzz
# Inputs up to 4 KiB, or as long as the longest seed (a checkpoint seed is ~10 KB).
max_len=$(find "corpus/$t" -type f -printf '%s\n' | sort -n | tail -1)
max_len=$(( ${max_len:-0} > 4096 ? max_len : 4096 ))
"./fuzz_$t" "corpus/$t" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 "$@"
