#!/usr/bin/env bash
# The npm packages in napi-rs style: one tarball per platform package (npm/<platform>/, with
# the .node built for that platform) and the main package, whose optionalDependencies name
# every platform package of package.json's napi.targets. They are added to the packed copy
# only, as `napi pre-publish` does, so that npm ci in a checkout does not look for them.
# Usage: scripts/pack.sh OUTDIR   (after npm run build; the other platforms' modules:
# scripts/build-platform.sh)
set -euo pipefail
out=$(realpath -m "${1:?usage: scripts/pack.sh OUTDIR}")
cd "$(dirname "$0")/.."
mkdir -p "$out"
version=$(node -p 'require("./package.json").version')
for dir in npm/*; do
  platform=$(basename "$dir")
  binary="osfarm.$platform.node"
  # npm run build:native leaves this machine's module in the checkout's root.
  if [ -f "$binary" ]; then cp "$binary" "$dir/"; fi
  if [ ! -f "$dir/$binary" ]; then
    echo "pack: $binary is not built here: no package for $platform" >&2
    continue
  fi
  cp LICENSE "$dir/"
  (cd "$dir" && npm pack --silent --pack-destination "$out" >/dev/null)
done
stage=$(mktemp -d /tmp/osfarm-pack-XXXXXX)
trap 'rm -rf "$stage"' EXIT
npm pack --silent --pack-destination "$stage" >/dev/null
tar -xzf "$stage/osfarm-$version.tgz" -C "$stage"
for dir in npm/*; do
  name=$(node -p "require('./$dir/package.json').name")
  (cd "$stage/package" && npm pkg set "optionalDependencies.$name=$version")
done
(cd "$stage/package" && npm pack --silent --pack-destination "$out" >/dev/null)
ls "$out"
