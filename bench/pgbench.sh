#!/usr/bin/env bash
# pgbench select-only throughput: direct PostgreSQL vs PgBouncer vs sluice, on one machine,
# back to back. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/pgbench.sh [--json] [--no-fsync-durability] [--help]

Starts a private PostgreSQL 15 (fsync=off, scale 10), PgBouncer (session pooling) and the sluice
gateway on free loopback ports, runs `pgbench -S` against each of them for every combination of
clients (1, 16) and protocol mode (simple, prepared), and prints tps and tps/direct ratios.
Everything it starts is stopped on exit.

Options:
  --json                   print the results as one JSON array on stdout (progress goes to stderr)
  --with-fsync-durability  also measure sluice with `audit: { durability: fsync }` (default)
  --no-fsync-durability    measure sluice with its default `durability: write` only (saves ~25% runtime)
  --no-sluice              baselines only (direct and PgBouncer); no sluice build or runs
  --no-relay               skip the bare tokio relay (bench/relay), the floor for a tokio proxy
  --no-policies            skip sluice with a realistic policy rule set (sluice_policies)
  --no-remote              skip sluice through a remote agent (`sluice agent` over the TLS tunnel)
  -h, --help               this text

Environment:
  SLUICE_BIN          sluice binary to use; unset: `cargo build --release -p sluice-gateway` in the
                      repo and use target/release/sluice (honours CARGO_TARGET_DIR)
  RELAY_BIN           bench-relay binary to use; unset: built like sluice (-p sluice-bench-relay)
  BENCH_DURATION      seconds per pgbench run (default 10)
  BENCH_WARMUP        seconds of direct warm-up before measuring (default 3; 0 disables)
  BENCH_CLIENTS       client counts (default "1 16"); -j is min(clients, nproc)
  BENCH_MODES         pgbench -M modes (default "simple prepared")
  BENCH_SCALE         pgbench -i scale (default 10)
  BENCH_SLUICE_SSLMODE  libpq sslmode towards sluice (default disable, like the other targets)
  BENCH_TMPDIR        parent directory of the scratch dir (default $TMPDIR or /tmp); sluice's
                      audit log lives there, so its filesystem decides what fsync costs
  KEEP=1              keep the scratch dir (logs, configs, data) after exit
EOF
}

JSON=0
WITH_WRITE=1
WITH_SLUICE=1
WITH_RELAY=1
WITH_POLICIES=1
WITH_REMOTE=1
for arg in "$@"; do
  case "$arg" in
    --json) JSON=1 ;;
    --with-fsync-durability) WITH_WRITE=1 ;;
    --no-fsync-durability) WITH_WRITE=0 ;;
    --no-sluice) WITH_SLUICE=0; WITH_WRITE=0; WITH_RELAY=0; WITH_POLICIES=0; WITH_REMOTE=0 ;;
    --no-relay) WITH_RELAY=0 ;;
    --no-policies) WITH_POLICIES=0 ;;
    --no-remote) WITH_REMOTE=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-3}"
CLIENTS="${BENCH_CLIENTS:-1 16}"
MODES="${BENCH_MODES:-simple prepared}"
SCALE="${BENCH_SCALE:-10}"
SLUICE_SSLMODE="${BENCH_SLUICE_SSLMODE:-disable}"
PG_PASSWORD=benchpw
PG_BIN=/usr/lib/postgresql/15/bin
PGBENCH="$(command -v pgbench || echo "$PG_BIN/pgbench")"
RUN_AS=postgres
READY_TIMEOUT=30
NPROC="$(nproc)"
INVOCATION="$0${*:+ $*}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS_DIR="$REPO/bench/results"

# Don't let the caller's libpq environment leak into any connection.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSERVICEFILE \
      PGSSLMODE PGOPTIONS PGPASSFILE PGAPPNAME PGTARGETSESSIONATTRS PGREQUIRESSL || true

# Shared helpers: log, die, stop_pid, free_ports, port_open, wait_port, as_pg.
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

# ---------------------------------------------------------------- cleanup
TMP=""
PGDATA=""
PG_STARTED=0
PGB_PIDFILE=""
PGBENCH_PID=""
RELAY_PID=""
declare -a SLUICE_PIDS=()
declare -A SLUICE_PID=() SLUICE_ENV=() AGENT_PID=()

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [[ -n "$PGBENCH_PID" ]] && stop_pid "$PGBENCH_PID" 5
  for pid in "${SLUICE_PIDS[@]}"; do stop_pid "$pid" 10; done
  [[ -n "$RELAY_PID" ]] && stop_pid "$RELAY_PID" 5
  if [[ -n "$PGB_PIDFILE" && -s "$PGB_PIDFILE" ]]; then
    stop_pid "$(cat "$PGB_PIDFILE")" 10
  fi
  if [[ "$PG_STARTED" == 1 ]]; then
    runuser -u "$RUN_AS" -- "$PG_BIN/pg_ctl" -D "$PGDATA" stop -m immediate -w -t 30 >/dev/null 2>&1 \
      || log "pg_ctl stop failed"
  fi
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "${KEEP:-0}" == 1 ]]; then
      log "KEEP=1: scratch dir kept at $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- prerequisites
[[ $EUID -eq 0 ]] || die "run as root (needs runuser to start PostgreSQL and PgBouncer as $RUN_AS)"
id "$RUN_AS" >/dev/null 2>&1 || die "user $RUN_AS missing"
[[ -x "$PG_BIN/initdb" && -x "$PGBENCH" ]] || die "PostgreSQL 15 binaries not found in $PG_BIN"
command -v python3 >/dev/null || die "python3 is needed to find free ports"

if ! command -v pgbouncer >/dev/null; then
  log "installing pgbouncer"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y pgbouncer >&2 || { apt-get update >&2 && apt-get install -y pgbouncer >&2; }
fi
PGBOUNCER="$(command -v pgbouncer)"

if [[ "$WITH_SLUICE" == 0 ]]; then
  SLUICE_BIN=""
elif [[ -z "${SLUICE_BIN:-}" ]]; then
  log "building sluice (cargo build --release -p sluice-gateway)"
  (cd "$REPO" && cargo build --release -p sluice-gateway >&2)
  SLUICE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/sluice"
fi
[[ "$WITH_SLUICE" == 0 || -x "$SLUICE_BIN" ]] || die "sluice binary not found: $SLUICE_BIN"

if [[ "$WITH_RELAY" == 0 ]]; then
  RELAY_BIN=""
elif [[ -z "${RELAY_BIN:-}" ]]; then
  log "building the bare relay (cargo build --release -p sluice-bench-relay)"
  (cd "$REPO" && cargo build --release -p sluice-bench-relay >&2)
  RELAY_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/bench-relay"
fi
[[ "$WITH_RELAY" == 0 || -x "$RELAY_BIN" ]] || die "bench-relay binary not found: $RELAY_BIN"

# ---------------------------------------------------------------- PostgreSQL
TMP="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/sluice-bench.XXXXXX")"
chown "$RUN_AS": "$TMP"
chmod 755 "$TMP"
PGDATA="$TMP/pgdata"
read -r PG_PORT PGB_PORT S_API S_PG SW_API SW_PG RELAY_PORT SP_API SP_PG SR_API SR_PG SR_TUN <<<"$(free_ports 12)"

log "scratch dir $TMP"
printf '%s\n' "$PG_PASSWORD" >"$TMP/pwfile"
chown "$RUN_AS": "$TMP/pwfile"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A scram-sha-256 --pwfile="$TMP/pwfile" \
  >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF

# bench/pgbench.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP'
fsync = off
max_connections = 100
shared_buffers = 256MB
EOF
log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$TMP/postgres.log" -w -t "$READY_TIMEOUT" start >/dev/null \
  || { tail -n 30 "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }
PG_STARTED=1

pgenv() { # host-port user password [sslmode]: env assignments for one target
  echo "PGHOST=127.0.0.1 PGPORT=$1 PGUSER=$2 PGPASSWORD=$3 PGDATABASE=bench PGSSLMODE=${4:-disable}"
}
DIRECT_ENV="$(pgenv "$PG_PORT" postgres "$PG_PASSWORD")"

PGPASSWORD="$PG_PASSWORD" "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
log "pgbench -i -s $SCALE"
env $DIRECT_ENV "$PGBENCH" -i -q -s "$SCALE" >"$TMP/pgbench-init.log" 2>&1 \
  || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------- PgBouncer
mkdir -p "$TMP/pgbouncer"
cat >"$TMP/pgbouncer/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $TMP/pgbouncer
auth_type = scram-sha-256
auth_file = $TMP/pgbouncer/userlist.txt
pool_mode = session
default_pool_size = 20
max_client_conn = 100
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer/pgbouncer.log
pidfile = $TMP/pgbouncer/pgbouncer.pid
EOF
# A plaintext password lets PgBouncer answer the client's SCRAM and do SCRAM upstream itself.
printf '"postgres" "%s"\n' "$PG_PASSWORD" >"$TMP/pgbouncer/userlist.txt"
chown -R "$RUN_AS": "$TMP/pgbouncer"
chmod 600 "$TMP/pgbouncer/userlist.txt"
PGB_PIDFILE="$TMP/pgbouncer/pgbouncer.pid"
log "starting PgBouncer on 127.0.0.1:$PGB_PORT"
as_pg "$PGBOUNCER" -d "$TMP/pgbouncer/pgbouncer.ini" \
  || { tail -n 30 "$TMP/pgbouncer/pgbouncer.log" >&2; die "pgbouncer did not start"; }
wait_port "$PGB_PORT" pgbouncer "" "$TMP/pgbouncer/pgbouncer.log"
PGB_ENV="$(pgenv "$PGB_PORT" postgres "$PG_PASSWORD")"

# ---------------------------------------------------------------- sluice
# The rule set of sluice_policies: what a team would run on a production connection. None of
# the rules matches pgbench's SELECT, so every statement is parsed (once per shape), judged
# and allowed.
POLICIES_YAML='policies:
  - { name: no-drop, match: { statement: [drop, truncate] }, action: deny }
  - { name: unbounded-writes, match: { statement: [update, delete], where: absent }, action: deny }
  - { name: secrets, match: { tables: ["secret.*", "*.api_keys"] }, except: [group:dba], action: deny }
  - { name: agents-read-only, applies_to: ["agent:*"], match: { statement: [insert, update, delete, merge, ddl, copy] }, action: deny }
  - { name: no-file-access, match: { functions: ["pg_read_*", lo_export, "dblink*"] }, action: deny }
  - { name: ddl-needs-review, match: { statement: [ddl] }, action: review, reviewers: [group:dba] }'

start_sluice() { # name durability api_port pg_port [extra yaml] [tunnel port] -> sets SLUICE_ENV_<name>, config in $TMP/<name>.yaml
  local name="$1" durability="$2" api="$3" pgport="$4" extra="${5:-}" tunnel="${6:-}"
  local cfg="$TMP/$name.yaml" logf="$TMP/$name.log" pid token listen_tunnel="" agent=embedded
  local -a pg_password=(BENCH_PG_PASSWORD="$PG_PASSWORD")
  if [[ -n "$tunnel" ]]; then
    # The connection is served by a remote agent; only the agent has the password.
    listen_tunnel=", tunnel: 127.0.0.1:$tunnel"
    agent=bench-agent
    pg_password=()
  fi
  cat >"$cfg" <<EOF
listen: { api: 127.0.0.1:$api, postgres: 127.0.0.1:$pgport$listen_tunnel }
data_dir: $TMP/$name-data
audit: { durability: $durability }
$extra
connections:
  - name: bench
    kind: postgres
    agent: $agent
    address: 127.0.0.1:$PG_PORT
    database: bench
    user: postgres
    password: env:BENCH_PG_PASSWORD
    tls: disable
EOF
  log "starting sluice ($name, durability $durability) on 127.0.0.1:$pgport"
  env -u BENCH_PG_PASSWORD NO_COLOR=1 "${pg_password[@]}" "$SLUICE_BIN" gateway --config "$cfg" >"$logf" 2>&1 &
  pid=$!
  SLUICE_PIDS+=("$pid")
  SLUICE_PID[$name]=$pid
  wait_port "$pgport" "sluice ($name)" "$pid" "$logf"
  "$SLUICE_BIN" users add bench --config "$cfg" >>"$TMP/$name-cli.log" 2>&1 \
    || { cat "$TMP/$name-cli.log" >&2; die "sluice users add failed ($name)"; }
  token="$("$SLUICE_BIN" tokens issue bench --ttl 2h --config "$cfg" 2>>"$TMP/$name-cli.log")" \
    || { cat "$TMP/$name-cli.log" >&2; die "sluice tokens issue failed ($name)"; }
  [[ -n "$token" && "$token" != *[[:space:]]* ]] || die "unexpected token output from sluice tokens issue: '$token'"
  SLUICE_ENV[$name]="$(pgenv "$pgport" bench "$token" "$SLUICE_SSLMODE")"
  [[ -z "$tunnel" ]] || start_agent "$name" "$cfg" "$tunnel"
}

start_agent() { # gateway-name config tunnel-port: registers bench-agent, starts `sluice agent`, waits for it
  local name="$1" cfg="$2" tunnel="$3" added key fp i
  added="$("$SLUICE_BIN" agents add bench-agent --json --config "$cfg" 2>>"$TMP/$name-cli.log")" \
    || { cat "$TMP/$name-cli.log" >&2; die "sluice agents add failed ($name)"; }
  key="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' <<<"$added")"
  fp="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["fingerprint"])' <<<"$added")"
  log "starting the remote agent for $name"
  NO_COLOR=1 BENCH_PG_PASSWORD="$PG_PASSWORD" SLUICE_AGENT_KEY="$key" \
    "$SLUICE_BIN" agent --gateway "https://127.0.0.1:$tunnel" --fingerprint "$fp" >"$TMP/$name-agent.log" 2>&1 &
  SLUICE_PIDS+=("$!")
  AGENT_PID[$name]=$!
  for i in $(seq 1 100); do
    "$SLUICE_BIN" agents list --json --config "$cfg" 2>/dev/null | grep -q '"connected"' && return 0
    sleep 0.1
  done
  cat "$TMP/$name-agent.log" >&2
  die "the remote agent did not connect ($name)"
}

TARGETS="direct pgbouncer"
if [[ "$WITH_RELAY" == 1 ]]; then
  log "starting the bare relay on 127.0.0.1:$RELAY_PORT"
  "$RELAY_BIN" "127.0.0.1:$RELAY_PORT" "127.0.0.1:$PG_PORT" >"$TMP/relay.log" 2>&1 &
  RELAY_PID=$!
  wait_port "$RELAY_PORT" "bench-relay" "$RELAY_PID" "$TMP/relay.log"
  RELAY_ENV="$(pgenv "$RELAY_PORT" postgres "$PG_PASSWORD")"
  TARGETS="$TARGETS relay"
fi
if [[ "$WITH_SLUICE" == 1 ]]; then
  start_sluice sluice write "$S_API" "$S_PG"
  TARGETS="$TARGETS sluice"
fi
if [[ "$WITH_POLICIES" == 1 ]]; then
  start_sluice sluice_policies write "$SP_API" "$SP_PG" "$POLICIES_YAML"
  TARGETS="$TARGETS sluice_policies"
fi
if [[ "$WITH_WRITE" == 1 ]]; then
  start_sluice sluice_fsync fsync "$SW_API" "$SW_PG"
  TARGETS="$TARGETS sluice_fsync"
fi
if [[ "$WITH_REMOTE" == 1 ]]; then
  start_sluice sluice_remote write "$SR_API" "$SR_PG" "" "$SR_TUN"
  TARGETS="$TARGETS sluice_remote"
fi

# ---------------------------------------------------------------- runs
FAILED=0
declare -A TPS=() TXNS=() CPU_US=()
CLK_TCK="$(getconf CLK_TCK)"

proxy_pids() { # target -> the processes that carry its hop (none for direct)
  case "$1" in
    direct) ;;
    pgbouncer) cat "$PGB_PIDFILE" ;;
    relay) echo "$RELAY_PID" ;;
    *) echo "${SLUICE_PID[$1]} ${AGENT_PID[$1]:-}" ;;
  esac
}

cpu_ticks() { # pids... -> user+system clock ticks used so far, all threads of all of them
  local pid total=0 fields
  for pid in "$@"; do
    # Fields after the ")" closing the command name: utime and stime are the 12th and 13th.
    fields="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null)" || continue
    total=$((total + $(awk '{ print $12 + $13 }' <<<"$fields")))
  done
  echo "$total"
}

run_pgbench() { # target mode clients -> TPS[target,mode,clients]
  local target="$1" mode="$2" clients="$3" envvar out rc tps txns
  local jobs=$((clients < NPROC ? clients : NPROC))
  case "$target" in
    direct) envvar="$DIRECT_ENV" ;;
    pgbouncer) envvar="$PGB_ENV" ;;
    relay) envvar="$RELAY_ENV" ;;
    *) envvar="${SLUICE_ENV[$target]}" ;;
  esac
  out="$TMP/run-$target-$mode-$clients.log"
  log "pgbench -S -M $mode -c $clients -j $jobs -T $DURATION  -> $target"
  rc=0
  local -a pids
  read -r -a pids <<<"$(proxy_pids "$target")"
  local ticks_before ticks_after
  ticks_before="$(cpu_ticks "${pids[@]}")"
  # In the background so that a signal to this script is handled at once, not after the run.
  env $envvar "$PGBENCH" -n -S -M "$mode" -c "$clients" -j "$jobs" -T "$DURATION" >"$out" 2>&1 &
  PGBENCH_PID=$!
  wait "$PGBENCH_PID" || rc=$?
  PGBENCH_PID=""
  ticks_after="$(cpu_ticks "${pids[@]}")"
  tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out")"
  txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")"
  if [[ $rc -ne 0 || -z "$tps" ]]; then
    log "pgbench against $target failed (exit $rc); last lines of $out:"
    tail -n 15 "$out" >&2
    FAILED=1
    tps=error
  fi
  TPS[$target,$mode,$clients]="$tps"
  TXNS[$target,$mode,$clients]="${txns:-0}"
  # The proxy's own CPU per transaction: a steadier measure than tps on a busy machine, and
  # the one that decides the ratios when pgbench, PostgreSQL and the proxy share the cores.
  if [[ ${#pids[@]} -gt 0 && "${txns:-0}" -gt 0 && "$tps" != error ]]; then
    CPU_US[$target,$mode,$clients]="$(awk -v t="$((ticks_after - ticks_before))" -v hz="$CLK_TCK" -v n="$txns" \
      'BEGIN { printf "%.1f", t * 1000000 / hz / n }')"
  fi
}

if [[ "$WARMUP" -gt 0 ]]; then
  log "warm-up: ${WARMUP}s direct"
  env $DIRECT_ENV "$PGBENCH" -n -S -c 2 -j 2 -T "$WARMUP" >"$TMP/warmup.log" 2>&1 || true
fi

for mode in $MODES; do
  for clients in $CLIENTS; do
    for target in $TARGETS; do
      run_pgbench "$target" "$mode" "$clients"
    done
  done
done

# ---------------------------------------------------------------- audit check
# Stop the gateways first so the logs are complete and closed, then verify them offline.
AUDIT_LINES=()
for name in $TARGETS; do
  [[ "$name" == sluice* ]] || continue
  stop_pid "${SLUICE_PID[$name]}" 15
  cfg="$TMP/$name.yaml"
  statements=0
  for mode in $MODES; do for clients in $CLIENTS; do
    statements=$((statements + ${TXNS[$name,$mode,$clients]:-0}))
  done; done
  rc=0
  verify="$("$SLUICE_BIN" audit verify --config "$cfg" 2>&1)" || rc=$?
  [[ $rc -eq 0 ]] || FAILED=1
  AUDIT_LINES+=("$name: audit verify (exit $rc): $(echo "$verify" | tail -n 1)")
  vjson="$("$SLUICE_BIN" audit verify --config "$cfg" --json 2>/dev/null)" || true
  events="$(python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
except Exception:
    sys.exit(0)
for k in ("events", "event_count", "records", "count", "total"):
    if isinstance(d, dict) and isinstance(d.get(k), int):
        print(d[k]); break
' <<<"$vjson")"
  AUDIT_LINES+=("$name: audit events: ${events:-unknown (no --json count)}; pgbench transactions through $name: $statements")
done

# ---------------------------------------------------------------- report
# A TPS entry is a number, "error" (the run failed) or empty (not run).
isnum() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
ratio() { if isnum "$1" && isnum "$2"; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; else printf -- "-"; fi; }
fmt() { if isnum "$1"; then awk -v a="$1" 'BEGIN { printf "%.0f", a }'; else printf '%s' "${1:--}"; fi; }
num() { if isnum "$1"; then printf '%s' "$1"; else printf 'null'; fi; }

fs_type="$(df -T "$TMP" | awk 'NR == 2 { print $2 }')"
{
  echo "# sluice pgbench comparison"
  echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host:     $(uname -sr), nproc=$NPROC, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "versions: $("$PGBENCH" --version), $("$PGBOUNCER" --version | head -n 1), $([[ -n "$SLUICE_BIN" ]] && { "$SLUICE_BIN" --version 2>/dev/null || echo "sluice (no --version)"; } || echo "no sluice")"
  echo "setup:    PostgreSQL fsync=off shared_buffers=256MB, pgbench -i -s $SCALE; PgBouncer session pool 20;"
  [[ "$WITH_RELAY" == 1 ]] && echo "          relay = bench/relay: bare tokio byte copy (no parsing, no audit), the floor for a tokio proxy;"
  [[ "$WITH_POLICIES" == 1 ]] && echo "          policies = sluice (write) with six realistic policy rules (bench/pgbench.sh POLICIES_YAML);"
  [[ "$WITH_REMOTE" == 1 ]] && echo "          remote = sluice (write) whose connection a remote agent serves (sluice agent: TLS tunnel, one HTTP/2 stream per session), all on this machine;"
  if [[ "$WITH_SLUICE" == 1 ]]; then
    echo "          sluice audit durability write (default)$([[ $WITH_WRITE == 1 ]] && echo " and fsync") (audit log on $fs_type);"
    echo "          sluice client sslmode=$SLUICE_SSLMODE; everything on 127.0.0.1, no TLS to PostgreSQL/PgBouncer"
  fi
  echo "script:   $INVOCATION (BENCH_DURATION=$DURATION)"
  echo "command:  pgbench -n -S -M <mode> -c <clients> -j <min(clients,nproc)> -T $DURATION"
  echo
  header="mode      clients  direct_tps  pgbouncer_tps  pgbouncer_ratio  relay_tps  relay_ratio  sluice_tps  sluice_ratio"
  [[ "$WITH_POLICIES" == 1 ]] && header="$header  policies_tps  policies_ratio  policies_vs_sluice"
  [[ "$WITH_WRITE" == 1 ]] && header="$header  sluice_fsync_tps  sluice_fsync_ratio"
  [[ "$WITH_REMOTE" == 1 ]] && header="$header  remote_tps  remote_ratio"
  echo "$header"
  for mode in $MODES; do for clients in $CLIENTS; do
    d="${TPS[direct,$mode,$clients]:-}"; b="${TPS[pgbouncer,$mode,$clients]:-}"; s="${TPS[sluice,$mode,$clients]:-}"
    r="${TPS[relay,$mode,$clients]:-}"
    line="$(printf '%-9s %-8s %-11s %-14s %-16s %-10s %-12s %-11s %-12s' "$mode" "$clients" "$(fmt "$d")" \
      "$(fmt "$b")" "$(ratio "$b" "$d")" "$(fmt "$r")" "$(ratio "$r" "$d")" "$(fmt "$s")" "$(ratio "$s" "$d")")"
    if [[ "$WITH_POLICIES" == 1 ]]; then
      p="${TPS[sluice_policies,$mode,$clients]:-}"
      line="$(printf '%s  %-12s  %-14s  %-18s' "$line" "$(fmt "$p")" "$(ratio "$p" "$d")" "$(ratio "$p" "$s")")"
    fi
    if [[ "$WITH_WRITE" == 1 ]]; then
      w="${TPS[sluice_fsync,$mode,$clients]:-}"
      line="$(printf '%s  %-16s  %-18s' "$line" "$(fmt "$w")" "$(ratio "$w" "$d")")"
    fi
    if [[ "$WITH_REMOTE" == 1 ]]; then
      m="${TPS[sluice_remote,$mode,$clients]:-}"
      line="$(printf '%s  %-10s  %s' "$line" "$(fmt "$m")" "$(ratio "$m" "$d")")"
    fi
    echo "${line%"${line##*[! ]}"}"
  done; done
  echo
  echo "CPU per transaction of the proxy processes, µs (utime+stime from /proc/PID/stat over the run;"
  echo "sluice_remote counts gateway and agent; clock ticks of $((1000000 / CLK_TCK)) µs, so short runs are coarse):"
  cpu_targets=""
  for target in $TARGETS; do [[ "$target" == direct ]] || cpu_targets="$cpu_targets $target"; done
  cpu_header="$(printf '%-9s %-8s' mode clients)"
  for target in $cpu_targets; do cpu_header="$(printf '%s %-15s' "$cpu_header" "$target")"; done
  echo "${cpu_header%"${cpu_header##*[! ]}"}"
  for mode in $MODES; do for clients in $CLIENTS; do
    line="$(printf '%-9s %-8s' "$mode" "$clients")"
    for target in $cpu_targets; do
      line="$(printf '%s %-15s' "$line" "${CPU_US[$target,$mode,$clients]:--}")"
    done
    echo "${line%"${line##*[! ]}"}"
  done; done
  echo
  for l in "${AUDIT_LINES[@]}"; do echo "$l"; done
} >"$TMP/report.txt"

mkdir -p "$RESULTS_DIR"
cp "$TMP/report.txt" "$RESULTS_DIR/pgbench-latest.txt"

{
  echo "["
  first=1
  for mode in $MODES; do for clients in $CLIENTS; do
    d="${TPS[direct,$mode,$clients]:-}"; b="${TPS[pgbouncer,$mode,$clients]:-}"; s="${TPS[sluice,$mode,$clients]:-}"
    [[ $first == 1 ]] || echo ","
    first=0
    r="${TPS[relay,$mode,$clients]:-}"
    printf '  {"mode": "%s", "clients": %s, "jobs": %s, "duration_s": %s, "direct_tps": %s, "pgbouncer_tps": %s, "pgbouncer_ratio": %s, "relay_tps": %s, "relay_ratio": %s, "sluice_tps": %s, "sluice_ratio": %s' \
      "$mode" "$clients" "$((clients < NPROC ? clients : NPROC))" "$DURATION" "$(num "$d")" "$(num "$b")" \
      "$(num "$(ratio "$b" "$d")")" "$(num "$r")" "$(num "$(ratio "$r" "$d")")" "$(num "$s")" "$(num "$(ratio "$s" "$d")")"
    if [[ "$WITH_POLICIES" == 1 ]]; then
      p="${TPS[sluice_policies,$mode,$clients]:-}"
      printf ', "policies_tps": %s, "policies_ratio": %s, "policies_vs_sluice": %s' "$(num "$p")" \
        "$(num "$(ratio "$p" "$d")")" "$(num "$(ratio "$p" "$s")")"
    fi
    if [[ "$WITH_WRITE" == 1 ]]; then
      w="${TPS[sluice_fsync,$mode,$clients]:-}"
      printf ', "sluice_fsync_tps": %s, "sluice_fsync_ratio": %s' "$(num "$w")" "$(num "$(ratio "$w" "$d")")"
    fi
    if [[ "$WITH_REMOTE" == 1 ]]; then
      m="${TPS[sluice_remote,$mode,$clients]:-}"
      printf ', "remote_tps": %s, "remote_ratio": %s' "$(num "$m")" "$(num "$(ratio "$m" "$d")")"
    fi
    for target in $TARGETS; do
      [[ "$target" == direct ]] && continue
      printf ', "%s_cpu_us": %s' "$target" "$(num "${CPU_US[$target,$mode,$clients]:-}")"
    done
    printf '}'
  done; done
  echo
  echo "]"
} >"$TMP/results.json"
cp "$TMP/results.json" "$RESULTS_DIR/pgbench-latest.json"

if [[ "$JSON" == 1 ]]; then
  cat "$TMP/report.txt" >&2
  cat "$TMP/results.json"
else
  cat "$TMP/report.txt"
fi

if [[ "$FAILED" == 1 ]]; then
  log "some runs or the audit verification failed; logs are in $TMP (rerun with KEEP=1 to keep them)"
  exit 1
fi
