#!/usr/bin/env bash
# One prepared call on a GPU machine (benchmarks/README.md, "The GPU check"): install the carried
# wheels the machine lacks, build unitscope._C against the machine's toolkit, print GPU, driver and
# toolkit, require the cuda backend, run the cuda tests and a compute-sanitizer subset, the kernel
# benchmarks beside plain PyTorch, and a Broden-scale dissection; write OUTDIR/summary.json,
# OUTDIR/summary.md and OUTDIR/run.log. Every step is time-boxed inside one budget, so a failing or
# slow step leaves the later ones their time. Exits 0 only when a GPU was there and every step passed.
# Without a GPU it says so, runs what it can (build, CPU-side checks, the benchmark scripts as smoke
# tests) and exits 1.
#
# Usage: bash benchmarks/gpu/run.sh OUTDIR
#   PYTHON=...                     interpreter (default: python3, the machine's own torch)
#   UNITSCOPE_GPU_BUDGET_S=450     seconds for the whole script (the device call's limit is larger)
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu/run.sh OUTDIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
BUDGET=${UNITSCOPE_GPU_BUDGET_S:-450}
START=$SECONDS
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/unitscope_gpu.XXXXXX)
SITE=$WORK/site
STEPS=$WORK/steps.tsv
: >"$STEPS"
exec > >(tee -a "$OUT/run.log") 2>&1
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$ROOT/python:$SITE${PYTHONPATH:+:$PYTHONPATH}"

# step NAME BOX COMMAND...: run COMMAND for at most BOX seconds, fewer when the budget is short;
# record name, status (ok, failed, timeout, skipped), seconds and exit code in $STEPS.
step() {
  local name=$1 box=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - 20))
  if ((box > left)); then box=$left; fi
  if ((box < 10)); then
    echo "== $name: skipped, the budget is spent"
    printf '%s\tskipped\t0\t-\n' "$name" >>"$STEPS"
    return 1
  fi
  echo "== $name (at most ${box} s, $((SECONDS - START)) s used)"
  local t0=$SECONDS rc status=ok
  timeout -k 5 "$box" bash -c '"$@"' step "$@"  # through bash: COMMAND may be one of the functions below
  rc=$?
  if ((rc == 124 || rc == 137)); then status=timeout; elif ((rc != 0)); then status=failed; fi
  echo "== $name: $status (rc $rc, $((SECONDS - t0)) s)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$rc" >>"$STEPS"
  return $rc
}

for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do  # nvcc, compute-sanitizer
  if [[ -d $d && ":$PATH:" != *":$d:"* ]]; then PATH=$PATH:$d; fi
done
HAVE_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then HAVE_GPU=1; fi
echo "unitscope GPU check in $ROOT, python: $(command -v "$PY"), budget ${BUDGET} s"
if ((HAVE_GPU == 0)); then
  echo "NO GPU is present (nvidia-smi lists none): running the CPU-side steps and the benchmark scripts as smoke tests; the exit status will be 1"
fi

install_wheels() {  # only the carried packages the interpreter lacks, without any index
  local missing
  missing=$("$PY" - "$ROOT/benchmarks/gpu/wheels" <<'EOF'
import importlib.metadata as md, pathlib, re, sys
for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower()
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(w)
EOF
  ) || return 1
  if [[ -z "$missing" ]]; then
    echo "every carried package is installed already"
    return 0
  fi
  echo "installing: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $missing
}

build() {
  local archs=${UNITSCOPE_CUDA_ARCHS:-90-real} gen=()
  if ((HAVE_GPU)); then archs=${UNITSCOPE_CUDA_ARCHS:-native}; fi
  if command -v ninja >/dev/null; then gen=(-G Ninja); fi
  local pyb
  pyb=$("$PY" -c "import pybind11; print(pybind11.get_cmake_dir())") || return 1
  cmake -S "$ROOT" -B "$ROOT/build/gpu" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DUNITSCOPE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$archs" -Dpybind11_DIR="$pyb" -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null &&
    cmake --build "$ROOT/build/gpu" -j "$(nproc)" &&
    cp "$ROOT"/build/gpu/_C*.so "$ROOT/python/unitscope/"
}

sanitize() {  # sanitize TOOL: the subset under compute-sanitizer, checking unitscope's kernels only
  local tool=$1 log=$WORK/sanitizer_$1.log
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer is not on the PATH" | tee "$log"
    return 1
  fi
  local opts=(--tool "$tool" --error-exitcode 3 --report-api-errors no)
  compute-sanitizer "${opts[@]}" --kernel-name kns=unitscope "$PY" benchmarks/gpu/sanitize_subset.py 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if grep -qiE "unrecogni[sz]ed|unknown option|invalid option|invalid value|unknown filter" "$log"; then  # an older filter syntax: check every kernel
    compute-sanitizer "${opts[@]}" "$PY" benchmarks/gpu/sanitize_subset.py 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  return "$rc"
}

export -f install_wheels build sanitize
export PY ROOT SITE WORK HAVE_GPU
step environment 30 "$PY" benchmarks/gpu/report.py env "$WORK"
step wheels 60 install_wheels
step build 240 build
step backends 30 "$PY" -c "
import unitscope
from unitscope import _backend
print(unitscope.backends(verbose=True), _backend.cuda_versions())
assert 'cuda' in unitscope.backends(), 'the cuda backend is ' + unitscope.backends(verbose=True)['cuda']"
step cuda_tests 150 env UNITSCOPE_REQUIRE_CUDA=1 "$PY" -m pytest -m cuda -q -rfEs -p no:cacheprovider \
  --junitxml="$WORK/junit_cuda.xml" tests/kernels tests/saliency/test_cam.py
step backend_tests 60 "$PY" -m pytest -q -rfEs -p no:cacheprovider --junitxml="$WORK/junit_backends.xml" \
  tests/test_backends.py
step memcheck 60 sanitize memcheck
step racecheck 60 sanitize racecheck
SMOKE=()
if ((HAVE_GPU == 0)); then SMOKE=(--device cpu --quick); fi
step kernel_bench 90 "$PY" benchmarks/gpu/bench_cuda.py "${SMOKE[@]}" --json "$WORK/bench_cuda.json"
LEFT=$((BUDGET - (SECONDS - START) - 30))
DISSECT=(--budget-s $((LEFT > 120 ? LEFT - 90 : 30)))
if ((HAVE_GPU == 0)); then DISSECT=(--device cpu --images 64 --distinct 16 --batch-size 16 --workers 1 --budget-s 60); fi
step dissect "$LEFT" "$PY" benchmarks/gpu/dissect_cuda.py "${DISSECT[@]}" --json "$WORK/dissect.json"

"$PY" benchmarks/gpu/report.py summary "$WORK" "$OUT" "$HAVE_GPU"
rc=$?
echo "total $((SECONDS - START)) s; summary in $OUT/summary.md and $OUT/summary.json"
exit $rc
