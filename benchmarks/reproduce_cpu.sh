#!/usr/bin/env bash
# The runs behind docs/results.md (CPU-sized presets), one torch thread per run so that two blocks
# can run side by side on a 2-core machine. Resumable: finished jobs are skipped (skip_done=true).
#   RMTPRUNE_OFFLINE_DATA=../shared/datasets bash benchmarks/reproduce_cpu.sh [block...]
# JOBS=2 runs the jobs of each sweep two at a time (hydra/launcher=local_parallel, one thread each).
#   blocks: mnist1000 fashion1000 ablation mnist2000 fashion2000 cnn   (default: all, in this order)
# then: bash benchmarks/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
root=outputs/paper
case "${JOBS:-1}" in ''|*[!0-9]*|0) echo "JOBS must be a positive integer, not '$JOBS'" >&2; exit 2 ;; esac
launcher=()
[ "${JOBS:-1}" -gt 1 ] && launcher=(hydra/launcher=local_parallel "hydra.launcher.n_jobs=$JOBS" threads=1)
sweep() {  # folder, overrides...
  local folder=$1; shift
  rmtprune train -m "${launcher[@]}" "$@" progress=plain skip_done=true output_root="$root" hydra.sweep.dir="$root/$folder" \
    'hydra.sweep.subdir=${pruning.name}_seed${seed}'
}
arms() { sweep "$1" experiment="$1" seed="$2" pruning=none,rmt; }
blocks=("$@")
[ ${#blocks[@]} -gt 0 ] || blocks=(mnist1000 fashion1000 ablation mnist2000 fashion2000 cnn)
for b in "${blocks[@]}"; do
  case "$b" in
    mnist1000)   arms mnist_fc_1000_1000_1000_500_cpu 0,1,2,3,4 ;;
    fashion1000) arms fashion_fc_1000_1000_1000_500_cpu 0,1,2,3,4 ;;
    mnist2000)   arms mnist_fc_2000_2000_1000_500_cpu 0,1,2,3,4 ;;
    fashion2000) arms fashion_fc_2000_2000_1000_500_cpu 0,1,2,3,4 ;;
    cnn)         arms fashion_cnn_cpu 0,1,2 ;;
    ablation)
      e=(experiment=mnist_fc_1000_1000_1000_500_cpu seed=0,1,2)
      sweep ablation_horizon300 "${e[@]}" pruning=rmt schedule.horizon=300
      sweep ablation_oneshot "${e[@]}" pruning=rmt schedule=oneshot pruning.start_epoch=5 pruning.stop_epoch=5
      sweep ablation_tolerance0.01 "${e[@]}" pruning=rmt pruning.tolerance=0.01
      sweep ablation_tolerance1 "${e[@]}" pruning=rmt pruning.tolerance=1.0
      sweep ablation_no_penalty "${e[@]}" pruning=none,rmt optimizer.l1=0 optimizer.l2=0 ;;
    *) echo "unknown block $b" >&2; exit 2 ;;
  esac
done
