#!/usr/bin/env bash
# What a second copy of every write not yet in S3 costs (WRITE_REPLICAS):
# three clusters side by side, each a router and three nodes writing behind
# to one local S3 server (examples/s3-server.rs): async with one copy,
# async without, and sync. Same load through each router, rounds
# interleaved. Routers and nodes are pinned to core 0; milena-loadtest and
# the S3 server (at nice 19) share core 1. Writes the results into
# bench/RESULTS.md between the "replicas" markers.
#
# Usage: bench/replicas.sh            (MIX=1:1 GET:SET, DURATION=8s WARMUP=2s ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
MIX=${MIX:-1:1}
KEYS=${KEYS:-100000}
OUT=$(mktemp -d)
cargo build --release -q -p milena -p milena-loadtest --bins
cargo build --release -q --example s3-server
B=./target/release
LT=$B/milena-loadtest
CLI=$B/milena-cli

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

s3p=$(free_port)
taskset -c 1 nice -n 19 $B/examples/s3-server --root "$OUT/s3" --port "$s3p" --bucket cache >"$OUT/s3.log" 2>&1 &
pids+=($!); wait_port "$s3p"
S3="S3_BUCKET=cache S3_ENDPOINT=http://127.0.0.1:$s3p AWS_ACCESS_KEY_ID=milena AWS_SECRET_ACCESS_KEY=milena-secret AWS_REGION=us-east-1"

# Starts a process in this shell; its address in $LAST_ADDR.
start() { # name binary env...
  local p; p=$(free_port)
  env LISTEN_ADDR=127.0.0.1:$p LOG_LEVEL=warn "${@:3}" taskset -c 0 "$2" >"$OUT/$1.log" 2>&1 &
  pids+=($!); wait_port "$p"; LAST_ADDR=127.0.0.1:$p
}
members() { $CLI --addr "http://$1" members 2>/dev/null | wc -l; }
stat() { $CLI --addr "http://$1" stats 2>/dev/null | awk -v n="$2" '$1==n {print $2}'; }
declare -A ROUTER NODES
for t in copies nocopy sync; do
  case $t in
    copies) mode=(WRITE_MODE=async WRITE_REPLICAS=1) ;;
    nocopy) mode=(WRITE_MODE=async WRITE_REPLICAS=0) ;;
    sync) mode=(WRITE_MODE=sync WRITE_REPLICAS=0) ;;
  esac
  start "router-$t" $B/milena-router; ROUTER[$t]=$LAST_ADDR
  NODES[$t]=""
  for i in 1 2 3; do
    start "$t$i" $B/milena-cache ROUTER_ADDR="http://${ROUTER[$t]}" HEARTBEAT_INTERVAL_MS=200 LRU_SIZE=2000000 TTL_SECONDS=0 \
      S3_PREFIX="$t" $S3 "${mode[@]}"
    NODES[$t]="${NODES[$t]} $LAST_ADDR"
  done
  for _ in $(seq 400); do [ "$(members "${ROUTER[$t]}")" = 3 ] && break; sleep 0.05; done
  # Nodes hear the full ring on their next heartbeat.
  sleep 0.5
  taskset -c 1 $LT --target "milena://${ROUTER[$t]}" --keys "$KEYS" --key-size 32 --value-size 100 --prefill --requests 1 --threads 1 --json >/dev/null
done
drain() { # every node of a cluster: queue empty, no copy outstanding
  for n in ${NODES[$1]}; do
    for _ in $(seq 3000); do
      [ "$(stat "$n" tier_queue_depth)" = 0 ] && [ "$(stat "$n" copies_outstanding)" = 0 ] && break
      sleep 0.1
    done
  done
}
for t in copies nocopy sync; do drain "$t"; done

COMMON="--keys $KEYS --key-dist zipf:0.99 --key-size 32 --value-size 100 --duration $DURATION --warmup $WARMUP --threads 1 --connections 64 --json"
run() { # workload round target args...
  local w=$1 r=$2 t=$3; shift 3
  local cmd="taskset -c 1 $LT --target milena://${ROUTER[$t]} $COMMON $*"
  echo "$cmd" >"$OUT/$w.cmd"
  $cmd >"$OUT/$w.$r.$t.json" 2>/dev/null
  echo "  $w round $r $t: $(python3 -c "import json; r=json.load(open('$OUT/$w.$r.$t.json')); print(f\"{r['throughput']:.0f} ops/s p99 {r['p99_us']:.0f} us\")")"
  drain "$t"
}
for w in a b; do
  case $w in
    a) echo "a. $MIX closed loop"; args=(--ratio "$MIX" --pipeline 1) ;;
    b) RATE=$(python3 -c "import json,statistics as s; print(int(s.median(json.load(open(f'$OUT/a.{r}.nocopy.json'))['throughput'] for r in range(1, $ROUNDS + 1))*0.7))")
       echo "b. $MIX open loop at $RATE ops/s"; args=(--ratio "$MIX" --pipeline 4 --rate "$RATE") ;;
  esac
  for r in $(seq "$ROUNDS"); do
    for t in copies nocopy sync; do run "$w" "$r" "$t" "${args[@]}"; done
  done
done

# Memory per dirty entry: S3 away, a burst of writes, then what the
# successors hold for them.
kill "${pids[0]}" 2>/dev/null || true
taskset -c 1 $LT --target "milena://${ROUTER[copies]}" --keys 20000 --key-size 32 --value-size 100 --prefill --requests 1 --threads 1 --json >/dev/null 2>&1 || true
ENTRIES=0; BYTES=0
for n in ${NODES[copies]}; do
  e=$(stat "$n" replica_entries); b=$(stat "$n" replica_bytes)
  ENTRIES=$((ENTRIES + ${e:-0})); BYTES=$((BYTES + ${b:-0}))
done
echo "copies held with S3 away: $ENTRIES entries, $BYTES bytes"

python3 - "$OUT" "$ROUNDS" "$ENTRIES" "$BYTES" "$MIX" <<'PY'
import json, sys, statistics, datetime
out, rounds, entries, nbytes, mix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
g, p = (int(x) for x in mix.split(":"))
share = f"{100*g//(g+p)}/{100*p//(g+p)}"
tag = "replicas-" + mix.replace(":", "-")
label = {"copies": "async, one copy (WRITE_REPLICAS=1)", "nocopy": "async, no copy (WRITE_REPLICAS=0)", "sync": "sync"}
def get(w, r, t, f):
    return json.load(open(f"{out}/{w}.{r}.{t}.json"))[f]
def med(w, t, f):
    return statistics.median(get(w, r, t, f) for r in range(1, rounds + 1))
lines = [f"<!-- {tag}:start -->", f"## Second copies of writes not yet in S3 (issue 16), {share} GET/SET", "",
         f"Command: `bench/replicas.sh` ({datetime.date.today()}). Three clusters side by side, each a router and three nodes writing behind to one local S3 server "
         "(`examples/s3-server.rs`, s3s-fs); routers and nodes pinned to core 0, `milena-loadtest` and the S3 server (nice 19) on core 1; release builds. "
         f"{share} GET/SET, 64 connections, Zipf 0.99 over 100k keys of 32 B, 100 B values, pre-filled; each run starts with every queue empty and every copy settled; rounds interleaved, medians. "
         "Goals: one copy ≥ 0.8× the throughput of no copy and ≥ 3× sync; p99 at 70% load ≤ 1.5× no copy.", ""]
for w, title in (("a", "a. closed loop (saturation)"), ("b", "b. open loop at 70% of the no-copy saturation in a")):
    bt, bp = med(w, "nocopy", "throughput"), med(w, "nocopy", "p99_us")
    st = med(w, "sync", "throughput")
    lines += [f"### {title}", "", "| cluster | ops/s (median) | × no copy | × sync | p50 µs | p99 µs | p99 × no copy | ops/s of each round |", "|---|---|---|---|---|---|---|---|"]
    for t in ("copies", "nocopy", "sync"):
        tp, p99 = med(w, t, "throughput"), med(w, t, "p99_us")
        rr = ", ".join(f"{get(w, r, t, 'throughput'):.0f}" for r in range(1, rounds + 1))
        # A cluster that could not keep up with an open-loop rate records
        # no completed window (0 ops/s): shown as such, not divided by.
        x = lambda a, b: f"{a/b:.2f}" if a and b else "—"
        lines.append(f"| {label[t]} | {tp:.0f} | {x(tp, bt)} | {x(tp, st)} | {med(w, t, 'p50_us'):.0f} | {p99:.0f} | {x(p99, bp)} | {rr} |")
    cmd = open(f"{out}/{w}.cmd").read().strip().replace(" --json", "").split("milena-loadtest ")[1]
    lines += ["", f"Load: `milena-loadtest {cmd}` (the address differs per cluster).", ""]
per = nbytes / entries if entries else 0
lines += [f"Memory per dirty entry on its successor, measured with S3 stopped after 20,000 writes of 32 B keys and 100 B values: "
          f"{entries} copies held in {nbytes} bytes, {per:.0f} B each (key + value + 64 B accounted), plus on the owner the record of where each copy went "
          "(the key, the successors' addresses and the version) until the write is durable.", "", f"<!-- {tag}:end -->"]
block = "\n".join(lines) + "\n"
path = "bench/RESULTS.md"
text = open(path).read()
if f"<!-- {tag}:start -->" in text:
    pre = text.split(f"<!-- {tag}:start -->")[0]
    post = text.split(f"<!-- {tag}:end -->", 1)[1].lstrip("\n")
    text = pre + block + ("\n" + post if post else "")
else:
    text = text.rstrip("\n") + "\n\n" + block
open(path, "w").write(text)
print(block)
PY
