#!/usr/bin/env bash
# The main job on a fresh Debian machine: install everything (scripts/install.sh), then
# build two Debian bookworm images in a chroot (minbase, and minbase with python3) as
# block-aligned tars, keep the first in a repository, and show what sending the second
# to a holder of the first would cost: the seed's "common blocks" and a transfer plan.
# Work goes to $QUICKSTART_DIR (default ./quickstart). Set $OSFARM_MIRROR for a mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

osfarm() { node dist/cli/main.js "$@"; }
dir=${QUICKSTART_DIR:-quickstart}
mkdir -p "$dir"
export OSFARM_REPO="$dir/repo"

for variant in minbase python3; do
  if [ ! -f "$dir/$variant.tar" ]; then
    extra=(); [ "$variant" = python3 ] && extra=(-p python3)
    echo "== building bookworm $variant"
    osfarm build -t debian-bookworm-amd64 "${extra[@]}" -o "$dir/$variant.tar" --no-repo
  fi
done

[ -f "$OSFARM_REPO/osfarm-repo.json" ] || osfarm repo init
echo "== the repository holds minbase"
osfarm repo add "$dir/minbase.tar" --name bookworm-minbase
echo "== common blocks (the seed's table)"
osfarm compare "$dir/minbase.tar" "$dir/python3.tar"
echo "== what a transfer of the python3 image to this repository would send"
osfarm plan "$dir/python3.tar"
osfarm repo ls
