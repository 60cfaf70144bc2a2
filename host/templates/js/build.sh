#!/usr/bin/env bash
# Builds {{name}}.wasm from app.js (and the SDK, contextstore-step.js) with
# the componentize-js of the contextstore repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="${CONTEXTSTORE_REPO:-{{repo}}}"
if [[ ! -d "$repo/guest/js/node_modules/@bytecodealliance/componentize-js" ]]; then
    echo "error: componentize-js is missing in $repo/guest/js: run $repo/guest/js/build.sh once (it installs it)" >&2
    exit 1
fi
cd "$here"
# Every engine feature that needs WASI is off: the component imports only the store.
node "$repo/guest/js/componentize.mjs" app.js wit {{name}}.wasm
echo "built $here/{{name}}.wasm"
