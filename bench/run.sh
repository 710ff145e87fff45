#!/usr/bin/env bash
# The pipeline benchmark, in one command: build perch in release mode and the load
# generator (benches/loadgen.rs), run every phase, print the figures as a table.
#
#   bash bench/run.sh                       # defaults: N=50000, C=64, 1000/s for 10 s
#   BENCH_N=20000 BENCH_C=32 bash bench/run.sh
#   bash bench/run.sh --n 20000 --c 32 --chats 16 --skip-ceiling --keep
#
# Several replicas on PostgreSQL (a fresh database on the server of BENCH_DATABASE_URL
# or --database-url per run, dropped after it): the same load runs on sled first, then
# on PostgreSQL with each number of replicas given (a comma list), and a last table puts
# the runs side by side:
#
#   bash bench/run.sh --store postgres --replicas 1,2,3 --database-url postgres://…
#
# Every flag also has a BENCH_* environment variable; `--help` lists them (bash
# bench/run.sh --help). See bench/README.md for what is measured and how.
set -euo pipefail
cd "$(dirname "$0")/.."

store=sled
replicas=1
rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --store) store=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done

echo "[bench] building perch (release)…" >&2
cargo build --release --bin perch
echo "[bench] building the load generator (release)…" >&2
cargo bench --bench loadgen --no-run
perch="${CARGO_TARGET_DIR:-target}/release/perch"
# `cargo bench` runs the harness-less bench binary with our arguments (plus `--bench`).
loadgen() { cargo bench --bench loadgen -q -- --perch "$perch" "$@"; }

if [ "$store" != postgres ]; then
  loadgen --store "$store" --replicas "$replicas" ${rest[@]+"${rest[@]}"}
  exit
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
loadgen --store sled ${rest[@]+"${rest[@]}"} | tee -a "$out"
for r in ${replicas//,/ }; do
  loadgen --store postgres --replicas "$r" ${rest[@]+"${rest[@]}"} | tee -a "$out"
done
echo
echo "side by side (throughput phase; CPU per event until all were delivered):"
{
  printf 'store\treplicas\tdurable events/s\tack p99\tevent->delivered p99\tperch CPU/event\tPostgreSQL CPU/event\n'
  grep '^summary' "$out" | cut -f2-
} | column -t -s $'\t'
