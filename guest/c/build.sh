#!/usr/bin/env bash
# Builds the C steps into WebAssembly components:
#
#     guest/c/build.sh [OUT_DIR]           (default: target/components)
#
# Needs Debian's clang-22, lld-22, wasi-libc and libclang-rt-22-dev-wasm32
# (guest/c/install-deps.sh installs them) and a Rust toolchain. Installs the
# pinned wit-bindgen into target/tools on first use, and rebuilds only what
# changed.
#
# Debian's wasi-libc has only a preview1 sysroot (wasm32-wasi), so the steps
# compile for wasm32-wasi and link with `wasm-component-ld`, the linker Rust
# ships for wasm32-wasip2: it runs wasm-ld, then turns the module into a
# component, adapting any preview1 calls (printf, say) to WASI preview 2 with
# the adapter built into it. The steps themselves make no WASI calls, so the
# components import only the store. No other tool is needed.
set -euo pipefail

WIT_BINDGEN_VERSION=0.63.0
CLANG="${CLANG:-clang-22}"

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out_dir="${1:-$root/target/components}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
tools="$root/target/tools"
wit_bindgen="$tools/bin/wit-bindgen"
gen="$root/target/guest-c/bindings"

# Debian's packages: the file each provides that the build uses.
missing=()
command -v "$CLANG" >/dev/null || missing+=(clang-22)
[[ -x /usr/lib/llvm-22/bin/wasm-ld ]] || missing+=(lld-22)
[[ -f /usr/include/wasm32-wasi/stdlib.h && -f /usr/lib/wasm32-wasi/libc.a ]] || missing+=(wasi-libc)
[[ -f /usr/lib/llvm-22/lib/clang/22/lib/wasi/libclang_rt.builtins-wasm32.a ]] ||
    missing+=(libclang-rt-22-dev-wasm32)
if ((${#missing[@]})); then
    echo "error: missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo $here/install-deps.sh" >&2
    echo "  (apt-get install -y ${missing[*]})" >&2
    exit 1
fi

if ! command -v rustc >/dev/null; then
    echo "error: rustc not found; the C steps link with the Rust toolchain's wasm-component-ld" >&2
    exit 1
fi
component_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/wasm-component-ld"
if [[ ! -x "$component_ld" ]]; then
    echo "error: $component_ld not found (a Rust toolchain of 1.82 or later ships it)" >&2
    exit 1
fi

if [[ "$("$wit_bindgen" --version 2>/dev/null)" != "wit-bindgen-cli $WIT_BINDGEN_VERSION" ]]; then
    echo "installing wit-bindgen-cli $WIT_BINDGEN_VERSION into $tools"
    # Only the C generator is needed; the default features build every language's.
    cargo install --locked --root "$tools" wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" \
        --no-default-features --features c
fi

# shellcheck source=../stale.sh
source "$root/guest/stale.sh"

# The bindings (step.h, step.c, step_component_type.o) are generated from the
# WIT, so they always match it.
if stale "$gen/step.h" "$root"/wit/*.wit "$wit_bindgen" "$0"; then
    rm -rf "$gen"
    mkdir -p "$gen"
    if ! log="$("$wit_bindgen" c "$root/wit" --world step --out-dir "$gen" 2>&1)"; then
        echo "$log" >&2
        exit 1
    fi
fi

# build SOURCE COMPONENT [EXTRA.c...]: compiles guest/c/SOURCE with the extra
# sources (the SDK, contextstore_step.c, for steps written on it), the JSON
# helper and the bindings, and links a component. `-mexec-model=reactor`
# makes a library (no main); --strip-debug drops the DWARF that wasi-libc
# carries.
build() {
    local src="$here/$1" name="$2" out="$out_dir/$2" extra=()
    shift 2
    for file in "$@"; do extra+=("$here/$file"); done
    if ! stale "$out" "$src" "${extra[@]}" "$here/contextstore_step.h" \
        "$here/json.c" "$here/json.h" "$gen/step.h" "$0"; then
        echo "up to date: $out"
        return
    fi
    echo "building $out"
    # wasm32-wasi is the name of Debian's sysroot; newer clang calls it wasm32-wasip1.
    "$CLANG" --target=wasm32-wasi -Wno-deprecated -mexec-model=reactor \
        -O2 -std=c11 -Wall -Wextra -Werror \
        -I "$gen" -I "$here" \
        "$src" "${extra[@]}" "$here/json.c" "$gen/step.c" "$gen/step_component_type.o" \
        -fuse-ld="$component_ld" -Wl,--strip-debug \
        -o "$root/target/guest-c/$name"
    mv "$root/target/guest-c/$name" "$out"
}

build count.c c-count.wasm contextstore_step.c
build hostile.c c-hostile.wasm contextstore_step.c
build sdk_test.c c-sdk-test.wasm contextstore_step.c
