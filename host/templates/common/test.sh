#!/usr/bin/env bash
# Builds the step and runs it on its own against fixtures with
# `contextstore run`: the output must be the expected one, and without its
# upstream the step must fail with missing-upstream.
#
#     ./test.sh          (CONTEXTSTORE=/path/to/contextstore to pick the binary)
set -euo pipefail
cd "$(dirname "$0")"
contextstore="${CONTEXTSTORE:-contextstore}"

{{build}}

output="$("$contextstore" run {{component}} --params '{"greeting":"Hi"}' --upstream-value 'input={"text":"Ada"}')"
expected='{"message":"Hi, Ada!"}'
if [[ "$output" != "$expected" ]]; then
    echo "FAIL: expected $expected, got $output" >&2
    exit 1
fi

if "$contextstore" run {{component}} 2>stderr.txt >/dev/null; then
    echo "FAIL: the step ran without its upstream" >&2
    exit 1
fi
if ! grep -q "missing-upstream" stderr.txt; then
    echo "FAIL: expected a missing-upstream error, got: $(cat stderr.txt)" >&2
    exit 1
fi
rm -f stderr.txt
echo "ok: {{name}}"
