#!/usr/bin/env bash
# Installs Debian's packages that guest/c/build.sh needs (run as root).
set -euo pipefail
apt-get update
apt-get install -y clang-22 lld-22 wasi-libc libclang-rt-22-dev-wasm32
