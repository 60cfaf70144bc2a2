#!/usr/bin/env bash
# Unit tests of the Python step SDK (contextstore_step.py), run natively with
# the real generated bindings and an in-memory fake of the store imports:
#
#     guest/python/test.sh
#
# Needs the componentize-py of guest/python/.venv (build.sh installs it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$here/.venv"
bindings="$root/target/guest-python/bindings"

if [[ ! -x "$venv/bin/componentize-py" ]]; then
    echo "error: $venv/bin/componentize-py is missing: run guest/python/build.sh first" >&2
    exit 1
fi
rm -rf "$bindings"
"$venv/bin/componentize-py" -d "$root/wit" -w step bindings "$bindings"
cd "$here"
PYTHONPATH="$bindings:$here" "$venv/bin/python3" -m unittest discover -s tests -v
