#!/usr/bin/env bash
# Fill the git-ignored folders that benchmarks/gpu_check.sh sets up from on the GPU machine, which
# reaches no network and sees only the working tree (not ../shared):
#   .whl/   wheels of what rmtprune needs beyond the GPU machine's image (PyTorch, NumPy, SciPy,
#           pandas, rich, matplotlib, PyYAML, joblib and cloudpickle are there): hydra-core,
#           omegaconf, antlr4-python3-runtime (built here: PyPI has no wheel of 4.9.3), the Hydra
#           launchers, submitit, and joblib / cloudpickle at this machine's versions; pure-Python
#           wheels, at the versions installed here, for Python 3.12 on x86-64 Linux
#   .data/  mnist/ and fashion_mnist/ with the IDX .gz files, copied from $RMTPRUNE_OFFLINE_DATA
#           (default ../shared/datasets)
# The files travel with the working tree (carry .whl and .data; about 42 MiB with Fashion-MNIST,
# 12 MiB with --mnist-only) and are never committed (.gitignore).
#   bash benchmarks/gpu_prepare.sh [--mnist-only]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
datasets=(mnist fashion_mnist)
[ "${1:-}" = "--mnist-only" ] && datasets=(mnist)

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null; }
pins=()
for pkg in hydra-core omegaconf hydra-joblib-launcher hydra-submitit-launcher submitit joblib cloudpickle; do
  v=$(version "$pkg") || { echo "gpu_prepare.sh: $pkg is not installed here; install rmtprune[test] first" >&2; exit 2; }
  pins+=("$pkg==$v")
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
antlr=$(version antlr4-python3-runtime || echo 4.9.3)
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$antlr"
echo "wheels in .whl/:"; ls .whl

src=${RMTPRUNE_OFFLINE_DATA:-../shared/datasets}
for d in "${datasets[@]}"; do
  [ -f "$src/$d/train-images-idx3-ubyte.gz" ] || { echo "gpu_prepare.sh: no $src/$d/*.gz (set RMTPRUNE_OFFLINE_DATA)" >&2; exit 2; }
  mkdir -p ".data/$d"
  cp "$src/$d"/*.gz ".data/$d/"
done
echo "data in .data/: $(du -sh .data | cut -f1)"
echo "then, on the GPU machine: bash benchmarks/gpu_check.sh   (carry .whl and .data)"
