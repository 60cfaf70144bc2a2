#!/usr/bin/env bash
# Builds the Python steps into WebAssembly components:
#
#     guest/python/build.sh [OUT_DIR]      (default: target/components)
#
# Installs the pinned componentize-py into guest/python/.venv on first use and
# rebuilds a component only when its source, the WIT, this script or the tool
# changed.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out_dir="${1:-$root/target/components}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
venv="$here/.venv"
tool="$venv/bin/componentize-py"

if [[ "$("$tool" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
    echo "installing componentize-py $COMPONENTIZE_PY_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# shellcheck source=../stale.sh
source "$root/guest/stale.sh"

# build MODULE COMPONENT: componentizes guest/python/MODULE.py.
#
# --stub-wasi replaces every WASI import with a trapping stub, so the component
# imports nothing but the store: print(), time and os calls trap, and the seed
# of `random` is fixed at build time.
build() {
    local module="$1" out="$out_dir/$2"
    if ! stale "$out" "$here/$module.py" "$here/contextstore_step.py" "$root"/wit/*.wit "$0" "$tool"; then
        echo "up to date: $out"
        return
    fi
    echo "building $out"
    (cd "$here" && "$tool" --quiet -d "$root/wit" -w step \
        componentize --stub-wasi -p "$here" "$module" -o "$out.tmp")
    mv "$out.tmp" "$out"
}

build words python-words.wasm
build hostile python-hostile.wasm
