#!/usr/bin/env bash
# Builds every guest step component into OUT_DIR:
#
#     guest/build-all.sh [OUT_DIR]         (default: target/components)
#
# Each language's build.sh installs its own pinned tools and rebuilds only
# what changed; see guest/<language>/README.md.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="${1:-$root/target/components}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

# Rust steps (the guest workspace, guest/Cargo.toml): build here.

for lang in c js python; do
    echo "== $lang"
    "$root/guest/$lang/build.sh" "$out_dir"
done
