#!/usr/bin/env bash
# Helpers shared by the bench scripts (sourced; expects READY_TIMEOUT and RUN_AS to be set).

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[bench] ERROR: $*" >&2; exit 1; }

stop_pid() { # pid [seconds]: TERM, wait, then KILL
  local pid="$1" t="${2:-10}" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < t * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "pid $pid did not stop after ${t}s; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

free_ports() { # n: prints n distinct free loopback TCP ports
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() { # port what [pid] [logfile]
  local port="$1" what="$2" pid="${3:-}" logfile="${4:-}" deadline=$((SECONDS + READY_TIMEOUT))
  until port_open "$port"; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      [[ -n "$logfile" ]] && tail -n 30 "$logfile" >&2
      die "$what exited before listening on port $port"
    fi
    if ((SECONDS >= deadline)); then
      [[ -n "$logfile" ]] && tail -n 30 "$logfile" >&2
      die "$what not listening on port $port after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
}

as_pg() { runuser -u "$RUN_AS" -- "$@"; }

