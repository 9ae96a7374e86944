#!/usr/bin/env bash
# The prepared GPU check: run it the moment a GPU is available, commit what comes back, fix what broke.
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS] [--dry-run]
# Stages (each records its outcome and the next one runs even if it broke):
#   1 setup       wheels from .whl/ into a private site folder, MNIST / Fashion-MNIST from .data/
#                 (both filled by benchmarks/gpu_prepare.sh: the GPU machine has no network and
#                 sees only the working tree), the data cache filled once, the GPU described
#   2 smoke       rmtprune train / prune on the GPU end to end (benchmarks/gpu_smoke.py)
#   3 cuda_tests  pytest -m cuda
#   4 throughput  epoch time next to the matmul bound (fp32, tf32, bf16), the plain-PyTorch loop,
#                 the pruning event, SVD / eigh drivers, checkpoint writes (benchmarks/bench_train.py);
#                 4b compile: the same epoch with compile=true
#   5 protocol    with the time left: 784-1000-1000-1000-500-10 on MNIST, seeds x {none, control, rmt}
#                 side by side on the GPU (benchmarks/gpu_protocol.py)
# Results in --out (default: $OUT when set, else ./gpu_check_out), at most 8 files:
#   gpu_check.log (a line per stage and check), summary.json, summary.csv, throughput.json,
#   logs.tar.gz (every stage's log and the smoke runs' files), protocol_runs.tar.gz (stage 5's raw runs).
# --budget: seconds for the whole check (default 480; stage 5 gets what the others leave).
# --dry-run: every stage on the CPU with tiny sizes (synthetic data or a small MNIST subset), in
#   under 3 minutes, so that the test suite keeps this script working between GPU runs. It checks the
#   script, not the speed: every stage runs its smallest form whatever the budget or the time left
#   (a busy machine is slow, not broken; a stage's limit only stops a hang). On a GPU a stage with no
#   time left is "skipped", in the log and the summary (and the exit code is 1).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
OUTDIR=${OUT:-$REPO/gpu_check_out}
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUTDIR=$2; shift ;;
    --out=*) OUTDIR=${1#--out=} ;;
    --budget) BUDGET=$2; shift ;;
    --budget=*) BUDGET=${1#--budget=} ;;
    -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $DRY = 1 ]; then BASE=170; else BASE=480; fi  # the default budget, for which the stage limits below are set
[ -n "$BUDGET" ] || BUDGET=$BASE
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, not '$BUDGET'" >&2; exit 2 ;; esac
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
mkdir -p "$WORK/logs"
LOG=$OUTDIR/gpu_check.log
STAGES=$WORK/stages.tsv
: > "$LOG"; : > "$STAGES"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg RMTPRUNE_DATA_DIR=$WORK/data-cache
if [ $DRY = 1 ]; then GPU=cpu; else GPU=cuda; fi

say() { echo "$*" | tee -a "$LOG"; }
record() {  # name status seconds note
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STAGES"
  say "stage $1: $2 ($3 s) $4"
}
# stage NAME LIMIT_SECONDS RESERVE_SECONDS CMD...: run CMD with at most LIMIT seconds, fewer if the
# budget minus RESERVE (time kept for the later stages) is shorter; both scale with --budget / the
# default budget. A dry run never shortens or skips a stage: its limit, at least 10 x LIMIT, only stops a
# hang (on a busy 2-core machine, dry-run stages took over 3 x their usual limit). Exit 75
# from CMD: it skipped itself for lack of time. Its output goes to logs/NAME.log.
stage() {
  local name=$1 base=$2 limit=$(($2 * BUDGET / BASE)) reserve=$(($3 * BUDGET / BASE)); shift 3
  local left=$((DEADLINE - reserve - $(date +%s)))
  if [ $DRY = 1 ]; then
    [ "$limit" -lt $((10 * base)) ] && limit=$((10 * base))
  else
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 5 ]; then record "$name" skipped 0 "no time left in the budget"; return 0; fi
  fi
  local t=$(date +%s%N) rc
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  local ms=$(( ($(date +%s%N) - t) / 1000000 ))
  local secs="$((ms / 1000)).$(((ms % 1000) / 100))"
  local last=$(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -1 | cut -c1-200)
  case $rc in
    0) record "$name" ok "$secs" "$last" ;;
    124|137) record "$name" timeout "$secs" "stopped after ${limit} s; last line: $last" ;;
    75) record "$name" skipped "$secs" "$last" ;;
    *) record "$name" failed "$secs" "exit $rc; last line: $last" ;;
  esac
  grep -E '^(smoke|protocol) ' "$WORK/logs/$name.log" >> "$LOG" 2>/dev/null
  return 0
}

say "gpu_check $( [ $DRY = 1 ] && echo '--dry-run ' )budget ${BUDGET} s, repo $REPO, work $WORK, out $OUTDIR"

# --- 1 setup -------------------------------------------------------------------------------------
setup() {
  set -e
  cd "$REPO"
  local site=$WORK/site
  if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    echo "installed $(ls .whl/*.whl | wc -l) wheels from .whl/ into $site"
  else
    mkdir -p "$site"
    echo "no .whl/ folder: using the packages already installed"
  fi
  "$PY" -c "import hydra, omegaconf, torch, rmtprune.cli; print('hydra', hydra.__version__, 'omegaconf', omegaconf.__version__, 'torch', torch.__version__)"
  if [ -f .data/mnist/train-images-idx3-ubyte.gz ]; then
    echo "MNIST files from .data/"
  elif [ -n "${RMTPRUNE_OFFLINE_DATA:-}" ] && [ -f "$RMTPRUNE_OFFLINE_DATA/mnist/train-images-idx3-ubyte.gz" ]; then
    echo "MNIST files from RMTPRUNE_OFFLINE_DATA=$RMTPRUNE_OFFLINE_DATA"
  elif [ $DRY = 1 ]; then
    echo "no MNIST files: the dry run uses synthetic data"
  else
    echo "no MNIST files in .data/ (run benchmarks/gpu_prepare.sh on a machine with the files)" >&2
    exit 1
  fi
  # fill the data cache once, so that jobs running side by side only read it
  "$PY" - <<'EOF'
import os
from pathlib import Path
from omegaconf import OmegaConf
from rmtprune.config.schema import DatasetConfig
from rmtprune.data import prepare_offline
offline = os.environ.get("RMTPRUNE_OFFLINE_DATA")
for name in ("mnist",):  # the only data set the stages use
    if offline and (Path(offline) / name).is_dir():
        ds = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(f"rmtprune/conf/dataset/{name}.yaml"))
        ds.offline_dir = offline
        prepare_offline(ds, Path(os.environ["RMTPRUNE_DATA_DIR"]))
        print("decompressed", name)
EOF
  "$PY" - <<'EOF'
import json, os, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), gpus=torch.cuda.device_count())
print("environment", json.dumps(info))
EOF
  if [ $DRY = 0 ]; then
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'"
  fi
}
if [ -f "$REPO/.data/mnist/train-images-idx3-ubyte.gz" ]; then export RMTPRUNE_OFFLINE_DATA=$REPO/.data; fi
if [ $DRY = 1 ] && [ -z "${RMTPRUNE_OFFLINE_DATA:-}" ] && [ -f "$REPO/../shared/datasets/mnist/train-images-idx3-ubyte.gz" ]; then
  export RMTPRUNE_OFFLINE_DATA=$(cd "$REPO/../shared/datasets" && pwd)
fi
export PYTHONPATH=$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
stage setup 120 0 bash -c "$(declare -f setup); DRY=$DRY PY=$PY WORK=$WORK REPO=$REPO setup"
grep -E '^(environment|hydra|MNIST|no |installed|decompressed)' "$WORK/logs/setup.log" >> "$LOG"

# --- 2 smoke -------------------------------------------------------------------------------------
SMOKE_ARGS=(--work "$WORK/smoke" --json "$WORK/smoke.json")
[ $DRY = 1 ] && SMOKE_ARGS+=(--dry-run)
stage smoke $([ $DRY = 1 ] && echo 100 || echo 200) 60 "$PY" "$REPO/benchmarks/gpu_smoke.py" "${SMOKE_ARGS[@]}"

# --- 3 the CUDA tests ----------------------------------------------------------------------------
# in the dry run they only show that they are collected (and skip: no GPU)
stage cuda_tests $([ $DRY = 1 ] && echo 60 || echo 150) 40 \
  "$PY" -m pytest -q -m cuda -p no:cacheprovider "$REPO/tests/test_cuda.py" -o "addopts=-ra" --junitxml="$WORK/cuda_tests.xml"

# --- 4 throughput --------------------------------------------------------------------------------
if [ $DRY = 1 ]; then
  BENCH=(--device cpu --synthetic --train-size 1024 --topology 784-64-32-10)
else
  BENCH=(--device cuda)
fi
stage throughput $([ $DRY = 1 ] && echo 60 || echo 90) 30 \
  "$PY" "$REPO/benchmarks/bench_train.py" "${BENCH[@]}" --json "$OUTDIR/throughput.json"
stage compile $([ $DRY = 1 ] && echo 60 || echo 90) 60 \
  "$PY" "$REPO/benchmarks/bench_train.py" "${BENCH[@]}" --compile-only --json "$WORK/compile.json"

# --- 5 the protocol with the time left -----------------------------------------------------------
PROTO=(--work "$WORK/protocol" --deadline $((DEADLINE - 20)) --tar "$OUTDIR/protocol_runs.tar.gz")
[ $DRY = 1 ] && PROTO+=(--dry-run)
stage protocol $((100 * BUDGET)) 15 "$PY" "$REPO/benchmarks/gpu_protocol.py" "${PROTO[@]}"

# --- results -------------------------------------------------------------------------------------
"$PY" - "$STAGES" "$WORK" "$OUTDIR" "$DRY" "$((($(date +%s) - T0)))" <<'EOF'
import csv, json, sys
from pathlib import Path
stages_tsv, work, out, dry, total = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
stages = []
with open(stages_tsv) as f:
    for name, status, seconds, note in (line.rstrip("\n").split("\t", 3) for line in f if line.strip()):
        stages.append({"stage": name, "status": status, "seconds": float(seconds), "note": note})
def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
summary = {"dry_run": dry, "total_s": total, "all_ok": all(s["status"] == "ok" for s in stages), "stages": stages,
           "smoke": load(work / "smoke.json"), "throughput": load(out / "throughput.json"),
           "compile": load(work / "compile.json"), "protocol": load(work / "protocol" / "protocol.json")}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
with open(out / "summary.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["stage", "status", "seconds", "note"])
    w.writeheader()
    w.writerows(stages)
EOF
tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='data-cache' --exclude='site' \
  --exclude='protocol' logs smoke $(cd "$WORK" && ls smoke.json compile.json cuda_tests.xml 2>/dev/null) 2>/dev/null
say "gpu_check: done in $(($(date +%s) - T0)) s; results in $OUTDIR"
cut -f1,2 "$STAGES" | tr '\t' ' ' | sed 's/^/  /' | tee -a "$LOG"
status=0
fine=ok; [ $DRY = 1 ] && fine='ok|skipped'  # a dry run checks the script: a stage skipped for time is no failure
grep -qvE $'\t('"$fine"$')\t' "$STAGES" && status=1  # another stage: exit 1 (after the results are written)
[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
exit $status
