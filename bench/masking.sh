#!/usr/bin/env bash
# A large result through sluice with and without masking, against direct PostgreSQL, back to
# back on one machine. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/masking.sh [--json] [--help]

Starts a private PostgreSQL 15 with a table of BENCH_ROWS rows of mixed text (names, cities,
an email column, free-text notes of which some hold phone or card numbers), and two sluice
gateways: one without masking rules and one masking the email column and running every
built-in detector over every text cell. pgbench runs `SELECT * FROM people` (the whole table
per transaction) against direct PostgreSQL and both gateways, in simple and prepared mode,
and the script prints result throughput (queries/s and MB/s) and the ratios
sluice/direct, masked/direct and masked/sluice (the cost of masking).

Options:
  --json      print the results as one JSON object on stdout (progress goes to stderr)
  -h, --help  this text

Environment:
  SLUICE_BIN      sluice binary; unset: cargo build --release -p sluice-gateway
  BENCH_ROWS      rows in the table (default 1000000)
  BENCH_DURATION  seconds per pgbench run (default 20)
  BENCH_MODES     pgbench -M modes (default "simple prepared")
  KEEP=1          keep the scratch dir
EOF
}

JSON=0
for arg in "$@"; do
  case "$arg" in
    --json) JSON=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

ROWS="${BENCH_ROWS:-1000000}"
DURATION="${BENCH_DURATION:-20}"
MODES="${BENCH_MODES:-simple prepared}"
PG_PASSWORD=benchpw
PG_BIN=/usr/lib/postgresql/15/bin
PGBENCH="$(command -v pgbench || echo "$PG_BIN/pgbench")"
RUN_AS=postgres
READY_TIMEOUT=30
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSSLMODE PGOPTIONS || true
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

TMP=""
PG_STARTED=0
PGDATA=""
declare -a SLUICE_PIDS=()
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for pid in "${SLUICE_PIDS[@]}"; do stop_pid "$pid" 10; done
  if [[ "$PG_STARTED" == 1 ]]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" stop -m immediate -w -t 30 >/dev/null 2>&1
  fi
  if [[ -n "$TMP" && -d "$TMP" && "${KEEP:-0}" != 1 ]]; then rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $EUID -eq 0 ]] || die "run as root (starts PostgreSQL as $RUN_AS)"
[[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL 15 binaries not found in $PG_BIN"
if [[ -z "${SLUICE_BIN:-}" ]]; then
  log "building sluice (cargo build --release -p sluice-gateway)"
  (cd "$REPO" && cargo build --release -p sluice-gateway >&2)
  SLUICE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/sluice"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/sluice-maskbench.XXXXXX")"
chown "$RUN_AS": "$TMP"
chmod 755 "$TMP"
PGDATA="$TMP/pgdata"
read -r PG_PORT S_API S_PG M_API M_PG <<<"$(free_ports 5)"
printf '%s\n' "$PG_PASSWORD" >"$TMP/pwfile"
chown "$RUN_AS": "$TMP/pwfile"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A scram-sha-256 --pwfile="$TMP/pwfile" \
  >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP'
fsync = off
shared_buffers = 512MB
EOF
log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$TMP/postgres.log" -w -t "$READY_TIMEOUT" start >/dev/null \
  || { tail -n 30 "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }
PG_STARTED=1
PGPASSWORD="$PG_PASSWORD" "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
log "loading $ROWS rows"
PGPASSWORD="$PG_PASSWORD" psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench -v ON_ERROR_STOP=1 <<EOF
CREATE TABLE people AS
SELECT g AS id,
       'Customer ' || g AS name,
       (ARRAY['Berlin', 'Paris', 'Austin', 'Lagos', 'Osaka'])[1 + g % 5] AS city,
       'user' || g || '@example.com' AS email,
       'Order ' || g || ' shipped by ground; ' ||
         CASE WHEN g % 20 = 0 THEN 'call +1 415 555 ' || lpad((g % 10000)::text, 4, '0')
              WHEN g % 20 = 7 THEN 'paid with card 4111 1111 1111 1111'
              ELSE 'no issues reported by the customer so far' END AS note,
       now() - (g || ' minutes')::interval AS created
FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE people;
EOF
BYTES="$(PGPASSWORD="$PG_PASSWORD" psql -X -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench \
  -c "SELECT sum(octet_length(id::text) + octet_length(name) + octet_length(city) + octet_length(email) + octet_length(note) + octet_length(created::text)) FROM people")"

DETECTORS="[email, credit_card, us_ssn, phone, iban, ipv4, ipv6, aws_access_key, aws_secret_key, jwt, private_key, api_token]"
declare -A SLUICE_ENV=()
start_sluice() { # name api pg extra-yaml -> SLUICE_ENV[name] (not in a subshell: the pid must be kept)
  local name="$1" api="$2" pgport="$3" extra="$4" cfg="$TMP/$1.yaml" pid token
  cat >"$cfg" <<EOF
listen: { api: 127.0.0.1:$api, postgres: 127.0.0.1:$pgport }
data_dir: $TMP/$name-data
$extra
connections:
  - { name: bench, kind: postgres, address: 127.0.0.1:$PG_PORT, database: bench, user: postgres, password: env:BENCH_PG_PASSWORD, tls: disable }
EOF
  NO_COLOR=1 BENCH_PG_PASSWORD="$PG_PASSWORD" "$SLUICE_BIN" gateway --config "$cfg" >"$TMP/$name.log" 2>&1 &
  pid=$!
  SLUICE_PIDS+=("$pid")
  wait_port "$pgport" "sluice ($name)" "$pid" "$TMP/$name.log"
  "$SLUICE_BIN" users add bench --config "$cfg" >/dev/null
  token="$("$SLUICE_BIN" tokens issue bench --ttl 2h --config "$cfg")"
  SLUICE_ENV[$name]="PGHOST=127.0.0.1 PGPORT=$pgport PGUSER=bench PGPASSWORD=$token PGDATABASE=bench PGSSLMODE=disable"
}
DIRECT_ENV="PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres PGPASSWORD=$PG_PASSWORD PGDATABASE=bench PGSSLMODE=disable"
log "starting sluice without and with masking"
start_sluice sluice "$S_API" "$S_PG" ""
start_sluice sluice_masked "$M_API" "$M_PG" "masking:
  - { name: bench, columns: [\"*.people.email\"], detectors: $DETECTORS }"
SLUICE_ENV_PLAIN="${SLUICE_ENV[sluice]}"
MASKED_ENV="${SLUICE_ENV[sluice_masked]}"

# Masking must really happen, or the comparison means nothing.
probe="$(env $MASKED_ENV psql -X -At -c "SELECT email, note FROM people WHERE id = 20")"
[[ "$probe" == "[redacted]|Order 20 shipped by ground; call [redacted]" ]] \
  || die "the masked gateway did not mask: $probe"

echo "SELECT * FROM people;" >"$TMP/query.sql"
run() { # target env mode
  local out="$TMP/run-$1-$3.log"
  log "pgbench -M $3 -T $DURATION SELECT * FROM people -> $1"
  env $2 "$PGBENCH" -n -M "$3" -c 1 -T "$DURATION" -f "$TMP/query.sql" >"$out" 2>&1 \
    || { tail -n 15 "$out" >&2; die "pgbench against $1 failed"; }
  echo "$1 $3 $(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out")" >>"$TMP/qps.txt"
}
env $DIRECT_ENV "$PGBENCH" -n -c 1 -T 3 -f "$TMP/query.sql" >/dev/null 2>&1 || true
for mode in $MODES; do
  run direct "$DIRECT_ENV" "$mode"
  run sluice "$SLUICE_ENV_PLAIN" "$mode"
  run sluice_masked "$MASKED_ENV" "$mode"
done

python3 - "$JSON" "$ROWS" "$BYTES" "$DURATION" "$MODES" "$TMP/qps.txt" <<'PY'
import json, sys
as_json, rows, nbytes, duration, modes = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split()
qps = {}
for line in open(sys.argv[6]):
    target, mode, value = line.split()
    qps[(target, mode)] = float(value)
result = {"rows": rows, "bytes_per_query": nbytes, "duration_s": int(duration), "modes": {}}
for m in modes:
    d, s, k = qps[("direct", m)], qps[("sluice", m)], qps[("sluice_masked", m)]
    result["modes"][m] = {
        "qps": {"direct": d, "sluice": s, "sluice_masked": k},
        "mb_per_s": {t: round(v * nbytes / 1e6, 1) for t, v in (("direct", d), ("sluice", s), ("sluice_masked", k))},
        "sluice_vs_direct": round(s / d, 3), "masked_vs_direct": round(k / d, 3), "masked_vs_sluice": round(k / s, 3),
    }
if as_json:
    print(json.dumps(result, indent=2))
else:
    print(f"SELECT * FROM people: {rows} rows, {nbytes / 1e6:.0f} MB of text per query, {duration}s per run")
    print(f"{'mode':10} {'direct q/s':>11} {'sluice q/s':>11} {'masked q/s':>11} {'sluice/direct':>14} {'masked/direct':>14} {'masked/sluice':>14}")
    for m, r in result["modes"].items():
        q = r["qps"]
        print(f"{m:10} {q['direct']:11.3f} {q['sluice']:11.3f} {q['sluice_masked']:11.3f} {r['sluice_vs_direct']:14.3f} {r['masked_vs_direct']:14.3f} {r['masked_vs_sluice']:14.3f}")
PY
