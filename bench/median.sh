#!/usr/bin/env bash
# Runs bench/run.sh RUNS times (default 3) and reports the median of each figure and of each
# ratio (every run measures the floor and the bridge side by side, so ratios are taken per run),
# with the open loop's latency distribution as an HdrHistogram-style plot of the median run:
# bench/out/latency.svg.
#   bench/median.sh                       # 3 runs of bench/run.sh with its defaults
#   RUNS=5 SECONDS_EACH=10 bench/median.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
mkdir -p bench/out
rm -f bench/out/summary-*.json
for i in $(seq 1 "$RUNS"); do
  echo "run $i of $RUNS" >&2
  bench/run.sh > "bench/out/run-$i.txt"
  cp bench/out/summary.json "bench/out/summary-$i.json"
done
python3 bench/report.py bench/out/latency.svg bench/out/summary-*.json
