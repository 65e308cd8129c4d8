#!/usr/bin/env bash
# The GPU measurements of recon, in one run on a CUDA machine: at most 9 minutes (each part has a time limit).
#
# 1. Prepare, on a machine with recon's full install (open3d, a package registry), in the repository root:
#      bash benchmarks/gpu_check.sh prepare [--dtu]
#    It writes .gpu_check/ (in .gitignore): the tiny test scene, the default scene (40 views of 96x96
#    with gt_mesh.ply), a trimesh wheel for Python 3.12 (pure Python), and with --dtu a copy of
#    ../shared/data/dtu_scan24_neus (41 MB) for the `dtu` run.
# 2. Run, on the GPU machine, in the repository root, with .gpu_check carried along. It needs python3 with
#    torch (CUDA), triton, numpy, scipy, scikit-image, imageio, pillow, pyyaml, tqdm, matplotlib and
#    pytest; neither open3d nor the network:
#      bash benchmarks/gpu_check.sh run [OUT_DIR]      # OUT_DIR: default $OUT, else .gpu_check/out
#    It prints, and writes to OUT_DIR:
#      - env.txt: the GPU, torch, triton and whether tinycudann imports;
#      - tests.txt: the pytest summary of the `cuda`-marked tests (tests/test_cuda.py) and of the Triton
#        value tests (tests/test_triton_encoding.py), which there run the compiled kernels on the GPU;
#      - encodings.txt: benchmarks/bench_encodings.py --device cuda: forward, forward+backward, eikonal
#        and train-step ms of the Triton kernels, the pure-PyTorch grid and tinycudann (when it imports)
#        at 2^18 and 2^20 points, with the Triton / tinycudann ratios;
#      - fit.csv, fit.txt: benchmarks/bench_fit.py on the default scene with configs/gpu.yaml: Chamfer-L1
#        (% of the bounding-box diagonal), F-score and normal consistency against the fitting seconds,
#        every 250 steps;
#      - a summary at the end: pass/fail counts, the ratios, the first row at Chamfer <= 0.3 %.
#    Each part has its own time limit (tests 170 s, encodings 140 s, fit 210 s), 520 s in all; a part that
#    runs out prints what it had. For the device tool: a 600 s call, carrying .gpu_check.
#      bash benchmarks/gpu_check.sh dtu [OUT_DIR]      # a separate run of at most 6 minutes (prepare --dtu first)
#    fits .gpu_check/dtu_scan24_neus (every view but each 8th, with masks) with configs/gpu.yaml, stopped
#    at 360 s with loading and scoring, and prints the held-out PSNR and mask IoU against the fitting
#    seconds every 500 steps (dtu.csv, dtu.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=.gpu_check
PY=${PYTHON:-python3}

prepare() {
  mkdir -p "$DIR/whl"
  PY_HERE=${PYTHON:-.venv/bin/python}
  [ -x "$PY_HERE" ] || PY_HERE=/work/main/.venv/bin/python
  $PY_HERE - <<'EOF'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from conftest import make_tiny_scene
from recon.datasets import synthesize
out = Path(".gpu_check")
if not (out / "tiny_scene").is_dir():
    make_tiny_scene(out / "tiny_scene")
if not (out / "default_scene").is_dir():
    synthesize(out / "default_scene")
EOF
  version=$($PY_HERE -c "import trimesh; print(trimesh.__version__)")
  $PY_HERE -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$DIR/whl" "trimesh==$version"
  if [ "${1:-}" = "--dtu" ]; then
    rm -rf "$DIR/dtu_scan24_neus" && cp -r ../shared/data/dtu_scan24_neus "$DIR/"
  fi
  du -sh "$DIR"
}

setup_gpu_side() {
  OUT_DIR=${1:-${OUT:-$DIR/out}}
  mkdir -p "$OUT_DIR"
  if ! $PY -c "import trimesh" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/recon_site "$DIR"/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/recon_site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONUNBUFFERED=1
}

run_all() {
  setup_gpu_side "${1:-}"
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    $PY -c "from recon.encodings import TcnnGridEncoding; import torch; print('tinycudann:', TcnnGridEncoding.unavailable(torch.device('cuda')) or 'imports')"
  } 2>&1 | tee "$OUT_DIR/env.txt"

  echo "== cuda-marked tests"
  # the Triton value tests run compiled on CUDA there; the two that build the CPU kernel are left out
  RECON_TINY_SCENE=$PWD/$DIR/tiny_scene timeout 170 $PY -m pytest -q -p no:cacheprovider \
    -k "not importing_recon and not auto_on_cuda" tests/test_cuda.py tests/test_triton_encoding.py 2>&1 \
    | tee "$OUT_DIR/tests.txt" | tail -25

  echo "== encodings"
  timeout 140 $PY benchmarks/bench_encodings.py --device cuda --repeats 5 2>&1 | tee "$OUT_DIR/encodings.txt"

  echo "== fit: default scene, configs/gpu.yaml"
  timeout 210 $PY benchmarks/bench_fit.py --scene "$DIR/default_scene" --config configs/gpu.yaml --encodings hashgrid \
    --iters 2000 --every 250 --resolution 192 --csv "$OUT_DIR/fit.csv" 2>&1 | tee "$OUT_DIR/fit.txt"

  summary
}

run_dtu() {
  setup_gpu_side "${1:-}"
  [ -d "$DIR/dtu_scan24_neus" ] || { echo "no $DIR/dtu_scan24_neus: run 'prepare --dtu' first"; exit 2; }
  echo "== fit: dtu_scan24_neus, configs/gpu.yaml, every 8th view held out"
  timeout 360 $PY benchmarks/bench_fit.py --scene "$DIR/dtu_scan24_neus" --config configs/gpu.yaml --encodings hashgrid \
    --holdout 8 --iters 3000 --every 500 --stop 3000 --csv "$OUT_DIR/dtu.csv" 2>&1 | tee "$OUT_DIR/dtu.txt"
}

summary() {
  echo "== summary"
  grep -E "passed|failed|error" "$OUT_DIR/tests.txt" | tail -1
  grep -E "t/tcnn" "$OUT_DIR/encodings.txt" || echo "no triton/tcnn ratios (tinycudann absent)"
  $PY - "$OUT_DIR/fit.txt" <<'EOF'
import re, sys
rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1]) if line.startswith("encoding=")]
done = [r for r in rows if float(r.get("chamfer_rel_%", "inf")) <= 0.3]
print(f"fit rows: {len(rows)}; " + (f"Chamfer <= 0.3 % first at step {done[0]['step']}, {done[0]['fit_s']} s"
      if done else "Chamfer <= 0.3 % not reached" + (f" (last: {rows[-1]['chamfer_rel_%']} % at {rows[-1]['fit_s']} s)" if rows else "")))
EOF
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run_all "$@" ;;
  dtu) shift; run_dtu "$@" ;;
  *) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
