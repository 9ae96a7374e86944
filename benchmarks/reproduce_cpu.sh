#!/usr/bin/env bash
# The runs behind docs/results.md (the paper's presets with budget=cpu), one torch thread per run so that
# two jobs can run side by side on a 2-core machine. Resumable (resume=true): finished jobs are skipped and a
# job stopped midway continues from its checkpoint, so the script can be stopped and started again at any
# time; it exits non-zero if a job failed.
#   RMTPRUNE_OFFLINE_DATA=../shared/datasets JOBS=2 bash benchmarks/reproduce_cpu.sh [block...]
# JOBS=2 runs the jobs of each sweep two at a time (hydra/launcher=local_parallel, one thread each).
#   blocks (default: all, in this order):
#     mnist1000 fashion1000   784-1000-1000-1000-500-10: none, control, rmt at 10 seeds, then magnitude and
#                             lowrank (energy) at 5 seeds, each matched to the rmt run of its seed
#     frontier                MNIST, rmt at three more compression levels (horizon 5 and 7 of 10 epochs, one
#                             shot after epoch 5), magnitude and lowrank matched seed by seed, 3 seeds; at
#                             horizons 5 and 7 the baselines also with pruning.target_epoch=5 / 7
#     mnist2000 fashion2000   784-2000-2000-1000-500-10: none, control, rmt at 5 seeds
#     cnn                     the reference CNN at half width: none, control, rmt at 3 seeds
# then: bash benchmarks/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
root=outputs/paper
case "${JOBS:-1}" in ''|*[!0-9]*|0) echo "JOBS must be a positive integer, not '${JOBS:-}'" >&2; exit 2 ;; esac
launcher=(threads=1)
[ "${JOBS:-1}" -gt 1 ] && launcher=(hydra/launcher=local_parallel "hydra.launcher.n_jobs=$JOBS" threads=1)
status=0
# finished runs committed by an earlier session (docs/results/runs) are put back where resume=true finds them
if [ -d docs/results/runs ]; then
  for job in docs/results/runs/*/*/; do
    dest="$root/$(basename "$(dirname "$job")")/$(basename "$job")"
    if [ -f "$job/DONE" ] && [ ! -e "$dest" ]; then mkdir -p "$(dirname "$dest")"; cp -r "$job" "$dest"; fi
  done
fi
sweep() {  # folder, overrides...: one Hydra sweep; a failed job is reported and the next sweep still runs
  local folder=$1; shift
  rmtprune train -m "${launcher[@]}" "$@" device=cpu progress=plain resume=true output_root="$root" \
    hydra.sweep.dir="$root/$folder" 'hydra.sweep.subdir=${pruning.name}_seed${seed}' || status=1
}
matched() {  # folder, seeds, overrides...: magnitude and lowrank matched to the rmt runs of the same seeds
  local folder=$1 seeds=$2; shift 2
  sweep "$folder" "$@" seed="$seeds" pruning=magnitude,lowrank pruning.target_from="$root/$folder"
}
paper() {  # folder, preset, seeds of the main arms, seeds of the baselines
  sweep "$1" experiment="$2" budget=cpu seed="$3" pruning=rmt,none,control
  [ -n "${4:-}" ] && matched "$1" "$4" experiment="$2" budget=cpu
  return 0
}
frontier() {  # folder, calendar overrides (shared by all arms), rmt overrides...
  local folder=$1 calendar=($2); shift 2
  local e=(experiment=mnist_fc_1000_1000_1000_500 budget=cpu "${calendar[@]}")
  sweep "$folder" "${e[@]}" seed=0,1,2 pruning=rmt "$@"
  matched "$folder" 0,1,2 "${e[@]}"
}
early() {  # rmt sweep folder, epoch: the matched baselines with pruning.target_epoch, in <folder>_target<epoch>
  sweep "$1_target$2" experiment=mnist_fc_1000_1000_1000_500 budget=cpu seed=0,1,2 pruning=magnitude,lowrank \
    pruning.target_from="$root/$1" pruning.target_epoch="$2"
}
blocks=("$@")
[ ${#blocks[@]} -gt 0 ] || blocks=(mnist1000 fashion1000 frontier mnist2000 fashion2000 cnn)
for b in "${blocks[@]}"; do
  case "$b" in
    mnist1000)   paper mnist_fc_1000_1000_1000_500_cpu mnist_fc_1000_1000_1000_500 0,1,2,3,4,5,6,7,8,9 0,1,2,3,4 ;;
    fashion1000) paper fashion_fc_1000_1000_1000_500_cpu fashion_fc_1000_1000_1000_500 0,1,2,3,4,5,6,7,8,9 0,1,2,3,4 ;;
    frontier)
      frontier frontier_mnist_horizon5 "" schedule.horizon=5
      frontier frontier_mnist_horizon7 "" schedule.horizon=7
      frontier frontier_mnist_oneshot "pruning.start_epoch=5 pruning.stop_epoch=5" schedule=oneshot
      # rmt at horizon h reaches its final size after epoch h: the baselines again, reaching theirs there too
      early frontier_mnist_horizon5 5
      early frontier_mnist_horizon7 7 ;;
    mnist2000)   paper mnist_fc_2000_2000_1000_500_cpu mnist_fc_2000_2000_1000_500 0,1,2,3,4 ;;
    fashion2000) paper fashion_fc_2000_2000_1000_500_cpu fashion_fc_2000_2000_1000_500 0,1,2,3,4 ;;
    cnn)         sweep fashion_cnn_cpu experiment=fashion_cnn_cpu seed=0,1,2 pruning=rmt,none,control ;;
    *) echo "unknown block $b" >&2; exit 2 ;;
  esac
done
exit $status
