#!/usr/bin/env bash
# The pipeline benchmark, in one command: build perch in release mode and the load
# generator (benches/loadgen.rs), run every phase, print the figures as a table.
#
#   bash bench/run.sh                       # defaults: N=50000, C=64, 1000/s for 10 s
#   BENCH_N=20000 BENCH_C=32 bash bench/run.sh
#   bash bench/run.sh --n 20000 --c 32 --chats 16 --skip-ceiling --keep
#
# Every flag also has a BENCH_* environment variable; `--help` lists them (bash
# bench/run.sh --help). See bench/README.md for what is measured and how.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "[bench] building perch (release)…" >&2
cargo build --release --bin perch
echo "[bench] building the load generator (release)…" >&2
cargo bench --bench loadgen --no-run
# `cargo bench` runs the harness-less bench binary with our arguments (plus `--bench`).
exec cargo bench --bench loadgen -q -- --perch target/release/perch "$@"
