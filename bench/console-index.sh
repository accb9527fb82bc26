#!/usr/bin/env bash
# How the web console's session list scales with millions of indexed statements. See
# bench/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bench/console-index.sh [--help]

Fills a fresh metadata store with BENCH_SESSIONS sessions of BENCH_PER_SESSION indexed
statements each (default 100000 x 20 = 2 million) and times each query the console's
sessions page makes (newest page, a keyset page in the middle, user, actor + connection,
denied, statement text common and rare): median and worst of 20 runs. Writes the report to
bench/results/console-index-latest.txt too.

Environment:
  BENCH_SESSIONS     sessions (default 100000)
  BENCH_PER_SESSION  statements per session (default 20)
USAGE
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
cargo build --release -q -p sluice-store --example index_scale
./target/release/examples/index_scale "${BENCH_SESSIONS:-100000}" "${BENCH_PER_SESSION:-20}" \
  | tee bench/results/console-index-latest.txt
