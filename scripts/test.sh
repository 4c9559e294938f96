#!/usr/bin/env bash
# Runs every test: the generated binding's drift check, the type checks (TypeScript,
# the example service, the browser assets), the linters (Biome, cargo clippy), Rust
# formatting, cargo test (the Rust core) and ava (the TypeScript API, the CLI and the real
# builds/transfers). Ends with one line "N passed, N failed". Run scripts/install.sh
# first. `npm run test:unit` is the quick tier (no root, no network namespace, no build).
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
passed=0
failed=0

echo "== generated binding is up to date (napi build, index.js / index.d.ts)"
npm run --silent build:native >"$log/napi.txt" 2>&1 || { cat "$log/napi.txt"; }
if git diff --quiet -- index.js index.d.ts; then
  passed=$((passed + 1)); echo "ok: index.js and index.d.ts match the Rust sources"
else
  failed=$((failed + 1)); echo "not ok: the committed index.js / index.d.ts differ from what napi build generates:"
  git --no-pager diff --stat -- index.js index.d.ts
fi
npm run --silent build:ts >"$log/tsc.txt" 2>&1 && chmod +x dist/cli/main.js || { cat "$log/tsc.txt"; failed=$((failed + 1)); }

echo "== type check of the tests, benches and examples (tsx runs them without checking)"
if npx tsc -p tsconfig.check.json >"$log/check.txt" 2>&1; then
  passed=$((passed + 1)); echo "ok: __test__, benches and examples type-check"
else
  failed=$((failed + 1)); echo "not ok: type errors in __test__, benches or examples:"; cat "$log/check.txt"
fi

echo "== type check of the browser assets (// @ts-check, JSDoc)"
if npx tsc -p src/web/assets/tsconfig.json >"$log/assets.txt" 2>&1; then
  passed=$((passed + 1)); echo "ok: src/web/assets type-checks"
else
  failed=$((failed + 1)); echo "not ok: type errors in src/web/assets:"; cat "$log/assets.txt"
fi

echo "== Biome lint (biome.jsonc)"
if npx biome lint >"$log/biome.txt" 2>&1; then
  passed=$((passed + 1)); echo "ok: biome lint"
else
  failed=$((failed + 1)); echo "not ok: biome lint found problems:"; cat "$log/biome.txt"
fi

echo "== Rust formatting (rustfmt.toml)"
if ! cargo fmt --version >/dev/null 2>&1; then
  echo "skipped: rustfmt is not installed (rustup component add rustfmt)"
elif cargo fmt --all --check >"$log/fmt.txt" 2>&1; then
  passed=$((passed + 1)); echo "ok: cargo fmt --check"
else
  failed=$((failed + 1)); echo "not ok: cargo fmt would change these files (run cargo fmt):"; grep '^Diff in' "$log/fmt.txt" | sort -u
fi

echo "== cargo clippy (every target, warnings are errors)"
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "skipped: clippy is not installed (rustup component add clippy)"
elif cargo clippy --workspace --all-targets -- -D warnings >"$log/clippy.txt" 2>&1; then
  passed=$((passed + 1)); echo "ok: cargo clippy --workspace --all-targets -- -D warnings"
else
  failed=$((failed + 1)); echo "not ok: cargo clippy:"; grep -E '^(error|warning)' -A6 "$log/clippy.txt" | head -200
fi

echo "== cargo test"
cargo test --workspace --release 2>&1 | tee "$log/cargo.txt" | grep -E '^test |test result|panicked|error' 
while read -r p f; do
  passed=$((passed + p)); failed=$((failed + f))
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$log/cargo.txt")
if ! grep -q '^test result:' "$log/cargo.txt"; then
  echo "cargo test did not run"; tail -20 "$log/cargo.txt"; failed=$((failed + 1))
fi

echo "== ava"
npx ava --tap "$@" 2>&1 | tee "$log/ava.txt" | grep -E '^(not )?ok |^# ' 
ava_skip=$(grep -cE '^ok .*# SKIP' "$log/ava.txt")
ava_pass=$(( $(grep -cE '^ok ' "$log/ava.txt") - ava_skip ))
ava_fail=$(grep -cE '^not ok ' "$log/ava.txt")
passed=$((passed + ava_pass)); failed=$((failed + ava_fail))
skipped=$ava_skip
if [ "$ava_fail" -gt 0 ]; then
  echo "== ava failures in detail"
  # Each "not ok" line with the YAML block after it (message, assertion, values, where).
  awk '/^not ok /{show=1} show{print} /^  \.\.\.$/{show=0}' "$log/ava.txt" | head -400
fi
if [ $((ava_pass + ava_fail)) -eq 0 ]; then
  echo "ava ran no test"; tail -30 "$log/ava.txt"; failed=$((failed + 1))
fi

[ "$skipped" -gt 0 ] && echo "(${skipped} skipped)"
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
