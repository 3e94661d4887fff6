#!/usr/bin/env bash
# The test command from the README: every unit, property, golden-vector and
# integration test in the workspace (real sockets, real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace "$@"
