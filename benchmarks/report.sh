#!/usr/bin/env bash
# Turn the finished sweeps under outputs/paper/ into the tables and figures of docs/results.md:
#   bash benchmarks/report.sh [SWEEP...]     (default: every sweep folder under outputs/paper)
set -euo pipefail
cd "$(dirname "$0")/.."
sweeps=("$@")
[ ${#sweeps[@]} -gt 0 ] || sweeps=($(ls -d outputs/paper/*/ | xargs -n1 basename))
for s in "${sweeps[@]}"; do
  rmtprune compare "outputs/paper/$s" --out "docs/results/$s"
done
