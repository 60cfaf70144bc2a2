#!/usr/bin/env bash
# Unit tests of the JavaScript step SDK (contextstore-step.js), run natively
# under `node --test` with an in-memory fake of the store imports:
#
#     guest/js/test.sh
set -euo pipefail
cd "$(dirname "$0")"
node --import ./test/resolve-store.js --test test/contextstore-step.test.js
