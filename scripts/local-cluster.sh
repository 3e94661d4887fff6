#!/usr/bin/env bash
# Starts a local Milena cluster on loopback: a router on 127.0.0.1:50050 and
# three cache nodes on 50051-50053 that join it, once the router listens;
# node metrics on 9091-9093. Stays in the foreground;
# the servers run in their own sessions so that Ctrl-C reaches only this
# script, which then stops them in order:
# the nodes (each leaves the ring first), then the router.
set -euo pipefail
cd "$(dirname "$0")/.."

# BIN_DIR: use binaries already built there instead of building release ones.
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --bin milena-router --bin milena-cache --bin milena-cli
  BIN_DIR=target/release
fi
LOG_DIR=${LOG_DIR:-target/local-cluster}
mkdir -p "$LOG_DIR"
# The router listens on ROUTER_PORT, node i on ROUTER_PORT+i, and node i's
# metrics on METRICS_BASE+i.
ROUTER_PORT=${ROUTER_PORT:-50050}
METRICS_BASE=${METRICS_BASE:-9090}
ROUTER=127.0.0.1:$ROUTER_PORT
pids=()

stop() {
  trap "" INT TERM  # a second Ctrl-C must not orphan the servers
  trap - EXIT
  # Nodes first, so they leave the ring while the router still runs.
  for p in "${pids[@]:1}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]:1}"; do wait "$p" 2>/dev/null || true; done
  kill -TERM "${pids[0]}" 2>/dev/null || true
  wait "${pids[0]}" 2>/dev/null || true
  echo "cluster stopped"
}
trap stop EXIT INT TERM

LISTEN_ADDR=$ROUTER RATE_LIMIT=${RATE_LIMIT:-0} LOG_LEVEL=${LOG_LEVEL:-info} \
  setsid "$BIN_DIR/milena-router" >"$LOG_DIR/router.log" 2>&1 &
pids+=($!)
echo $! >"$LOG_DIR/router.pid"

# Wait (bounded: 10 s) until the router listens, so that the nodes join it
# at their first attempt instead of logging `Failed to join router`.
router_up=
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$ROUTER_PORT") 2>/dev/null; then
    router_up=1
    break
  fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "local-cluster: the router exited before listening on $ROUTER; its log, $LOG_DIR/router.log, ends with:" >&2
    tail -n 20 "$LOG_DIR/router.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$router_up" ]; then
  echo "local-cluster: the router does not listen on $ROUTER after 10 s; its log, $LOG_DIR/router.log, ends with:" >&2
  tail -n 20 "$LOG_DIR/router.log" >&2
  exit 1
fi

# Every node writes to one shared directory before acknowledging a put
# (WRITE_MODE=sync: a local disk write is cheap), so killing any node loses
# nothing: its successors read its keys back.
DATA_DIR=${DATA_DIR:-$LOG_DIR/data}
mkdir -p "$DATA_DIR"
for i in 1 2 3; do
  LISTEN_ADDR=127.0.0.1:$((ROUTER_PORT + i)) ROUTER_ADDR=http://$ROUTER LRU_SIZE=${LRU_SIZE:-100000} \
    DATA_DIR=$DATA_DIR WRITE_MODE=${WRITE_MODE:-sync} \
    TTL_SECONDS=${TTL_SECONDS:-3600} METRICS_PORT=$((METRICS_BASE + i)) LOG_LEVEL=${LOG_LEVEL:-info} \
    setsid "$BIN_DIR/milena-cache" >"$LOG_DIR/node$i.log" 2>&1 &
  pids+=($!)
  echo $! >"$LOG_DIR/node$i.pid"
done

# Wait (bounded) until all three nodes are in the ring.
for _ in $(seq 100); do
  n=$("$BIN_DIR/milena-cli" --addr "http://$ROUTER" members 2>/dev/null | wc -l || true)
  [ "$n" = 3 ] && break
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { tail "$LOG_DIR"/*.log; exit 1; }; done
  sleep 0.1
done

# The banner's commands work as printed: the real port, and --addr when
# it is not milena-cli's default (http://localhost:50050).
case $BIN_DIR in
  /*) cli=$BIN_DIR/milena-cli ;;
  *) cli=./$BIN_DIR/milena-cli ;;
esac
[ "$ROUTER_PORT" = 50050 ] || cli="$cli --addr http://localhost:$ROUTER_PORT"
cat <<MSG
Milena is running: router on $ROUTER, nodes on 127.0.0.1:$((ROUTER_PORT + 1))-$((ROUTER_PORT + 3)).
Metrics: router http://localhost:$ROUTER_PORT/metrics, nodes http://localhost:$((METRICS_BASE + 1))/metrics .. http://localhost:$((METRICS_BASE + 3))/metrics (METRICS_BASE+1..3).
Logs: $LOG_DIR/{router,node1,node2,node3}.log; data (the shared tier): $DATA_DIR
Try, in another terminal:
  curl http://localhost:$ROUTER_PORT
  $cli members
  $cli put hello world
  $cli get hello
Ctrl-C stops the cluster.
MSG
wait "${pids[0]}"
