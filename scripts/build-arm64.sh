#!/usr/bin/env bash
# The linux-arm64-gnu Node-API module, cross-compiled here with Debian's aarch64 toolchain
# (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross; the linker is set in .cargo/config.toml)
# into npm/linux-arm64-gnu/, where scripts/pack.sh packs it. With --test, the core's Rust
# tests then run as aarch64 binaries under qemu-user (qemu-aarch64-static, the runner in
# .cargo/config.toml). Needs: rustup target add aarch64-unknown-linux-gnu.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! rustup target list --installed | grep -qx "$target"; then
  echo "build-arm64: the Rust target is missing: rustup target add $target" >&2
  exit 1
fi
# The type definitions are the same on every platform: the checkout's index.d.ts stays, the
# copy napi writes next to the module goes.
npx napi build --platform --release --target "$target" --manifest-path crates/osfarm-napi/Cargo.toml \
  --output-dir npm/linux-arm64-gnu --no-js --dts arm64.d.ts
rm -f npm/linux-arm64-gnu/arm64.d.ts
file npm/linux-arm64-gnu/osfarm.linux-arm64-gnu.node
if [ "${1:-}" = --test ]; then
  cargo test --release -p osfarm-core --target "$target"
fi
