#!/usr/bin/env bash
# Turn the sweeps behind docs/results.md into its tables and figures.
#  1. the raw files of every finished run under outputs/paper/ and outputs/verdict/ (ROOTS="dir ...": other
#     folders, e.g. a pinned worktree's ../verdict/outputs/verdict; not the checkpoints) are copied to
#     docs/results/runs/<sweep>/<job>/, where they are committed, with this machine's absolute paths made
#     relative to the repository (benchmarks/relative_paths.py; compare never reads them);
#  2. every table and figure is made by `rmtprune compare` from those committed copies, so anyone
#     can recompute them from a clone, without rerunning a single job.
#   bash benchmarks/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=docs/results/runs
relpaths() { "${PYTHON:-python}" benchmarks/relative_paths.py --root "$(pwd -P)" "$@"; }
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
for root in ${ROOTS:-outputs/paper outputs/verdict}; do
  [ -d "$root" ] || continue
  # the exact post-training magnitude baseline needs the normal runs' model.pt, which is not committed:
  # compute it where the models are, cached in each normal run's posthoc_magnitude.csv (copied below); the
  # verdict's sweeps compare trained baselines only
  for sweep in "$root"/*/; do
    case "$(basename "$sweep")" in verdict_*|long_*) continue ;; esac
    rmtprune compare "$sweep" --finetune --no-plots --format csv --out "$scratch" > /dev/null \
      || echo "report.sh: the post-training baseline of $sweep was not computed (see the lines above)" >&2
  done
  # the frontier's counts are compared with the normal runs of the main MNIST sweep (see the end; without
  # fine-tuning: the trained baselines at each count are the comparison there)
  if ls -d "$root"/frontier_* > /dev/null 2>&1; then
    rmtprune compare "$root/mnist_fc_1000_1000_1000_500_cpu" "$root"/frontier_* --no-plots --format csv \
      --out "$scratch" > /dev/null || echo "report.sh: the frontier's post-training baseline was not computed" >&2
  fi
  for job in "$root"/*/*/; do
    [ -f "$job/DONE" ] || continue  # unfinished or failed jobs are not reported
    dest="$runs/$(basename "$(dirname "$job")")/$(basename "$job")"
    # a job already copied keeps its copy: a skip_done relaunch into the same folder rewrites
    # .hydra/ and appends to train.log, but not summary.json
    if [ -f "$job/posthoc_magnitude.csv" ] && [ -d "$dest" ]; then cp "$job/posthoc_magnitude.csv" "$dest/"; fi
    [ -f "$dest/DONE" ] && relpaths --print "$job/summary.json" | cmp -s - "$dest/summary.json" && continue
    mkdir -p "$dest"
    for f in summary.json metrics.csv layers.csv magnitude_sweep.csv posthoc_magnitude.csv spectra.npz DONE train.log; do
      [ -f "$job/$f" ] && cp "$job/$f" "$dest/"
    done
    [ -d "$job/.hydra" ] && cp -r "$job/.hydra" "$dest/"
    relpaths "$dest"
  done
done
[ -d "$runs" ] || { echo "no runs in $runs yet: run benchmarks/reproduce_cpu.sh first" >&2; exit 1; }
eq=(--equivalence 0.3)  # TOST "within 0.3 points" beside every test (Holm-adjusted per table)
# compare's earlier output in a table folder is removed first, so that figures of a grouping that has
# changed (an arm added in its own group gives every figure a new name) do not stay behind
compare_into() {  # out, compare's arguments
  local out=$1; shift
  rm -f "$out"/comparison.csv "$out"/comparison.md "$out"/curves.csv "$out"/frontier.csv "$out"/*.png
  rmtprune compare "$@" --out "$out"
}
for dir in "$runs"/*/; do
  s=$(basename "$dir")
  case "$s" in frontier_*|verdict_*|long_*) ;; *) compare_into "docs/results/$s" "$runs/$s" --finetune "${eq[@]}" ;; esac
done
# the frontier: every compression level on MNIST with the main sweep's arms
if ls -d "$runs"/frontier_* > /dev/null 2>&1; then
  compare_into docs/results/frontier_mnist "$runs/mnist_fc_1000_1000_1000_500_cpu" "$runs"/frontier_* "${eq[@]}"
fi
# the verdict (benchmarks/reproduce_verdict.sh): its frontier, and the long regime
if ls -d "$runs"/verdict_mnist_* > /dev/null 2>&1; then
  compare_into docs/results/verdict_mnist "$runs"/verdict_mnist_* "${eq[@]}"
fi
if ls -d "$runs"/long_fashion* > /dev/null 2>&1; then
  compare_into docs/results/long_fashion "$runs"/long_fashion* "${eq[@]}"
fi
