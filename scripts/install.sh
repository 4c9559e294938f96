#!/usr/bin/env bash
# Installs what osfarm needs on a Debian machine and builds it from source:
# the Debian packages in scripts/apt-packages.txt, the npm dependencies, the
# native module (cargo, through napi build) and the TypeScript.
# Needs: root (or sudo), Node.js >= 20 with npm, Rust >= 1.80 with cargo (rustup).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

for tool in node npm cargo; do
  command -v "$tool" >/dev/null || { echo "install.sh: $tool is missing: install Node.js >= 20 and Rust (rustup) first" >&2; exit 1; }
done

mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/apt-packages.txt | awk '{print $1}')
echo "install.sh: apt packages: ${packages[*]}"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

echo "install.sh: npm dependencies"
npm ci --no-audit --no-fund --loglevel=error

echo "install.sh: native module and TypeScript"
npm run --silent build
chmod +x dist/cli/main.js
echo "install.sh: done; run ./node_modules/.bin/osfarm --help or npx osfarm --help"
