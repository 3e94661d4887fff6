#!/usr/bin/env bash
# Memory per item, side by side: memcached, Redis and a Milena node, each
# loaded with the same 1M items (32-byte keys; 10 B, 100 B and 1 KiB
# values) by `milena-loadtest --prefill`. Overhead per item = (RSS after −
# RSS before − raw key+value bytes) / items. Then MAX_MEMORY: a node with
# MAX_MEMORY=512MiB is sent 10x that in data, and its RSS is read.
# Prints markdown tables (paste into bench/RESULTS.md).
#
# Usage: bench/memory.sh      (ITEMS=1000000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ITEMS=${ITEMS:-1000000}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

need_commands memcached:memcached redis-server:redis-server
cargo build --release -q --bin milena-cache --bin milena-cli -p milena -p milena-loadtest
LT=./target/release/milena-loadtest

rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; pid=; }
trap 'stop; rm -rf "$OUT"' EXIT

# name url value-size: loads ITEMS items into the server $pid, records RSS.
load() {
  local before after
  before=$(rss "$pid")
  $LT --target "$2" --keys "$ITEMS" --key-size 32 --value-size "$3" --prefill --requests 1 --threads 1 --connections 16 --json >/dev/null
  after=$(rss "$pid")
  echo "$1 $3 $before $after" >>"$OUT/rows"
  echo "  $1 $3 B: $(( (after - before) / 1048576 )) MiB"
}

for size in 10 100 1024; do
  p=$(free_port); memcached -u "$(id -un)" -l 127.0.0.1 -p "$p" -U 0 -t 1 -m 4096 & pid=$!; wait_port "$p"
  load memcached "memcache://127.0.0.1:$p" "$size"; stop
  p=$(free_port); redis-server --bind 127.0.0.1 --port "$p" --save "" --appendonly no >/dev/null & pid=$!; wait_port "$p"
  load redis "redis://127.0.0.1:$p" "$size"; stop
  p=$(free_port); env LISTEN_ADDR=127.0.0.1:$p LRU_SIZE=$((ITEMS * 2)) TTL_SECONDS=0 LOG_LEVEL=warn ./target/release/milena-cache & pid=$!; wait_port "$p"
  load milena-node "milena://127.0.0.1:$p" "$size"; stop
done

echo "MAX_MEMORY=512MiB, 10x that sent (5.2M items of 1 KiB)"
p=$(free_port); env LISTEN_ADDR=127.0.0.1:$p MAX_MEMORY=512MiB LRU_SIZE=100000000 TTL_SECONDS=0 LOG_LEVEL=warn ./target/release/milena-cache & pid=$!; wait_port "$p"
idle=$(rss "$pid")
$LT --target "milena://127.0.0.1:$p" --keys 5200000 --key-size 32 --value-size 1024 --prefill --requests 1 --threads 1 --connections 16 --json >/dev/null
loaded=$(rss "$pid")
stats=$(./target/release/milena-cli --addr "http://127.0.0.1:$p" stats 2>/dev/null | tr '\n' ' ')
stop

python3 - "$OUT/rows" "$ITEMS" "$idle" "$loaded" "$stats" <<'PY'
import sys, datetime
rows = [l.split() for l in open(sys.argv[1])]
items = int(sys.argv[2])
per = {}
for name, size, before, after in rows:
    per[(name, int(size))] = (int(after) - int(before) - items * (32 + int(size))) / items
print(f"### Memory per item ({items:,} items, 32 B keys)\n")
print(f"Command: `bench/memory.sh` ({datetime.date.today()}). (RSS after − RSS before − raw key+value bytes) / items; "
      "each server loaded by `milena-loadtest --prefill` in a fresh process.\n")
print("| value size | memcached | Redis | Milena node | node ÷ memcached |")
print("|---|---|---|---|---|")
for size in (10, 100, 1024):
    m, r, n = per[("memcached", size)], per[("redis", size)], per[("milena-node", size)]
    print(f"| {size} B | {m:.1f} B | {r:.1f} B | {n:.1f} B | {n / m:.2f} |")
idle, loaded = int(sys.argv[3]), int(sys.argv[4])
budget = 512 * 1024 * 1024
print(f"\nMAX_MEMORY=512MiB, 5.2M items of 32 B + 1 KiB sent (10.4x the budget): RSS idle {idle / 2**20:.1f} MiB, "
      f"loaded {loaded / 2**20:.1f} MiB = {loaded / budget:.3f}x the budget "
      f"({(loaded - idle) / budget:.3f}x over the idle process). Node stats: `{sys.argv[5].strip()}`")
PY
