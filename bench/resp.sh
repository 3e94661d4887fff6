#!/usr/bin/env bash
# Redis protocol side by side (issue 18): redis-benchmark -t get,set at
# pipeline 1 and 16 against Redis, a Milena node's REDIS_ADDR, the Milena
# router's Redis port (router + one node), and twemproxy (Debian's
# nutcracker) in front of Redis. Servers and proxies are pinned to core 0,
# redis-benchmark to core 1, as in bench/compare.sh. CPU time per request
# of each server process (utime + stime from /proc over the run) is
# reported beside throughput. Writes the results, with the commands, into
# bench/RESULTS.md between the "resp" markers.
#
# Usage: bench/resp.sh        (REQUESTS=200000 CLIENTS=50 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
KEYS=${KEYS:-100000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=$(mktemp -d)

need_commands redis-server:redis-server redis-benchmark:redis-tools nutcracker:nutcracker
cargo build --release -q --bin milena-cache --bin milena-router --bin milena-cli -p milena

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
start() { # name, then the command; records the pid under the name
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$OUT/$name.pid"
}

declare -A PORT PROCS
rp=$(free_port); start redis taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$rp" --save "" --appendonly no
PORT[redis]=$rp; PROCS[redis]="redis"; wait_port "$rp"

np=$(free_port); nr=$(free_port)
start node env LISTEN_ADDR=127.0.0.1:$np REDIS_ADDR=127.0.0.1:$nr LRU_SIZE=2000000 TTL_SECONDS=0 LOG_LEVEL=warn taskset -c "$SERVER_CPU" ./target/release/milena-cache
PORT[milena-node]=$nr; PROCS[milena-node]="node"; wait_port "$nr"

mp=$(free_port); mr=$(free_port)
start router env LISTEN_ADDR=127.0.0.1:$mp REDIS_ADDR=127.0.0.1:$mr LOG_LEVEL=warn taskset -c "$SERVER_CPU" ./target/release/milena-router
wait_port "$mr"
bp=$(free_port)
start router-node env LISTEN_ADDR=127.0.0.1:$bp ROUTER_ADDR=http://127.0.0.1:$mp LRU_SIZE=2000000 TTL_SECONDS=0 LOG_LEVEL=warn taskset -c "$SERVER_CPU" ./target/release/milena-cache
for _ in $(seq 100); do
  [ "$(./target/release/milena-cli --addr http://127.0.0.1:$mp members 2>/dev/null | wc -l)" = 1 ] && break; sleep 0.05
done
PORT[milena-router]=$mr; PROCS[milena-router]="router router-node"

tr=$(free_port); tp=$(free_port)
start twemproxy-redis taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$tr" --save "" --appendonly no
wait_port "$tr"
cat >"$OUT/nutcracker.yml" <<EOF
milena_bench:
  listen: 127.0.0.1:$tp
  hash: fnv1a_64
  distribution: ketama
  redis: true
  servers:
   - 127.0.0.1:$tr:1
EOF
start twemproxy taskset -c "$SERVER_CPU" nutcracker -c "$OUT/nutcracker.yml"
PORT[twemproxy]=$tp; PROCS[twemproxy]="twemproxy twemproxy-redis"; wait_port "$tp"

TARGETS=(redis milena-node milena-router twemproxy)

# `start` records the pid of taskset/env, which exec the server: the same pid.
ticks() { local sum=0 n; for n in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$(cat "$OUT/$n.pid")/stat"))); done; echo "$sum"; }

for t in "${TARGETS[@]}"; do
  # Every key exists before the gets.
  taskset -c "$CLIENT_CPU" redis-benchmark -h 127.0.0.1 -p "${PORT[$t]}" -t set -n "$KEYS" -r "$KEYS" -d 100 -c "$CLIENTS" -P 16 -q >/dev/null
done
for P in 1 16; do
  for test in get set; do
    for t in "${TARGETS[@]}"; do
      cmd="redis-benchmark -h 127.0.0.1 -p ${PORT[$t]} -t $test -n $REQUESTS -r $KEYS -d 100 -c $CLIENTS -P $P --csv"
      before=$(ticks ${PROCS[$t]})
      taskset -c "$CLIENT_CPU" $cmd >"$OUT/$test.$P.$t.csv"
      after=$(ticks ${PROCS[$t]})
      echo "$cmd" >"$OUT/$test.$P.$t.cmd"
      echo $((after - before)) >"$OUT/$test.$P.$t.ticks"
      echo "  $test -P $P $t: $(tail -1 "$OUT/$test.$P.$t.csv")"
    done
  done
done

python3 - "$OUT" "$REQUESTS" "$(getconf CLK_TCK)" <<'PY'
import csv, datetime, sys
out, requests, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
targets = ["redis", "milena-node", "milena-router", "twemproxy"]
base = {"milena-node": "redis", "milena-router": "twemproxy"}
def rps(test, p, t):
    rows = list(csv.reader(open(f"{out}/{test}.{p}.{t}.csv")))
    return float(rows[-1][1])
lines = ["<!-- resp:start -->", "## Redis protocol: Redis, a node, the router, twemproxy (issue 18)", "",
         f"Command: `bench/resp.sh` ({datetime.date.today()}). Servers and proxies pinned to core 0, "
         "`redis-benchmark` to core 1; 50 connections, 100 B values, keys drawn from 100k "
         "(`-r`), every key set first. `milena-router` is the router and one node behind it, "
         "`twemproxy` is nutcracker and one Redis behind it, both on core 0. CPU µs/request is "
         "utime + stime of the server processes (both, for the two-process rows) over the run, "
         "from /proc, divided by the requests made. Ratios: the node to Redis, the router to twemproxy.", "",
         "| test | pipeline | target | requests/s | ratio | CPU µs/request | command |", "|---|---|---|---|---|---|---|"]
for p in (1, 16):
    for test in ("get", "set"):
        for t in targets:
            r = rps(test, p, t)
            ratio = f"{r / rps(test, p, base[t]):.2f}× {base[t]}" if t in base else ""
            cpu = int(open(f"{out}/{test}.{p}.{t}.ticks").read()) / hz * 1e6 / requests
            cmd = open(f"{out}/{test}.{p}.{t}.cmd").read().strip().replace(" --csv", "")
            lines.append(f"| {test.upper()} | {p} | {t} | {r:.0f} | {ratio} | {cpu:.2f} | `{cmd}` |")
lines += ["", "<!-- resp:end -->"]
block = "\n".join(lines) + "\n"
path = "bench/RESULTS.md"
text = open(path).read()
if "<!-- resp:start -->" in text:
    pre = text.split("<!-- resp:start -->")[0]
    post = text.split("<!-- resp:end -->", 1)[1].lstrip("\n")
    text = pre + block + ("\n" + post if post else "")
else:
    text = text.rstrip("\n") + "\n\n" + block
open(path, "w").write(text)
print(block)
PY
