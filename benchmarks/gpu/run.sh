#!/usr/bin/env bash
# One prepared call on a GPU machine (benchmarks/README.md, "The GPU check"). First the toolchain
# (which nvcc cmake ninja, nvcc's version, Python.h), then: install the carried wheels the machine
# lacks, generate the dissection's dataset in the background, build unitscope._C against the
# machine's toolkit, the cuda tests, the module's register/spill report, the kernel benchmarks (with
# torch.profiler rows, peak memory, a read-bandwidth floor), the dissection timing, and the
# compute-sanitizer tools last (memcheck, racecheck, initcheck, synccheck). Every step is time-boxed
# inside one budget, and the summary is rewritten after each step, so a call cut short still brings
# back what it did. OUTDIR gets at most 8 files, no folders: run.log, summary.md, summary.json,
# junit_cuda.xml, junit_backends.xml, bench_cuda.json, dissect.json, resources.txt.
# Exits 0 only when a GPU was there and every step passed; without a GPU it says so, runs the
# CPU-side steps and the benchmark scripts as smoke tests, and exits 1.
#
# Usage: bash benchmarks/gpu/run.sh OUTDIR
#   PYTHON=...                     interpreter (default: python3, the machine's own torch)
#   UNITSCOPE_GPU_BUDGET_S=550     seconds for the whole script (fits a device call of timeout_s=590)
#   UNITSCOPE_GPU_STEPS="..."      only these steps (the fallback after a call that failed half-way):
#                                  build backends cuda_tests backend_tests resources kernel_bench
#                                  dissect memcheck racecheck initcheck synccheck
#   UNITSCOPE_GPU_NO_BUILD=1       use the unitscope/_C*.so already in the tree (skip the build)
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu/run.sh OUTDIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
BUDGET=${UNITSCOPE_GPU_BUDGET_S:-550}
ONLY=${UNITSCOPE_GPU_STEPS:-}
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

# ---- the toolchain, before anything else: nvcc from CUDACXX, the PATH, /usr/local/cuda/bin or the
#      CUDA home torch reports; its folder goes on the PATH (cuobjdump, compute-sanitizer live there)
TORCH_CUDA_HOME=$("$PY" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')" 2>/dev/null)
NVCC=""
for c in "${CUDACXX:-}" "$(command -v nvcc 2>/dev/null)" /usr/local/cuda/bin/nvcc "${TORCH_CUDA_HOME:+$TORCH_CUDA_HOME/bin/nvcc}"; do
  if [[ -n $c && -x $c ]]; then NVCC=$c; break; fi
done
if [[ -n $NVCC ]]; then export CUDACXX=$NVCC; fi
# nvcc may be a wrapper script elsewhere (/usr/local/bin): the toolkit's own folders are searched too
for bin in "${NVCC:+$(dirname "$(readlink -f "$NVCC")")}" /usr/local/cuda/bin "${TORCH_CUDA_HOME:+$TORCH_CUDA_HOME/bin}"; do
  for d in "$bin" "$bin/../compute-sanitizer"; do
    if [[ -n $bin && -d $d && ":$PATH:" != *":$d:"* ]]; then PATH=$PATH:$d; fi
  done
done
echo "unitscope GPU check in $ROOT, python: $(command -v "$PY"), budget ${BUDGET} s"
echo "which nvcc cmake ninja:"
for t in nvcc cmake ninja cuobjdump compute-sanitizer; do printf '  %-18s %s\n' "$t" "$(command -v "$t" || echo 'NOT FOUND')"; done
echo "  CUDACXX=${CUDACXX:-unset}; torch's CUDA home: ${TORCH_CUDA_HOME:-none}"
if [[ -n $NVCC ]]; then "$NVCC" --version | tail -2 | sed 's/^/  /'; else echo "  nvcc: NOT FOUND (the build cannot compile the CUDA kernels)"; fi
"$PY" -c "import os, sysconfig; p = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); print('  Python.h:', p, 'exists' if os.path.isfile(p) else 'MISSING (pybind11 cannot build)')"

HAVE_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then HAVE_GPU=1; fi
if ((HAVE_GPU == 0)); then
  echo "NO GPU is present (nvidia-smi lists none): the CPU-side steps and the benchmark scripts run as smoke tests; the exit status will be 1"
fi

summarize() { "$PY" benchmarks/gpu/report.py summary "$WORK" "$OUT" "$HAVE_GPU" >/dev/null 2>&1; }

# step NAME BOX COMMAND...: run COMMAND for at most BOX seconds, fewer when the budget is short;
# record name, status (ok, failed, timeout, skipped), seconds and exit code in $STEPS, then rewrite
# the summary. With UNITSCOPE_GPU_STEPS set, a step not named there is left out (environment and
# wheels always run).
step() {
  local name=$1 box=$2
  shift 2
  if [[ -n $ONLY && " $ONLY environment wheels " != *" $name "* ]]; then return 0; fi
  local left=$((BUDGET - (SECONDS - START) - 15))
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
  summarize
  return $rc
}

# a step that cannot run here: recorded as skipped with the reason
not_here() {
  if [[ -n $ONLY && " $ONLY " != *" $1 "* ]]; then return 0; fi
  echo "== $1: skipped ($2)"
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$STEPS"
}

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
  if [[ ${UNITSCOPE_GPU_NO_BUILD:-0} == 1 ]]; then
    echo "UNITSCOPE_GPU_NO_BUILD=1: using $(ls "$ROOT"/python/unitscope/_C*.so 2>/dev/null || echo 'no module!')"
    ls "$ROOT"/python/unitscope/_C*.so >/dev/null 2>&1
    return
  fi
  local archs=${UNITSCOPE_CUDA_ARCHS:-90-real} gen=() nvcc=()
  if ((HAVE_GPU)); then archs=${UNITSCOPE_CUDA_ARCHS:-native}; fi
  if command -v ninja >/dev/null; then gen=(-G Ninja); fi
  if [[ -n ${CUDACXX:-} ]]; then nvcc=(-DCMAKE_CUDA_COMPILER="$CUDACXX"); fi
  local pyb
  pyb=$("$PY" -c "import pybind11; print(pybind11.get_cmake_dir())") || return 1
  cmake -S "$ROOT" -B "$ROOT/build/gpu" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DUNITSCOPE_CUDA=ON -DUNITSCOPE_TORCH_OPS=OFF \
    "${nvcc[@]}" -DCMAKE_CUDA_ARCHITECTURES="$archs" -Dpybind11_DIR="$pyb" \
    -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null &&
    cmake --build "$ROOT/build/gpu" -j "$(nproc)" &&
    cp "$ROOT"/build/gpu/_C*.so "$ROOT/python/unitscope/"
}

resources() {  # registers, spills, shared memory per kernel of the built module
  cuobjdump --dump-resource-usage "$ROOT"/python/unitscope/_C*.so >"$OUT/resources.txt" 2>&1
  local rc=$?
  grep -E "Function|REG|STACK" "$OUT/resources.txt" | head -40
  return $rc
}

sanitize() {  # sanitize TOOL: the subset under compute-sanitizer, checking unitscope's kernels only;
  # torch's caching allocator off, so that an out-of-bounds access cannot land in a cached block
  local tool=$1 log=$WORK/sanitizer_$1.log
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer is not on the PATH" | tee "$log"
    return 1
  fi
  local opts=(--tool "$tool" --error-exitcode 3 --report-api-errors no)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer "${opts[@]}" --kernel-name kns=unitscope \
    "$PY" benchmarks/gpu/sanitize_subset.py 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if grep -qiE "unrecogni[sz]ed|unknown option|invalid option|invalid value|unknown filter" "$log"; then  # an older filter syntax: check every kernel
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer "${opts[@]}" "$PY" benchmarks/gpu/sanitize_subset.py 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
  fi
  return "$rc"
}

export -f install_wheels build resources sanitize
export PY ROOT SITE WORK OUT HAVE_GPU CUDACXX PATH

step environment 30 "$PY" benchmarks/gpu/report.py env "$WORK"
step wheels 60 install_wheels

# the dissection's dataset, generated while the module builds and the tests run
DATA=(--work "$WORK/dissect")
if ((HAVE_GPU == 0)); then DATA+=(--device cpu --images 64 --distinct 16 --size 64 --batch-size 16 --workers 1); fi
GEN_PID=""
if [[ -z $ONLY || " $ONLY " == *" dissect "* ]]; then
  "$PY" benchmarks/gpu/dissect_cuda.py "${DATA[@]}" --generate-only >"$WORK/generate.log" 2>&1 &
  GEN_PID=$!
fi

step build 240 build
step backends 30 "$PY" -c "
import unitscope
from unitscope import _backend
print(unitscope.backends(verbose=True), _backend.cuda_versions())
assert 'cuda' in unitscope.backends(), 'the cuda backend is ' + unitscope.backends(verbose=True)['cuda']"
if ((HAVE_GPU)); then
  step cuda_tests 150 env UNITSCOPE_REQUIRE_CUDA=1 "$PY" -m pytest -m cuda -q -rfEs -p no:cacheprovider \
    --junitxml="$OUT/junit_cuda.xml" tests/kernels tests/saliency/test_cam.py
else
  not_here cuda_tests "no GPU"
fi
step backend_tests 60 "$PY" -m pytest -q -rfEs -p no:cacheprovider --junitxml="$OUT/junit_backends.xml" \
  tests/test_backends.py
step resources 20 resources
SMOKE=()
if ((HAVE_GPU == 0)); then SMOKE=(--device cpu --quick); fi
step kernel_bench 100 "$PY" benchmarks/gpu/bench_cuda.py "${SMOKE[@]}" --json "$OUT/bench_cuda.json"

# the dissection before the sanitizers: its time box is fixed, the sanitizers get what is left
if [[ -n $GEN_PID ]]; then
  wait "$GEN_PID" || echo "dataset generation failed: $(tail -3 "$WORK/generate.log")"
fi
BOX=150
DISSECT=("${DATA[@]}" --budget-s $((BOX - 60)))
if ((HAVE_GPU == 0)); then DISSECT=("${DATA[@]}" --budget-s 30); BOX=90; fi
step dissect "$BOX" "$PY" benchmarks/gpu/dissect_cuda.py "${DISSECT[@]}" --json "$OUT/dissect.json"

if ((HAVE_GPU)); then
  for tool in memcheck racecheck initcheck synccheck; do step "$tool" 45 sanitize "$tool"; done
else
  for tool in memcheck racecheck initcheck synccheck; do not_here "$tool" "no GPU"; done
fi

"$PY" benchmarks/gpu/report.py summary "$WORK" "$OUT" "$HAVE_GPU"
rc=$?
echo "total $((SECONDS - START)) s; $(ls "$OUT" | wc -l) files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
