#!/usr/bin/env bash
# Coverage-guided fuzzing of osfarm-core's parsers with cargo fuzz (libFuzzer): the same
# target functions `cargo test` runs on stable for a few seconds each (crates/osfarm-core/
# src/fuzz/), here for longer and steered by coverage. Needs nightly Rust and cargo-fuzz
# (rustup toolchain install nightly; cargo install cargo-fuzz).
#
#   benches/fuzz.sh [-t SECONDS] [TARGET ...]   fuzz each target SECONDS (default 600), in turn
#   benches/fuzz.sh --minimize TARGET ...       rewrite the stored corpus as the smallest set
#                                               that covers what it and the work corpus cover
#
# Targets run one after another, nice'd. Each starts from the stored corpus
# (crates/osfarm-core/fuzz/corpus/TARGET, only read) and a work corpus in
# bench-work/fuzz/corpus/TARGET that keeps what earlier runs found. One line per target:
# executions, seconds, executions per second, work corpus size, crashes. A crash, hang
# (over 10 s) or allocation over 512 MiB leaves its input in bench-work/fuzz/artifacts/TARGET/
# and makes the script exit non-zero; fix it, then add the input to the stored corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_dir=crates/osfarm-core/fuzz
work=${OSFARM_BENCH_WORK:-$PWD/bench-work}/fuzz
all=(index tar groups zstd_run catalog table json)
seconds=600
minimize=0
while [ $# -gt 0 ]; do
  case $1 in
    -t) seconds=$2; shift 2 ;;
    --minimize) minimize=1; shift ;;
    *) break ;;
  esac
done
targets=("${@:-${all[@]}}")
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
# Optimised, with overflow checks and debug assertions (-a). No sanitizer: the parsers are
# safe Rust (ASan would only slow the runs down, most of all zstd's large allocations).
(cd crates/osfarm-core && nice cargo +nightly fuzz build -O -a -s none)
bin=$fuzz_dir/target/x86_64-unknown-linux-gnu/release

failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  if [ "$minimize" = 1 ]; then
    # libFuzzer's merge keeps the inputs that add coverage, smallest first.
    fresh=$(mktemp -d "$work/min-$t.XXXX")
    nice "$bin/$t" -merge=1 "$fresh" "$fuzz_dir/corpus/$t" "$work/corpus/$t" >"$work/$t-merge.log" 2>&1
    rm -f "$fuzz_dir/corpus/$t"/*
    cp "$fresh"/* "$fuzz_dir/corpus/$t/"
    rm -rf "$fresh"
    echo "$t: stored corpus now $(ls "$fuzz_dir/corpus/$t" | wc -l) inputs, $(du -sh "$fuzz_dir/corpus/$t" | cut -f1)"
    continue
  fi
  log=$work/$t.log
  rc=0
  nice "$bin/$t" "$work/corpus/$t" "$fuzz_dir/corpus/$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t/" >"$log" 2>&1 || rc=$?
  stat() { sed -nE "s/^stat::$1: *([0-9]+)/\\1/p" "$log" | tail -1; }
  crashes=$(find "$work/artifacts/$t" -type f | wc -l)
  echo "$t: $(stat number_of_executed_units) executions in $(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1) s" \
    "($(stat average_exec_per_sec)/s), work corpus $(ls "$work/corpus/$t" | wc -l), crashes $crashes, exit $rc"
  if [ "$rc" != 0 ] || [ "$crashes" -gt 0 ]; then
    failed=1
    grep -E '^==[0-9]+==|panicked|SUMMARY|Test unit written' "$log" | head -5
  fi
done
exit $failed
