#!/usr/bin/env bash
# Runs the benchmarks (all, or those named: index-speed plan-speed debian-common ...).
# Needs root (drops caches, builds chroots) and scripts/install.sh done first.
set -euo pipefail
cd "$(dirname "$0")/.."
all=(refuse-speed index-speed plan-speed debian-common build-speed stages-bench stages-appliances transfer-bandwidth transfer-peers push-tls pull-verify collision-detect proxy-scale web-latency nbd-serve lazy-boot disk-transfer disk-build soak)
names=("${@:-${all[@]}}")
for name in "${names[@]}"; do
  echo "== bench: $name"
  if [ -f "benches/$name.ts" ]; then node --import tsx "benches/$name.ts"; else bash "benches/$name.sh"; fi
done
