#!/usr/bin/env bash
# Side-by-side benchmark: memcached (-t 1, -t 2), Redis, a Milena node and a
# Milena router + node, all on loopback, driven by milena-loadtest with the
# same load. Servers are pinned to core 0 and the load generator to core 1
# (taskset), so they do not steal each other's CPU. Writes the results,
# with the command behind each row, into bench/RESULTS.md between the
# "compare" markers, as ratios to memcached -t 1.
#
# Usage: bench/compare.sh            (DURATION=10s WARMUP=2s by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
KEYS=${KEYS:-100000}
OUT=$(mktemp -d)
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

need_commands memcached:memcached redis-server:redis-server
cargo build --release -q --bin milena-cache --bin milena-router -p milena -p milena-loadtest
LT=./target/release/milena-loadtest

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

start() { # name, then the command (taskset and env exec it: same pid)
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$OUT/$name.pid"
}
# CPU time (utime + stime, clock ticks) of the named processes so far.
ticks() { local sum=0 n; for n in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$(cat "$OUT/$n.pid")/stat"))); done; echo "$sum"; }
declare -A PROCS=([memcached-t1]=memcached-t1 [memcached-t2]=memcached-t2 [redis]=redis [milena-node]=milena-node [milena-router]="milena-router milena-router-node")

declare -A URL
p=$(free_port); start memcached-t1 taskset -c "$SERVER_CPU" memcached -u "$(id -un)" -l 127.0.0.1 -p "$p" -U 0 -t 1 -m 1024 -c 4096
URL[memcached-t1]=memcache://127.0.0.1:$p; wait_port "$p"
p=$(free_port); start memcached-t2 taskset -c "$SERVER_CPU" memcached -u "$(id -un)" -l 127.0.0.1 -p "$p" -U 0 -t 2 -m 1024 -c 4096
URL[memcached-t2]=memcache://127.0.0.1:$p; wait_port "$p"
p=$(free_port); start redis taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$p" --save "" --appendonly no
URL[redis]=redis://127.0.0.1:$p; wait_port "$p"
p=$(free_port); start milena-node env LISTEN_ADDR=127.0.0.1:$p LRU_SIZE=2000000 TTL_SECONDS=0 LOG_LEVEL=warn taskset -c "$SERVER_CPU" ./target/release/milena-cache
URL[milena-node]=milena://127.0.0.1:$p; wait_port "$p"
rp=$(free_port); start milena-router env LISTEN_ADDR=127.0.0.1:$rp LOG_LEVEL=warn taskset -c "$SERVER_CPU" ./target/release/milena-router
wait_port "$rp"
p=$(free_port); start milena-router-node env LISTEN_ADDR=127.0.0.1:$p ROUTER_ADDR=http://127.0.0.1:$rp LRU_SIZE=2000000 TTL_SECONDS=0 LOG_LEVEL=warn taskset -c "$SERVER_CPU" ./target/release/milena-cache
wait_port "$p"
for _ in $(seq 100); do
  [ "$(./target/release/milena-cli --addr http://127.0.0.1:$rp members 2>/dev/null | wc -l)" = 1 ] && break; sleep 0.05
done
URL[milena-router]=milena://127.0.0.1:$rp
TARGETS=(memcached-t1 memcached-t2 redis milena-node milena-router)

COMMON="--keys $KEYS --key-dist zipf:0.99 --key-size 32 --value-size 100 --duration $DURATION --warmup $WARMUP --threads 1 --json"
run() { # workload target extra-args...
  local w=$1 t=$2; shift 2
  local cmd="taskset -c $CLIENT_CPU $LT --target ${URL[$t]} $COMMON $*"
  echo "$cmd" >"$OUT/$w.$t.cmd"
  local before after
  before=$(ticks ${PROCS[$t]})
  $cmd >"$OUT/$w.$t.json" 2>/dev/null
  after=$(ticks ${PROCS[$t]})
  echo $((after - before)) >"$OUT/$w.$t.ticks"
  echo "  $w $t: $(python3 -c "import json,sys; r=json.load(open('$OUT/$w.$t.json')); print(f\"{r['throughput']:.0f} ops/s p99 {r['p99_us']:.0f} us\")")"
}

# Every target holds every key before the get-only workloads.
for t in "${TARGETS[@]}"; do
  taskset -c "$CLIENT_CPU" $LT --target "${URL[$t]}" --keys "$KEYS" --key-size 32 --value-size 100 --prefill --requests 1 --threads 1 --json >/dev/null
done
echo "a: 100% get, pipeline 1, 64 connections"
for t in "${TARGETS[@]}"; do run a "$t" --ratio 1:0 --connections 64 --pipeline 1; done
echo "b: 100% get, pipeline 16, 64 connections"
for t in "${TARGETS[@]}"; do run b "$t" --ratio 1:0 --connections 64 --pipeline 16; done
echo "c: 90% get / 10% set, pipeline 1, 64 connections"
for t in "${TARGETS[@]}"; do run c "$t" --ratio 9:1 --connections 64 --pipeline 1; done
RATE=$(python3 -c "import json; print(int(json.load(open('$OUT/a.memcached-t1.json'))['throughput']*0.7))")
echo "d: open loop at $RATE ops/s (70% of memcached -t 1 saturation in a)"
for t in "${TARGETS[@]}"; do run d "$t" --ratio 9:1 --connections 64 --pipeline 4 --rate "$RATE"; done

echo "memory: 1M items, 32 B keys, 100 B values"
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
mem_row() { # name url pid
  local before after
  before=$(rss "$3")
  taskset -c "$CLIENT_CPU" $LT --target "$2" --keys 1000000 --key-size 32 --value-size 100 --prefill --requests 1 --threads 1 --json >/dev/null
  after=$(rss "$3")
  echo "$1 $before $after" >>"$OUT/memory.txt"
}
p=$(free_port); memcached -u "$(id -un)" -l 127.0.0.1 -p "$p" -U 0 -t 1 -m 2048 & mpid=$!; pids+=($mpid); wait_port "$p"
mem_row memcached "memcache://127.0.0.1:$p" "$mpid"
p=$(free_port); env LISTEN_ADDR=127.0.0.1:$p LRU_SIZE=2000000 TTL_SECONDS=0 LOG_LEVEL=warn ./target/release/milena-cache & npid=$!; pids+=($npid); wait_port "$p"
mem_row milena-node "milena://127.0.0.1:$p" "$npid"

python3 - "$OUT" "$(getconf CLK_TCK)" "$DURATION" "$WARMUP" <<'PY'
import json, os, sys, datetime
out, hz = sys.argv[1], int(sys.argv[2])
secs = lambda d: float(d.rstrip("s"))
# CPU is measured over warm-up and run alike: requests ≈ throughput × both.
window = secs(sys.argv[3]) + secs(sys.argv[4])
targets = ["memcached-t1", "memcached-t2", "redis", "milena-node", "milena-router"]
names = {"a": "a. 100% GET hits, pipeline 1", "b": "b. 100% GET hits, pipeline 16",
         "c": "c. 90/10 GET/SET, pipeline 1", "d": "d. open loop at 70% of memcached -t 1 saturation"}
lines = ["<!-- compare:start -->", "## Side by side with memcached and Redis (issue 7)", "",
         f"Command: `bench/compare.sh` ({datetime.date.today()}). Servers pinned to core 0, "
         "`milena-loadtest` (one thread) to core 1; 64 connections, Zipf 0.99 over "
         "100k keys of 32 B, 100 B values, every key pre-filled; ratios are to memcached -t 1 "
         "in the same run. The router + node row runs both on core 0. CPU µs/request: utime + "
         "stime of the server process(es) from /proc over warm-up and run, divided by "
         "throughput × (warm-up + duration); the router row counts router and node.", ""]
for w in "abcd":
    base = json.load(open(f"{out}/{w}.memcached-t1.json"))
    lines += [f"### {names[w]}", "", "| target | ops/s | × memcached -t 1 | p50 µs | p99 µs | p99 × memcached | p99.9 µs | CPU µs/request | command |", "|---|---|---|---|---|---|---|---|---|"]
    for t in targets:
        r = json.load(open(f"{out}/{w}.{t}.json"))
        cmd = open(f"{out}/{w}.{t}.cmd").read().strip().replace(" --json", "")
        cmd = cmd.split("milena-loadtest ")[1]
        cpu = int(open(f"{out}/{w}.{t}.ticks").read()) / hz * 1e6 / max(r['throughput'] * window, 1)
        lines.append(f"| {t} | {r['throughput']:.0f} | {r['throughput']/base['throughput']:.2f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p99_us']/max(base['p99_us'],1e-9):.2f} | {r['p999_us']:.0f} | {cpu:.2f} | `milena-loadtest {cmd}` |")
    lines.append("")
mem = [l.split() for l in open(f"{out}/memory.txt")]
lines += ["### Memory per item (1M items, 32 B keys, 100 B values)", "",
          "(RSS after loading − RSS before − raw key+value bytes) / items; loaded with "
          "`milena-loadtest --keys 1000000 --key-size 32 --value-size 100 --prefill --requests 1`.", "",
          "| server | RSS before | RSS after | overhead per item |", "|---|---|---|---|"]
for name, before, after in mem:
    before, after = int(before), int(after)
    per = (after - before - 1_000_000 * 132) / 1_000_000
    lines.append(f"| {name} | {before/2**20:.1f} MiB | {after/2**20:.1f} MiB | {per:.1f} B |")
lines += ["", "<!-- compare:end -->"]
block = "\n".join(lines) + "\n"
path = "bench/RESULTS.md"
text = open(path).read()
if "<!-- compare:start -->" in text:
    pre = text.split("<!-- compare:start -->")[0]
    post = text.split("<!-- compare:end -->", 1)[1].lstrip("\n")
    text = pre + block + ("\n" + post if post else "")
else:
    text = text.rstrip("\n") + "\n\n" + block
open(path, "w").write(text)
print(block)
PY
