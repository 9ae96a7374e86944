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
# keep the raw run files (not the checkpoints) next to the report, so every number can be recomputed
for s in "${sweeps[@]}"; do
  for job in outputs/paper/"$s"/*/; do
    dest="docs/results/runs/$s/$(basename "$job")"
    mkdir -p "$dest"
    for f in summary.json metrics.csv layers.csv magnitude_sweep.csv spectra.npz DONE train.log; do
      [ -f "$job/$f" ] && cp "$job/$f" "$dest/"
    done
    [ -d "$job/.hydra" ] && cp -r "$job/.hydra" "$dest/"
  done
done
