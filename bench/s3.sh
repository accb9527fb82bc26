#!/usr/bin/env bash
# S3 GetObject throughput: directly against an S3 server vs through sluice, on one machine,
# back to back. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/s3.sh [--json] [--help]

Starts s3s-fs (an S3 server that checks SigV4) and the sluice gateway with a `kind: aws`
connection to it, puts one object, then downloads it ROUNDS times with curl from a presigned
URL: signed with the real key straight at s3s-fs, and signed with a sluice key at the gateway
(which checks the signature, records the call, signs again and streams the body through).
Prints the MB/s of each and the ratio. Everything it starts is stopped on exit.

Environment:
  SLUICE_BIN        sluice binary; unset: `cargo build --release -p sluice-gateway`
  SLUICE_TEST_TOOLS where the AWS CLI venv and s3s-fs are (default target/test-tools, as
                    scripts/test installs them)
  BENCH_OBJECT_MB   object size in MiB (default 256)
  BENCH_ROUNDS      downloads per target, alternating (default 5)
  KEEP=1            keep the scratch dir
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

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
READY_TIMEOUT=30
RUN_AS=root
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

TOOLS="${SLUICE_TEST_TOOLS:-$REPO/target/test-tools}"
AWS="$TOOLS/venv/bin/aws"
S3S="$TOOLS/bin/s3s-fs"
[[ -x "$AWS" && -x "$S3S" ]] || die "the AWS CLI and s3s-fs are missing under $TOOLS (scripts/test installs them)"
OBJECT_MB="${BENCH_OBJECT_MB:-256}"
ROUNDS="${BENCH_ROUNDS:-5}"
REAL_KEY=AKIABENCHREALKEY0001
REAL_SECRET=bench-real-secret

if [[ -z "${SLUICE_BIN:-}" ]]; then
  log "building sluice (cargo build --release -p sluice-gateway)"
  (cd "$REPO" && cargo build --release -p sluice-gateway >&2)
  SLUICE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/sluice"
fi

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do stop_pid "$pid" 5; done
  [[ "${KEEP:-0}" == 1 ]] && log "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT

read -r S3_PORT API_PORT PG_PORT HTTP_PORT <<<"$(free_ports 4)"
mkdir -p "$TMP/s3"
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key "$REAL_KEY" --secret-key "$REAL_SECRET" "$TMP/s3" \
  >"$TMP/s3s.log" 2>&1 &
PIDS+=("$!")
wait_port "$S3_PORT" s3s-fs "$!" "$TMP/s3s.log"

cat >"$TMP/sluice.yaml" <<EOF
listen: { api: 127.0.0.1:$API_PORT, postgres: 127.0.0.1:$PG_PORT, http: 127.0.0.1:$HTTP_PORT }
data_dir: $TMP/data
connections:
  - name: bench-s3
    kind: aws
    region: us-east-1
    services: [s3]
    endpoint: http://127.0.0.1:$S3_PORT
    access_key_id: env:BENCH_REAL_KEY
    secret_access_key: env:BENCH_REAL_SECRET
EOF
BENCH_REAL_KEY="$REAL_KEY" BENCH_REAL_SECRET="$REAL_SECRET" NO_COLOR=1 \
  "$SLUICE_BIN" gateway --config "$TMP/sluice.yaml" >"$TMP/sluice.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$HTTP_PORT" sluice "$GW_PID" "$TMP/sluice.log"
"$SLUICE_BIN" users add bench --config "$TMP/sluice.yaml" >/dev/null 2>&1
KEYS="$("$SLUICE_BIN" aws-keys issue --user bench --json --config "$TMP/sluice.yaml")"
SLUICE_KEY="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["access_key_id"])' <<<"$KEYS")"
SLUICE_SECRET="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["secret_access_key"])' <<<"$KEYS")"

aws_as() { # key secret endpoint args...
  local key="$1" secret="$2" endpoint="$3"
  shift 3
  HOME="$TMP" AWS_CONFIG_FILE="$TMP/aws-config" AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret" \
    AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL="$endpoint" "$AWS" "$@"
}
printf '[default]\ns3 =\n    signature_version = s3v4\n' >"$TMP/aws-config"

log "putting a ${OBJECT_MB} MiB object"
head -c "$((OBJECT_MB * 1024 * 1024))" /dev/urandom >"$TMP/object.bin"
aws_as "$REAL_KEY" "$REAL_SECRET" "http://127.0.0.1:$S3_PORT" s3 mb s3://bench >/dev/null
aws_as "$REAL_KEY" "$REAL_SECRET" "http://127.0.0.1:$S3_PORT" s3 cp "$TMP/object.bin" s3://bench/object.bin >/dev/null
rm -f "$TMP/object.bin"

# Presigned for the whole run; each download is one GetObject.
DIRECT_URL="$(aws_as "$REAL_KEY" "$REAL_SECRET" "http://127.0.0.1:$S3_PORT" s3 presign s3://bench/object.bin --expires-in 3600)"
SLUICE_URL="$(aws_as "$SLUICE_KEY" "$SLUICE_SECRET" "http://127.0.0.1:$HTTP_PORT" s3 presign s3://bench/object.bin --expires-in 3600)"

declare -A BYTES_PER_S=([direct]=0 [sluice]=0)
download() { # name url -> adds bytes/s of one download
  local name="$1" url="$2" out
  out="$(curl -s -o /dev/null -w '%{http_code} %{speed_download}' "$url")"
  [[ "${out%% *}" == 200 ]] || die "$name download answered ${out%% *}"
  BYTES_PER_S[$name]="$(awk -v a="${BYTES_PER_S[$name]}" -v b="${out##* }" 'BEGIN { printf "%.0f", a + b }')"
  log "$name: $(awk -v b="${out##* }" 'BEGIN { printf "%.0f MB/s", b / 1e6 }')"
}
download direct "$DIRECT_URL" # warm-up: page cache
for ((i = 0; i < ROUNDS; i++)); do
  download direct "$DIRECT_URL"
  download sluice "$SLUICE_URL"
done
# The warm-up counted once more for direct.
DIRECT_MBS="$(awk -v t="${BYTES_PER_S[direct]}" -v n="$((ROUNDS + 1))" 'BEGIN { printf "%.1f", t / n / 1e6 }')"
SLUICE_MBS="$(awk -v t="${BYTES_PER_S[sluice]}" -v n="$ROUNDS" 'BEGIN { printf "%.1f", t / n / 1e6 }')"
RATIO="$(awk -v a="$SLUICE_MBS" -v b="$DIRECT_MBS" 'BEGIN { printf "%.2f", a / b }')"

stop_pid "$GW_PID" 10
VERIFY="$("$SLUICE_BIN" audit verify --config "$TMP/sluice.yaml" 2>&1 | tail -n 1)"
CALLS="$("$SLUICE_BIN" sessions list --json --config "$TMP/sluice.yaml" | python3 -c 'import json,sys; print(sum(s["statements"] for s in json.load(sys.stdin)))')"

if [[ "$JSON" == 1 ]]; then
  printf '{"object_mib": %s, "rounds": %s, "direct_mb_s": %s, "sluice_mb_s": %s, "ratio": %s, "sluice_calls": %s}\n' \
    "$OBJECT_MB" "$ROUNDS" "$DIRECT_MBS" "$SLUICE_MBS" "$RATIO" "$CALLS"
else
  cat <<EOF
# sluice S3 GetObject throughput
date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)
host:    $(uname -sr), nproc=$(nproc)
peers:   s3s-fs 0.14.1 (SigV4-checking S3 server, files on $(df -T "$TMP" | awk 'NR == 2 { print $2 }')), curl on presigned URLs, all on 127.0.0.1
object:  ${OBJECT_MB} MiB, ${ROUNDS} downloads per target, alternating
command: bench/s3.sh

target  MB/s
direct  $DIRECT_MBS
sluice  $SLUICE_MBS
ratio   $RATIO

sluice: $CALLS calls recorded; audit verify: $VERIFY
EOF
fi
