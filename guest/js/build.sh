#!/usr/bin/env bash
# Builds the JavaScript steps into WebAssembly components:
#
#     guest/js/build.sh [OUT_DIR]          (default: target/components)
#
# Installs the pinned jco and componentize-js from package-lock.json with
# `npm ci` when node_modules is missing or older than the lock file, and
# rebuilds a component only when its source, the WIT, this script or the lock
# file changed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out_dir="${1:-$root/target/components}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
jco="$here/node_modules/.bin/jco"

if [[ ! -x "$jco" || "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]]; then
    echo "installing jco and componentize-js (npm ci)"
    (cd "$here" && npm ci --no-audit --no-fund)
fi

# shellcheck source=../stale.sh
source "$root/guest/stale.sh"

# build SOURCE COMPONENT: componentizes guest/js/SOURCE.
#
# componentize.mjs turns off the engine's WASI features (stdio, random, clocks,
# http, fetch-event), as `jco componentize --disable all` does. By default the
# engine imports wasi:http and more, which the host does not provide; with
# them off the component imports only the store. Unlike jco, it reads the
# source in place, so a step can import the SDK (./contextstore-step.js).
build() {
    local src="$1" out="$out_dir/$2"
    if ! stale "$out" "$here/$src" "$here/contextstore-step.js" "$root"/wit/*.wit "$0" "$here/componentize.mjs" "$here/package-lock.json"; then
        echo "up to date: $out"
        return
    fi
    echo "building $out"
    node "$here/componentize.mjs" "$here/$src" "$root/wit" "$out.tmp"
    mv "$out.tmp" "$out"
}

build join.js js-join.wasm
build hostile.js js-hostile.wasm
