#!/usr/bin/env bash
# Builds {{name}}.wasm from app.py (and the SDK, contextstore_step.py) with
# the componentize-py of the contextstore repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="${CONTEXTSTORE_REPO:-{{repo}}}"
tool="$repo/guest/python/.venv/bin/componentize-py"
if [[ ! -x "$tool" ]]; then
    echo "error: $tool is missing: run $repo/guest/python/build.sh once (it installs componentize-py)" >&2
    exit 1
fi
cd "$here"
# --stub-wasi: the component imports nothing but the store.
"$tool" --quiet -d wit -w step componentize --stub-wasi -p . app -o {{name}}.wasm
echo "built $here/{{name}}.wasm"
