#!/usr/bin/env bash
# The Node-API modules of the platform packages that are not this machine's (npm run
# build:native makes that one), cross-compiled here into npm/<platform>/, where
# scripts/pack.sh packs them:
#   aarch64-unknown-linux-gnu  Debian's aarch64 toolchain (gcc-aarch64-linux-gnu,
#                              libc6-dev-arm64-cross; the linker is set in .cargo/config.toml)
#   x86_64-unknown-linux-musl  Debian's musl-tools (musl-gcc, the module's linker, set here),
#                              linked against musl's libc.so (napi build adds
#                              -C target-feature=-crt-static, without which rustc builds no
#                              cdylib for musl)
# With --test, the core's Rust tests then run as that target's binaries: the aarch64 ones
# under qemu-user (qemu-aarch64-static, the runner in .cargo/config.toml), the musl ones
# natively (statically linked). Needs: rustup target add TARGET.
# Usage: scripts/build-platform.sh [--test] [TARGET...]   (default: every napi.targets
# entry but this machine's)
set -euo pipefail
cd "$(dirname "$0")/.."
test=
if [ "${1:-}" = --test ]; then test=1; shift; fi
host=$(rustc -vV | sed -n 's/^host: //p')
if [ $# -eq 0 ]; then
  mapfile -t targets < <(node -p 'require("./package.json").napi.targets.join("\n")' | grep -vx "$host")
  set -- "${targets[@]}"
fi
for target in "$@"; do
  # napi's name for the platform: linux-<node arch>-<abi>, the npm/ directory.
  arch=${target%%-*}
  case $arch in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; esac
  platform="linux-$arch-${target##*-}"
  dir="npm/$platform"
  binary="$dir/osfarm.$platform.node"
  if [ ! -d "$dir" ]; then
    echo "build-platform: $target is not in package.json's napi.targets (no $dir)" >&2
    exit 1
  fi
  if ! rustup target list --installed | grep -qx "$target"; then
    echo "build-platform: the Rust target is missing: rustup target add $target" >&2
    exit 1
  fi
  # How the module links, for that build only: the tests link their own way (below).
  link=()
  if [[ $target == *-musl ]]; then
    # musl-gcc links musl's libc.so and crt files: with the host's cc, rustc would link
    # glibc's once crt-static is off (napi build turns it off for musl targets; a musl
    # cdylib cannot be built with it). Without crt-static, rustc's unwinder links -lgcc_s;
    # musl-gcc lets ld search only musl's and gcc's own directories, and gcc's libgcc_s.so
    # names libgcc_s.so.1, which sits with glibc's libraries: a directory holding just that
    # file lets ld find it and nothing of glibc. (On the musl system libgcc_s.so.1 is
    # libgcc's, which Node needs as well.) napi build adds to RUSTFLAGS.
    libgcc="$PWD/target/$target-libgcc"
    mkdir -p "$libgcc"
    ln -sf "$(gcc -print-file-name=libgcc_s.so.1)" "$libgcc/libgcc_s.so.1"
    link=(CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=musl-gcc RUSTFLAGS="-L native=$libgcc")
  fi
  # The type definitions are the same on every platform: the checkout's index.d.ts stays,
  # the copy napi writes next to the module goes.
  env "${link[@]}" nice -n 10 npx napi build --platform --release --target "$target" --manifest-path crates/osfarm-napi/Cargo.toml \
    --output-dir "$dir" --no-js --dts "$platform.d.ts"
  rm -f "$dir/$platform.d.ts"
  file "$binary"
  needed=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  echo "build-platform: $binary needs:" $needed
  # A musl module that names glibc's libc would not load on a musl system (rustc links
  # the host's libc when the linker is the host's cc).
  if [[ $target == *-musl ]] && grep -qE '^(libc\.so\.6|ld-linux)' <<<"$needed"; then
    echo "build-platform: $binary is linked against glibc" >&2
    exit 1
  fi
  if [ -n "$test" ]; then
    # The musl ones statically linked (crt-static, rustc's own crt files and libc.a): with
    # musl-gcc as the linker they would be static-pie that crash at start.
    nice -n 10 cargo test --release -p osfarm-core --target "$target"
  fi
  if [[ -n $test && $target == *-musl ]]; then
    # There is no musl Node here. What can be checked: musl's dynamic linker loads the
    # module (it binds every symbol at load: all of libc's must be in this musl, 1.2.3 on
    # Debian 12) into a program that stands in for Node (its napi_* functions, empty), with an
    # empty libgcc_s.so.1 for libgcc's unwinder (the host's is glibc's), and finds Node-API's
    # entry point. Nothing is called.
    load="$PWD/target/$target-load"
    mkdir -p "$load"
    stubs() { readelf --dyn-syms -W "$binary" | awk -v p="$1" '$7 == "UND" && index($8, p) == 1 { sub(/@.*/, "", $8); print "void " $8 "(void) {}" }'; }
    stubs _Unwind_ >"$load/unwind.c"
    musl-gcc -shared -fPIC -Wl,-soname,libgcc_s.so.1 -o "$load/libgcc_s.so.1" "$load/unwind.c"
    {
      printf '#include <dlfcn.h>\n#include <stdio.h>\n'
      stubs napi_
      printf '%s\n' 'int main(int argc, char **argv) {' \
        '  void *m = dlopen(argv[1], RTLD_NOW);' \
        '  if (!m || !dlsym(m, "napi_register_module_v1")) { fprintf(stderr, "%s\n", dlerror()); return 1; }' \
        '  puts("loaded by musl'"'"'s dynamic linker, napi_register_module_v1 found");' \
        '  return 0;' '}'
    } >"$load/load.c"
    musl-gcc -rdynamic -o "$load/load" "$load/load.c"
    LD_LIBRARY_PATH="$load" "$load/load" "$PWD/$binary"
  fi
done
