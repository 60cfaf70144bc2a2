#!/usr/bin/env bash
# Builds {{name}}.wasm from app.c, the SDK (contextstore_step.c) and json.c,
# with the bindings wit-bindgen generates from wit/, clang-22, and the
# Rust toolchain's wasm-component-ld (see the contextstore repository's
# guest/c/README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="${CONTEXTSTORE_REPO:-{{repo}}}"
CLANG="${CLANG:-clang-22}"
wit_bindgen="$repo/target/tools/bin/wit-bindgen"
if [[ ! -x "$wit_bindgen" ]]; then
    echo "error: $wit_bindgen is missing: run $repo/guest/c/build.sh once (it installs it)" >&2
    exit 1
fi
component_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/wasm-component-ld"
cd "$here"
rm -rf build && mkdir -p build
"$wit_bindgen" c wit --world step --out-dir build >/dev/null
"$CLANG" --target=wasm32-wasi -Wno-deprecated -mexec-model=reactor -O2 -std=c11 -Wall -Wextra \
    -I build -I . app.c contextstore_step.c json.c build/step.c build/step_component_type.o \
    -fuse-ld="$component_ld" -Wl,--strip-debug -o build/{{name}}.wasm
mv build/{{name}}.wasm {{name}}.wasm
echo "built $here/{{name}}.wasm"
