#!/usr/bin/env bash
# Starts a local Milena cache node on loopback and keeps it in the
# foreground; Ctrl-C stops it cleanly. (The router and more nodes join this
# script as they land; see README.md.)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin milena-cache --bin milena-cli
NODE_ADDR=${NODE_ADDR:-127.0.0.1:50051}
LOG_DIR=${LOG_DIR:-target/local-cluster}
mkdir -p "$LOG_DIR"

LISTEN_ADDR=$NODE_ADDR LRU_SIZE=${LRU_SIZE:-100000} TTL_SECONDS=${TTL_SECONDS:-3600} \
  LOG_LEVEL=${LOG_LEVEL:-info} ./target/release/milena-cache >"$LOG_DIR/node1.log" 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null; echo "stopped"' EXIT INT TERM

# Wait until the node answers (bounded: 50 tries).
for _ in $(seq 50); do
  ./target/release/milena-cli --addr "http://$NODE_ADDR" ping >/dev/null 2>&1 && break
  kill -0 $node 2>/dev/null || { cat "$LOG_DIR/node1.log"; exit 1; }
  sleep 0.1
done

cat <<MSG
Milena node listening on $NODE_ADDR (log: $LOG_DIR/node1.log)
Try, in another terminal:
  export MILENA_ADDR=http://$NODE_ADDR
  ./target/release/milena-cli put hello world
  ./target/release/milena-cli get hello
  ./target/release/milena-cli stats
Ctrl-C stops it.
MSG
wait $node
