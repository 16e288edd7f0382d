#!/usr/bin/env bash
# Run on a machine that reaches PyPI (the CPU machine), in the checkout the GPU call will send:
# downloads into benchmarks/gpu/wheels/ (ignored by git; sent to the GPU machine only when the call
# names it in `carry`) the wheels, for the GPU machine's Python 3.12 on manylinux x86_64, of what
# run.sh needs there: pybind11 for the build, pytest and hypothesis for the tests, Pillow and tqdm
# for unitscope, scikit-build-core for `pip install .`, with their dependencies. run.sh installs only
# those the machine lacks (its image ships most of them). Never torch, which the machine has.
# Not carried: numba and llvmlite (llvmlite's wheel alone is about 57 MiB of the 64 MiB that travels
# with the tree; the image ships numba, and the GPU checks need no Numba), numpy (torch's image
# brings it), matplotlib (only the dissection's plots use it; the image ships it).
#
# Usage: bash benchmarks/gpu/prepare.sh      (PYTHON=... for the pip to use; default python3)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEST=$HERE/wheels
PY=${PYTHON:-python3}
PACKAGES=(pybind11 scikit-build-core pytest hypothesis pillow tqdm)
LIMIT_MIB=24  # what travels with the tree is limited to 64 MiB in all

rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$DEST" "${PACKAGES[@]}"
if ls "$DEST" | grep -qiE '^(torch|numpy|nvidia)'; then
  echo "prepare.sh: error: a dependency pulled in torch, numpy or an nvidia package; refusing to carry it" >&2
  exit 1
fi
ls -1 "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $((total / 1024)) KiB in $DEST"
if ((total > LIMIT_MIB * 1024 * 1024)); then
  echo "prepare.sh: error: the wheels take more than ${LIMIT_MIB} MiB; the tree and they must fit in 64 MiB" >&2
  exit 1
fi
