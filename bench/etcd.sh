#!/usr/bin/env bash
# Membership in etcd must not cost the hot path: two clusters side by side
# (each a router and three memory-only nodes), one with the ring in memory
# (one router, as by default), one with the ring in etcd (two routers;
# the load goes to the first), under the same load from milena-loadtest,
# rounds interleaved. Then the time from a node's kill -9 to both etcd
# routers routing around it, and from a join to both routing to it.
# Routers and nodes are pinned to core 0, the load generator to core 1.
# Writes the results into bench/RESULTS.md between the "etcd" markers.
#
# Usage: bench/etcd.sh            (DURATION=8s WARMUP=2s ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-100000}
LEASE=${LEASE:-3}
OUT=$(mktemp -d)
cargo build --release -q -p milena -p milena-loadtest --bins
B=./target/release
LT=$B/milena-loadtest
CLI=$B/milena-cli

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

ep=$(free_port); pp=$(free_port)
etcd --name b --data-dir "$OUT/etcd" --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
  --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "b=http://127.0.0.1:$pp" \
  >"$OUT/etcd.log" 2>&1 &
pids+=($!); wait_port "$ep"
ETCD="ETCD_ENDPOINTS=http://127.0.0.1:$ep ETCD_LEASE_SECONDS=$LEASE"

# Both start a process in this shell (so cleanup knows its pid) and leave
# its address in $LAST_ADDR, its pid in $LAST_PID.
router() { # name env...
  local p; p=$(free_port)
  env LISTEN_ADDR=127.0.0.1:$p LOG_LEVEL=warn "${@:2}" taskset -c 0 $B/milena-router >"$OUT/$1.log" 2>&1 &
  pids+=($!); LAST_PID=$!; wait_port "$p"; LAST_ADDR=127.0.0.1:$p
}
node() { # name env...
  local p; p=$(free_port)
  env LISTEN_ADDR=127.0.0.1:$p LRU_SIZE=2000000 TTL_SECONDS=0 LOG_LEVEL=warn "${@:2}" taskset -c 0 $B/milena-cache >"$OUT/$1.log" 2>&1 &
  pids+=($!); LAST_PID=$!; wait_port "$p"; LAST_ADDR=127.0.0.1:$p
}
members() { $CLI --addr "http://$1" members 2>/dev/null | wc -l; }
wait_members() { # router n
  for _ in $(seq 2000); do [ "$(members "$1")" = "$2" ] && return 0; sleep 0.01; done
  echo "router $1 never had $2 members" >&2; return 1
}

router mem; MEM=$LAST_ADDR
for i in 1 2 3; do node "mem$i" ROUTER_ADDR="http://$MEM"; done
wait_members "$MEM" 3
router etcd1 $ETCD; E1=$LAST_ADDR
router etcd2 $ETCD; E2=$LAST_ADDR
for i in 1 2 3; do node "etcd$i" $ETCD; done
wait_members "$E1" 3; wait_members "$E2" 3
declare -A ADDR=([memory]=$MEM [etcd]=$E1)
for t in memory etcd; do
  taskset -c 1 $LT --target "milena://${ADDR[$t]}" --keys "$KEYS" --key-size 32 --value-size 100 --prefill --requests 1 --threads 1 --json >/dev/null
done

COMMON="--keys $KEYS --key-dist zipf:0.99 --key-size 32 --value-size 100 --duration $DURATION --warmup $WARMUP --threads 1 --connections 64 --ratio 9:1 --json"
run() { # pipeline round target
  local cmd="taskset -c 1 $LT --target milena://${ADDR[$3]} $COMMON --pipeline $1"
  echo "$cmd" >"$OUT/p$1.cmd"
  $cmd >"$OUT/p$1.$2.$3.json" 2>/dev/null
  echo "  pipeline $1 round $2 $3: $(python3 -c "import json; r=json.load(open('$OUT/p$1.$2.$3.json')); print(f\"{r['throughput']:.0f} ops/s p99 {r['p99_us']:.0f} us\")")"
}
for p in 1 16; do
  for r in $(seq "$ROUNDS"); do
    for t in memory etcd; do run "$p" "$r" "$t"; done
  done
done

# kill -9 of a node: until both etcd routers have dropped it.
node etcd-victim $ETCD; vpid=$LAST_PID
wait_members "$E1" 4; wait_members "$E2" 4
t0=$(date +%s%N); kill -9 "$vpid"
wait_members "$E1" 3; t1=$(date +%s%N); wait_members "$E2" 3; t2=$(date +%s%N)
KILL_MS=$(( (t2 - t0) / 1000000 )); KILL1_MS=$(( (t1 - t0) / 1000000 ))
# A join: from the node's start to both routers routing to it.
t0=$(date +%s%N); node etcd-joiner $ETCD
wait_members "$E1" 4; wait_members "$E2" 4; t1=$(date +%s%N)
JOIN_MS=$(( (t1 - t0) / 1000000 ))
echo "kill -9 to out of both rings: ${KILL_MS} ms (first router ${KILL1_MS} ms); start to routed by both: ${JOIN_MS} ms"

python3 - "$OUT" "$ROUNDS" "$LEASE" "$KILL_MS" "$KILL1_MS" "$JOIN_MS" <<'PY'
import json, sys, statistics, datetime
out, rounds, lease, kill_ms, kill1_ms, join_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
def get(p, r, t, f):
    return json.load(open(f"{out}/p{p}.{r}.{t}.json"))[f]
def med(p, t, f):
    return statistics.median(get(p, r, t, f) for r in range(1, rounds + 1))
lines = ["<!-- etcd:start -->", "## Membership in etcd: cost and reaction times (issue 15)", "",
         f"Command: `bench/etcd.sh` ({datetime.date.today()}). Two clusters side by side, each a router and three memory-only nodes "
         "(release builds, routers and nodes pinned to core 0, `milena-loadtest` to core 1): one with the ring in memory (one router), "
         f"one with the ring in a local etcd 3.4 (two routers, the load through the first; `ETCD_LEASE_SECONDS={lease}`). "
         "90/10 GET/SET, 64 connections, Zipf 0.99 over 100k keys of 32 B, 100 B values, pre-filled; rounds interleaved, medians. "
         "Goal: etcd ≥ 0.97× in-memory throughput (the hot path never touches etcd).", "",
         "| pipeline | in memory, ops/s | etcd, ops/s | etcd / memory | p99 µs memory | p99 µs etcd | ops/s of each round (memory · etcd) |",
         "|---|---|---|---|---|---|---|"]
for p in (1, 16):
    m, e = med(p, "memory", "throughput"), med(p, "etcd", "throughput")
    rr = " / ".join(f"{get(p, r, 'memory', 'throughput'):.0f} · {get(p, r, 'etcd', 'throughput'):.0f}" for r in range(1, rounds + 1))
    lines.append(f"| {p} | {m:.0f} | {e:.0f} | {e/m:.2f} | {med(p, 'memory', 'p99_us'):.0f} | {med(p, 'etcd', 'p99_us'):.0f} | {rr} |")
cmd = open(f"{out}/p1.cmd").read().strip().replace(" --json", "").split("milena-loadtest ")[1]
lines += ["", f"Load: `milena-loadtest {cmd}` (and `--pipeline 16`).", "",
          f"- `kill -9` of a node to both etcd routers routing around it: {kill_ms} ms (the first router: {kill1_ms} ms) — "
          f"the lease ({lease} s) running out, then the removal and the watch.",
          f"- A node's start to both routers routing to it: {join_ms} ms (process start, lease, registration, watch).",
          "", "<!-- etcd:end -->"]
block = "\n".join(lines) + "\n"
path = "bench/RESULTS.md"
text = open(path).read()
if "<!-- etcd:start -->" in text:
    pre = text.split("<!-- etcd:start -->")[0]
    post = text.split("<!-- etcd:end -->", 1)[1].lstrip("\n")
    text = pre + block + ("\n" + post if post else "")
else:
    text = text.rstrip("\n") + "\n\n" + block
open(path, "w").write(text)
print(block)
PY
