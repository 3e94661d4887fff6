#!/usr/bin/env bash
# The test command from the README: every unit, property, golden-vector and
# integration test in the workspace (real sockets, real binaries, real
# HTTP). Some tests need outside programs from Debian's packages: promtool
# (package prometheus) for the metrics tests, memcached and redis-server for
# the load tester's protocol clients, curl for the documented commands
# (tests/docs.rs), etcd (package etcd-server) for several routers
# (tests/etcd.rs, tests/chaos.rs), python3 with python3-venv for the
# deployment-file checks (tests/deploy.rs). They are installed here when
# missing (as root, as on CI), and memcached and Redis are started on
# loopback for the duration of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# The deployment-file checks (scripts/check-deploy.py, run by
# tests/deploy.rs) use PyYAML and the Kubernetes JSON schemas of
# kubernetes-validate, from PyPI; the protocol tests (tests/memcache.rs,
# tests/redis.rs) use the Python clients pymemcache and redis. They go into a virtual environment under
# target/, never into the system Python (Debian's refuses `pip install`:
# externally-managed-environment); Debian's `python3 -m venv` needs the
# package python3-venv.
PYENV=$PWD/target/pyenv
pyenv_ready() { "$PYENV/bin/python3" -c 'import yaml, kubernetes_validate, pymemcache, redis' 2>/dev/null; }
make_pyenv() { rm -rf "$PYENV" && python3 -m venv "$PYENV"; }

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v memcached >/dev/null 2>&1 || need+=(memcached)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v memccp >/dev/null 2>&1 || need+=(libmemcached-tools)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if ! pyenv_ready; then
  if ! command -v python3 >/dev/null 2>&1; then
    need+=(python3 python3-venv)
  elif ! make_pyenv >/dev/null 2>&1; then
    need+=(python3-venv)
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "the tests need: ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

if ! pyenv_ready; then
  [ -x "$PYENV/bin/pip" ] || make_pyenv
  echo "installing PyYAML, kubernetes-validate, pymemcache and redis (PyPI) into $PYENV"
  "$PYENV/bin/python3" -m pip install -q --disable-pip-version-check pyyaml kubernetes-validate \
    pymemcache==4.0.0 redis==8.1.0
fi
# The venv's python3 comes first on PATH, so the tests' `python3` is it.
export PATH="$PYENV/bin:$PATH"

# Free loopback ports for memcached and Redis.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mc_port=$(free_port)
redis_port=$(free_port)
memcached -u "$(id -un)" -l 127.0.0.1 -p "$mc_port" -U 0 -t 1 &
mc_pid=$!
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
trap 'kill $mc_pid $redis_pid 2>/dev/null || true' EXIT
# Wait (bounded) until both accept connections.
for _ in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/"$mc_port") 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/"$redis_port") 2>/dev/null; then
    break
  fi
  sleep 0.05
done
export MILENA_TEST_MEMCACHED=127.0.0.1:$mc_port
export MILENA_TEST_REDIS=127.0.0.1:$redis_port

cargo test --workspace "$@"
