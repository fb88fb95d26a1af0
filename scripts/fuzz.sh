#!/usr/bin/env bash
# libFuzzer targets (clang, with AddressSanitizer + UndefinedBehaviorSanitizer), one per input a
# user can hand the library that has a target so far (fuzz/fuzz_*.cpp).
#   scripts/fuzz.sh                    replay every corpus and regression input through its target (CI)
#   scripts/fuzz.sh TARGET [SECONDS]   fuzz TARGET (shard, safetensors) for SECONDS (default 60),
#                                      corpus in build-fuzz/corpus/TARGET (seeded from fuzz/corpus/TARGET)
# A crash, leak, hang or sanitizer report writes its input to build-fuzz/; commit it under
# fuzz/regressions/TARGET/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${MDLM_FUZZ_CXX:-clang++}
command -v "$CXX" >/dev/null || { echo "fuzz.sh: $CXX not found (apt-get install clang)"; exit 1; }
mkdir -p build-fuzz
build() {
  local t=$1
  "$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Iinclude \
    "fuzz/fuzz_$t.cpp" -o "build-fuzz/fuzz_$t"
}
targets=(shard safetensors)
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
build "$t"
mkdir -p "build-fuzz/corpus/$t"
cp -n fuzz/corpus/"$t"/* "build-fuzz/corpus/$t/" 2>/dev/null || true
cd build-fuzz
"./fuzz_$t" "corpus/$t" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
