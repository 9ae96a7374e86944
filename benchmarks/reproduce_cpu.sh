#!/usr/bin/env bash
# The runs behind docs/results.md, CPU-sized presets, one thread so that a second core stays free.
# Each block is resumable: rerunning it skips the jobs that finished (skip_done=true).
#   RMTPRUNE_OFFLINE_DATA=../shared/datasets bash benchmarks/reproduce_cpu.sh [block...]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
root=outputs/paper
run() {  # name, seeds
  rmtprune train -m experiment="$1" seed="$2" pruning=none,rmt progress=plain skip_done=true \
    output_root="$root" hydra.sweep.dir="$root/$1" hydra.sweep.subdir='${pruning.name}_seed${seed}'
}
blocks=("$@")
[ ${#blocks[@]} -gt 0 ] || blocks=(mnist1000 fashion1000 cnn mnist2000 fashion2000 ablation)
for b in "${blocks[@]}"; do
  case "$b" in
    mnist1000)   run mnist_fc_1000_1000_1000_500_cpu 0,1,2,3,4 ;;
    fashion1000) run fashion_fc_1000_1000_1000_500_cpu 0,1,2,3,4 ;;
    mnist2000)   run mnist_fc_2000_2000_1000_500_cpu 0,1,2,3,4 ;;
    fashion2000) run fashion_fc_2000_2000_1000_500_cpu 0,1,2,3,4 ;;
    cnn)         run fashion_cnn_cpu 0,1,2 ;;
    ablation)
      # schedule: the paper's horizon 300 vs the run length vs one shot; two tolerances; no L1/L2
      for extra in "schedule.horizon=300" "schedule=oneshot pruning.start_epoch=5" "pruning.tolerance=0.02" \
                   "pruning.tolerance=0.1" "optimizer.l1=0 optimizer.l2=0"; do
        tag=$(echo "$extra" | tr ' =' '__')
        rmtprune train -m experiment=mnist_fc_1000_1000_1000_500_cpu seed=0,1,2 pruning=none,rmt $extra \
          progress=plain skip_done=true output_root="$root" hydra.sweep.dir="$root/ablation_$tag" \
          hydra.sweep.subdir='${pruning.name}_seed${seed}'
      done ;;
    *) echo "unknown block $b" >&2; exit 2 ;;
  esac
done
