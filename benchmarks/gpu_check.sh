#!/usr/bin/env bash
# The one prepared GPU check of curvlab: run it, in one command, on a machine with an NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # OUTDIR: default $OUT, else /tmp/curvlab-gpu-check
#
# Steps (each under its own timeout; the whole check within GPU_CHECK_BUDGET_S, default 460 s,
# under 8 minutes): the device; a virtual environment that sees the preinstalled CUDA torch/JAX
# (--system-site-packages); pip install cupy-cuda12x (a preinstalled CuPy is used when pip cannot
# reach an index); curvlab with its test extra; CuPy/torch/JAX detection; every GPU-marked test
# with real CuPy; the GPU benchmarks of benchmarks/gpu_bench.py (fused kernels' share of the HBM
# copy bandwidth at n = 1e8; lobpcg and eigsh at n = 1e5 against NumPy; the torch adapter's HVP
# on CUDA against its gradient). Writes OUTDIR/gpu_summary.txt (one line per step, the RESULT
# lines, the tail of each failed step's log), OUTDIR/logs/<step>.log, OUTDIR/gpu_pytest.xml and
# OUTDIR/gpu_<bench>.json. A failed or timed-out step is reported and the check goes on; the exit
# status is non-zero when any step failed.
#
# Knobs: PYTHON (base interpreter, default python3), GPU_CHECK_VENV, GPU_CHECK_NO_VENV=1 (use PYTHON
# as it is), GPU_CHECK_PIP=0 (install nothing), GPU_CHECK_BUDGET_S. A dry run of the script's flow
# on a CPU machine: GPU_CHECK_STRICT_STANDIN=1 (the strict CuPy stand-in; measures no GPU).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
OUTDIR=${1:-${OUT:-${TMPDIR:-/tmp}/curvlab-gpu-check}}
mkdir -p "$OUTDIR/logs" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY="$OUTDIR/gpu_summary.txt"
BUDGET=${GPU_CHECK_BUDGET_S:-460}
VENV=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/curvlab-gpu-venv}
BASE_PY=${PYTHON:-python3}
T0=$(date +%s)
N_FAILED=0
N_WARN=0
SOFT=0  # 1 while running install steps: their failure is a warning (the detect step decides)
HAVE_CUPY=0

: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: run COMMAND under a timeout (capped by what is left of the budget),
# log it, and add one status line (+ RESULT lines, + the log's tail on failure) to the summary.
step() {
  local name=$1 limit=$2
  shift 2
  local log="$OUTDIR/logs/$name.log" left rc t1 dt
  left=$(( BUDGET - ($(date +%s) - T0) - 5 ))
  if [ "$left" -lt 15 ]; then
    say "[$name] SKIPPED: the check's time budget (${BUDGET}s) is spent"
    N_FAILED=$((N_FAILED + 1))
    return 1
  fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  echo "== gpu_check: $name (limit ${limit}s)" >&2
  t1=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$log" 2>&1 < /dev/null
  rc=$?
  dt=$(( $(date +%s) - t1 ))
  if [ "$rc" -eq 0 ]; then
    say "[$name] ok (${dt}s)"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "[$name] TIMEOUT after ${limit}s"
  else
    say "[$name] FAILED (exit $rc, ${dt}s)"
  fi
  grep -h -e '^RESULT' -e '^CHECK FAILED' -e '^INFO' "$log" | sed 's/^/    /' | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then
    if [ "$SOFT" -eq 1 ]; then N_WARN=$((N_WARN + 1)); else N_FAILED=$((N_FAILED + 1)); fi
    tail -n 20 "$log" | awk '{print "    | " $0}' | tee -a "$SUMMARY"  # awk: a newline even after a cut-off line
  fi
  return "$rc"
}

say "curvlab GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${BUDGET}s"

step device 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed "s/^/INFO gpu: /"; nvidia-smi -L'

if [ -n "${GPU_CHECK_NO_VENV:-}" ]; then
  say "[venv] SKIPPED (GPU_CHECK_NO_VENV): using $BASE_PY"
else
  step venv 60 bash -c "'$BASE_PY' -m venv --system-site-packages '$VENV' && '$VENV/bin/python' -c 'import sys; print(\"INFO python\", sys.version.split()[0])'"
fi
PY="$VENV/bin/python"
if [ -n "${GPU_CHECK_NO_VENV:-}" ] || [ ! -x "$PY" ]; then
  say "    (no virtual environment: using $BASE_PY directly)"
  PY=$BASE_PY
fi

# CuPy for CUDA 12 from the package index; an index that cannot be reached fails fast, and a CuPy
# that is already installed is then used (reported as such).
if [ "${GPU_CHECK_STRICT_STANDIN:-0}" = 1 ]; then
  # a dry run of this script on a CPU machine: the strict CuPy stand-in, small sizes, torch on the CPU
  say "DRY RUN (GPU_CHECK_STRICT_STANDIN=1): the strict CuPy stand-in on the CPU; nothing here measures a GPU"
  export CURVLAB_STRICT_CUPY=1 GPU_BENCH_STRICT_STANDIN=1 GPU_BENCH_N=${GPU_BENCH_N:-100000}
  export GPU_BENCH_EIG_N=${GPU_BENCH_EIG_N:-3000} GPU_BENCH_TORCH_DEVICE=cpu
fi

SOFT=1  # an install that fails is a warning: the detect step below says whether what is there works
if [ "${GPU_CHECK_PIP:-1}" = 0 ]; then
  say "[pip] SKIPPED (GPU_CHECK_PIP=0): the environment of $PY is used as it is"
elif ! step pip_cupy 120 "$PY" -m pip install --quiet --disable-pip-version-check --timeout 15 --retries 1 "cupy-cuda12x>=13"; then
  if "$PY" -c 'import cupy' > /dev/null 2>&1; then
    say "    (pip failed, but a preinstalled CuPy imports: using it)"
  fi
fi

if [ "${GPU_CHECK_PIP:-1}" = 0 ]; then
  :
elif ! step pip_curvlab 90 "$PY" -m pip install --quiet --disable-pip-version-check --timeout 15 --retries 1 --no-build-isolation -e ".[test]"; then
  # offline: curvlab itself, its dependencies as preinstalled (a missing one shows in the next step)
  step pip_curvlab_nodeps 60 "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . \
    || say "    (curvlab is imported from the repository root instead)"
fi
SOFT=0
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

cat > "$OUTDIR/logs/detect.py" <<'EOF'
import importlib
import os

for mod in ("numpy", "scipy", "numba", "pytest", "hypothesis"):
    m = importlib.import_module(mod)
    print("INFO", mod, m.__version__)
if os.environ.get("CURVLAB_STRICT_CUPY"):
    from tests import _strict_cupy

    _strict_cupy.install()
    print("INFO DRY RUN: the strict CuPy stand-in, not a GPU")
import cupy
from curvlab import backend

print("INFO cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount(),
      cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
assert backend.gpu_available(), "curvlab does not detect the GPU"
x = cupy.arange(10.0)
assert float(x.sum()) == 45.0 and backend.get_namespace(x) is cupy
try:
    import torch

    print("INFO torch", torch.__version__, "cuda", torch.cuda.is_available())
except Exception as e:
    print("INFO torch unavailable:", repr(e)[:120])
try:
    import jax

    print("INFO jax", jax.__version__, "devices", [d.platform for d in jax.devices()])
except Exception as e:
    print("INFO jax unavailable:", repr(e)[:120])
EOF
if step detect 60 "$PY" "$OUTDIR/logs/detect.py"; then
  HAVE_CUPY=1
fi

if [ "$HAVE_CUPY" -eq 1 ]; then
  step pytest_gpu 170 "$PY" -m pytest -p no:cacheprovider -q -rfEs -m "gpu and not slow" --junitxml="$OUTDIR/gpu_pytest.xml"
  grep -E '[0-9]+ (passed|failed)' "$OUTDIR/logs/pytest_gpu.log" | tail -n 1 | sed 's/^/    pytest: /' | tee -a "$SUMMARY"
  step bench_kernels 70 "$PY" benchmarks/gpu_bench.py kernels "$OUTDIR"
  step bench_eigen 90 "$PY" benchmarks/gpu_bench.py eigen "$OUTDIR"
  step bench_torch 50 "$PY" benchmarks/gpu_bench.py torch "$OUTDIR"
else
  for s in pytest_gpu bench_kernels bench_eigen bench_torch; do
    say "[$s] SKIPPED: no working CuPy with a device (see the detect step)"
    N_FAILED=$((N_FAILED + 1))
  done
fi

say "gpu_check: $N_FAILED step(s) failed or skipped, $N_WARN install warning(s), $(( $(date +%s) - T0 ))s in all; summary in $SUMMARY"
[ "$N_FAILED" -eq 0 ]
