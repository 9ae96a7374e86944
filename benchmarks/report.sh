#!/usr/bin/env bash
# Turn the finished sweeps under outputs/paper/ into the tables and figures of docs/results.md,
# and keep their raw run files (not the checkpoints) next to the report, so every number can be
# recomputed with `rmtprune compare docs/results/runs/...`.
#   bash benchmarks/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=outputs/paper
for s in $(ls -d "$root"/*/ | xargs -n1 basename); do
  case "$s" in ablation_*) ;; *) rmtprune compare "$root/$s" --out "docs/results/$s" ;; esac
  for job in "$root/$s"/*/; do
    dest="docs/results/runs/$s/$(basename "$job")"
    mkdir -p "$dest"
    for f in summary.json metrics.csv layers.csv magnitude_sweep.csv spectra.npz DONE train.log; do
      [ -f "$job/$f" ] && cp "$job/$f" "$dest/"
    done
    [ -d "$job/.hydra" ] && cp -r "$job/.hydra" "$dest/"
  done
done
# the ablation: every variant of the pruned arm against the normal arm of the main MNIST sweep
if ls -d "$root"/ablation_* > /dev/null 2>&1; then
  rmtprune compare "$root/mnist_fc_1000_1000_1000_500_cpu" "$root"/ablation_* \
    --out docs/results/ablation_mnist_fc_1000_1000_1000_500
fi
