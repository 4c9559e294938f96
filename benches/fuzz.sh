#!/usr/bin/env bash
# Coverage-guided fuzzing of osfarm-core's parsers with cargo fuzz (libFuzzer): the same
# target functions `cargo test` runs on stable for a few seconds each (crates/osfarm-core/
# src/fuzz/), here for longer and steered by coverage. Needs nightly Rust and cargo-fuzz
# (rustup toolchain install nightly; cargo install cargo-fuzz).
#
#   benches/fuzz.sh [-t SECONDS] [TARGET ...]     fuzz each target SECONDS (default 600), in turn
#   benches/fuzz.sh --update-corpus [TARGET ...]  add to the stored corpus the fewest work-corpus
#                                                 inputs that reach code it does not reach yet
#
# The stored corpus (crates/osfarm-core/fuzz/corpus/TARGET) is small and named: seeds and
# every input that once found a bug keep their names and are never removed by this script;
# inputs added by --update-corpus are named cov-<sha1 prefix> and are re-chosen on each
# update. Fuzzing only reads it: a run works in bench-work/fuzz/ (a scratch copy of the
# stored corpus plus a work corpus that keeps what earlier runs found), so the repository
# does not change until --update-corpus is asked for.
#
# Targets run one after another, nice'd. One line per target: executions, seconds,
# executions per second, work corpus size, crashes. A crash, hang (over 10 s) or allocation
# over 512 MiB leaves its input in bench-work/fuzz/artifacts/TARGET/ and makes the script
# exit non-zero; fix it, then copy the input into the stored corpus under a name that says
# what it found.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_dir=crates/osfarm-core/fuzz
work=${OSFARM_BENCH_DIR:-$PWD/bench-work}/fuzz
all=(index tar groups zstd_run catalog table json)
seconds=600
update=0
while [ $# -gt 0 ]; do
  case $1 in
    -t) seconds=$2; shift 2 ;;
    --update-corpus) update=1; shift ;;
    *) break ;;
  esac
done
targets=("${@:-${all[@]}}")
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
# Optimised, with overflow checks and debug assertions (-a). No sanitizer: the parsers are
# safe Rust (ASan would only slow the runs down, most of all zstd's large allocations).
(cd crates/osfarm-core && nice cargo +nightly fuzz build -O -a -s none)
bin=$fuzz_dir/target/x86_64-unknown-linux-gnu/release

# The stored corpus of a target, minus the cov-* inputs: what no update may drop.
copy_named() { find "$fuzz_dir/corpus/$1" -maxdepth 1 -type f ! -name 'cov-*' -exec cp -t "$2" {} +; }

update_corpus() {
  local t=$1 stored=$fuzz_dir/corpus/$1 scratch
  scratch=$(mktemp -d "$work/update-$t.XXXX")
  mkdir -p "$scratch/keep" "$scratch/old" "$work/corpus/$t"
  : >"$work/$t-update.log"
  copy_named "$t" "$scratch/keep"
  find "$stored" -maxdepth 1 -type f -name 'cov-*' -exec cp -t "$scratch/old" {} +
  # A greedy set cover over edges (no hit counts): the inputs in keep/ count as chosen, then
  # the input reaching the most edges not yet reached is taken, and so on; it writes them
  # into keep/ under their SHA-1. The cov-* inputs stored before go first, so that an update
  # only adds what reaches new code and the repository does not churn.
  local from
  for from in "$scratch/old" "$work/corpus/$t"; do
    nice "$bin/$t" -set_cover_merge=1 -use_counters=0 "$scratch/keep" "$from" >>"$work/$t-update.log" 2>&1 ||
      { tail -5 "$work/$t-update.log" >&2; rm -rf "$scratch"; return 1; }
  done
  find "$stored" -maxdepth 1 -type f -name 'cov-*' -delete
  local f name
  for f in "$scratch/keep"/*; do
    name=$(basename "$f")
    [ -e "$stored/$name" ] || [[ ! $name =~ ^[0-9a-f]{40}$ ]] || cp "$f" "$stored/cov-${name:0:16}"
  done
  rm -rf "$scratch"
  echo "$t: stored corpus $(find "$stored" -type f | wc -l) inputs ($(find "$stored" -type f -name 'cov-*' | wc -l) cov-*)," \
    "$(du -sh "$stored" | cut -f1)"
}

failed=0
for t in "${targets[@]}"; do
  if [ "$update" = 1 ]; then
    update_corpus "$t"
    continue
  fi
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  rm -rf "$work/seeds/$t" && mkdir -p "$work/seeds/$t"
  cp -t "$work/seeds/$t" "$fuzz_dir/corpus/$t"/*
  log=$work/$t.log
  rc=0
  # New inputs go into the first directory, the work corpus; the seeds are a scratch copy.
  nice "$bin/$t" "$work/corpus/$t" "$work/seeds/$t" -max_total_time="$seconds" -timeout=10 \
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
