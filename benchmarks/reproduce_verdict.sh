#!/usr/bin/env bash
# The sweeps behind the verdict of docs/results.md (issue "A verdict that holds"), one torch thread per run
# so that two jobs run side by side on a 2-core machine. Resumable: finished jobs are skipped and a job
# stopped midway continues from its checkpoint (resume=true), so the script can be stopped and started
# again at any time, also across sessions; it exits non-zero if a job failed. Run it from a git worktree
# pinned at one commit (editing code or conf/ under a running sweep changes its later jobs):
#   git worktree add ../verdict <commit> && cd ../verdict && pip install -e . --no-deps
#   RMTPRUNE_OFFLINE_DATA=../shared/datasets JOBS=2 bash benchmarks/reproduce_verdict.sh [block...]
# Every arm: MNIST (frontier) or Fashion-MNIST (long), 784-1000-1000-1000-500-10, 10 000 training images held
# out for validation (dataset.val_size, the same images for every arm and seed), a cosine lr anneal over
# the last epochs on top of the event calendar (the same for every arm).
#   blocks (default: all, in this order):
#     frontier   10 epochs (budget=cpu): none and control at 10 seeds; rmt at horizon 5, one shot (after
#                epoch 5) and schedule=spikes at 10 seeds, each with magnitude and neuron matched by
#                trajectory (10 seeds) and lowrank uniform matched by trajectory (5 seeds); rmt at
#                horizon 10 and schedule=spikes margin=2 at 5 seeds with the same matched baselines
#     long       Fashion-MNIST, 100 epochs: rmt (LONG_RMT, default the linear schedule at horizon 100),
#                control, none with and without L1+L2, magnitude matched by trajectory; 3 seeds
# then: bash benchmarks/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
root=${ROOT:-outputs/verdict}
case "${JOBS:-1}" in ''|*[!0-9]*|0) echo "JOBS must be a positive integer, not '${JOBS:-}'" >&2; exit 2 ;; esac
launcher=(threads=1)
[ "${JOBS:-1}" -gt 1 ] && launcher=(hydra/launcher=local_parallel "hydra.launcher.n_jobs=$JOBS" threads=1)
status=0
# finished runs committed earlier (docs/results/runs) are put back where resume=true finds them
if [ -d docs/results/runs ]; then
  for job in docs/results/runs/verdict_*/*/ docs/results/runs/long_*/*/; do
    [ -d "$job" ] || continue
    dest="$root/$(basename "$(dirname "$job")")/$(basename "$job")"
    if [ -f "$job/DONE" ] && [ ! -e "$dest" ]; then mkdir -p "$(dirname "$dest")"; cp -r "$job" "$dest"; fi
  done
fi
sweep() {  # folder, overrides...: one Hydra sweep; a failed job is reported and the next sweep still runs
  local folder=$1; shift
  # shellcheck disable=SC2086  # EXTRA: more overrides for every job (a smoke test: EXTRA='dataset.train_size=2000')
  rmtprune train -m "${launcher[@]}" "$@" ${EXTRA:-} device=cpu progress=plain resume=true output_root="$root" \
    hydra.sweep.dir="$root/$folder" 'hydra.sweep.subdir=${pruning.name}_seed${seed}' || status=1
}
V=(experiment=mnist_fc_1000_1000_1000_500 budget=cpu dataset.val_size=10000 optimizer.anneal=cosine
   optimizer.anneal_epochs=3)
TEN=0,1,2,3,4,5,6,7,8,9 FIVE=0,1,2,3,4
point() {  # folder, seeds of rmt and the magnitude/neuron baselines, calendar overrides, rmt overrides...
  local folder=$1 seeds=$2 calendar=($3); shift 3
  sweep "$folder" "${V[@]}" "${calendar[@]}" seed="$seeds" pruning=rmt "$@"
  local m=(pruning.target_from="$root/$folder" pruning.match=trajectory)
  sweep "$folder" "${V[@]}" "${calendar[@]}" seed="$seeds" pruning=magnitude,neuron "${m[@]}"
  sweep "${folder}_uniform" "${V[@]}" "${calendar[@]}" seed="$FIVE" pruning=lowrank pruning.rank_rule=uniform "${m[@]}"
}
blocks=("$@")
[ ${#blocks[@]} -gt 0 ] || blocks=(frontier long)
for b in "${blocks[@]}"; do
  case "$b" in
    frontier)
      sweep verdict_mnist_unpruned "${V[@]}" seed="$TEN" pruning=none,control
      point verdict_mnist_horizon5 "$TEN" "" schedule.horizon=5
      point verdict_mnist_oneshot "$TEN" "pruning.start_epoch=5 pruning.stop_epoch=5" schedule=oneshot
      sweep verdict_mnist_oneshot "${V[@]}" pruning.start_epoch=5 pruning.stop_epoch=5 seed="$TEN" pruning=control
      point verdict_mnist_spikes "$TEN" "" schedule=spikes
      point verdict_mnist_horizon10 "$FIVE" ""
      point verdict_mnist_spikes_margin2 "$FIVE" "" schedule=spikes pruning.margin=2 ;;
    long)
      L=(experiment=fashion_fc_1000_1000_1000_500 epochs=100 dataset.val_size=10000 optimizer.anneal=cosine
         optimizer.anneal_epochs=10)
      sweep long_fashion "${L[@]}" seed=0,1,2 pruning=rmt ${LONG_RMT:-schedule.horizon=100}
      sweep long_fashion "${L[@]}" seed=0,1,2 pruning=none,control
      sweep long_fashion_noreg "${L[@]}" seed=0,1,2 pruning=none optimizer.l1=0 optimizer.l2=0
      sweep long_fashion "${L[@]}" seed=0,1,2 pruning=magnitude pruning.target_from="$root/long_fashion" \
        pruning.match=trajectory ;;
    *) echo "unknown block $b" >&2; exit 2 ;;
  esac
done
exit $status
