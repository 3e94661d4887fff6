#!/usr/bin/env bash
# The test command from the README: every unit, property, golden-vector and
# integration test in the workspace (real sockets, real binaries, real
# HTTP). The metrics tests need promtool (Debian package `prometheus`);
# installed here when missing and we are root, as on CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is needed by the metrics tests: apt-get install prometheus" >&2
    exit 1
  fi
fi

exec cargo test --workspace "$@"
