"""One OpenMP runtime per process (issue 23): unitscope._C links none on Linux and binds to the one torch
loaded, so after `import torch, unitscope` and a kernel call /proc/self/maps holds one runtime."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unitscope

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and ELF are Linux's")


def needed(path: Path) -> list:
    """DT_NEEDED entries of an ELF64 little-endian shared object (its dynamic section)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "expects ELF64 little-endian"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out = []
    for _, sh_type, _, _, offset, size, link, _, _, _ in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 1:  # DT_NEEDED
                out.append(data[strtab + val:data.index(b"\0", strtab + val)].decode())
    return out


@pytest.mark.skipif("cpp" not in unitscope.backends(), reason="unitscope._C is not built here")
def test_compiled_module_links_no_openmp_runtime():
    so = Path(unitscope._backend.compiled_module().__file__)
    libs = needed(so)
    assert "libc.so.6" in libs  # the parser reads the real list
    assert not [n for n in libs if "omp" in n], libs
    assert unitscope._backend.compiled_module().openmp  # the kernels still run on OpenMP


def test_operator_module_links_no_openmp_runtime_of_its_own():
    from unitscope.kernels import _ops

    if _ops.COMPILED_KERNELS_MISSING:
        pytest.skip(f"unitscope._torch_ops is not loaded here: {_ops.COMPILED_KERNELS_MISSING}")
    libs = needed(Path(sys.modules["unitscope._torch_ops"].__file__))
    assert "libtorch_cpu.so" in libs  # its kernels' OpenMP calls bind to the runtime libtorch_cpu loads
    assert not [n for n in libs if "omp" in n], libs


@pytest.mark.skipif("cpp" not in unitscope.backends(), reason="unitscope._C is not built here")
def test_one_openmp_runtime_after_import_and_a_kernel_call():
    code = ("import json, torch, unitscope\n"
            "from unitscope import _openmp\n"
            "after_import = _openmp.mapped_runtimes()\n"
            "q = unitscope.ExactQuantile(4, 0.5, 1000, backend='cpp').update(torch.randn(1000, 4))\n"
            "unitscope.kernels.gradcam(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), backend='cpp')\n"
            "print(json.dumps([after_import, _openmp.mapped_runtimes(), q.result().tolist()]))")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(unitscope.__file__))), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    after_import, after_call, _ = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(after_call) == 1, after_call
    assert len(after_import) <= 1 and set(after_import) <= set(after_call)
    torch_lib = Path(torch.__file__).parent
    bundled = [p for p in (torch_lib / "lib").glob("lib*omp*.so*")] + list(torch_lib.parent.glob("torch.libs/*omp*"))
    if bundled:  # torch's wheel brings its own: that one is used, not the system's
        assert Path(after_call[0]).resolve() in {p.resolve() for p in bundled}, (after_call, bundled)


def test_mapped_runtimes_reads_this_process():
    from unitscope import _openmp

    mine = _openmp.mapped_runtimes()
    assert all(os.path.isabs(p) and "omp" in os.path.basename(p) for p in mine)
    assert _openmp._RUNTIME.match("libgomp.so.1") and _openmp._RUNTIME.match("libgomp-a34b3233.so.1")
    assert _openmp._RUNTIME.match("libiomp5.so") and not _openmp._RUNTIME.match("libgompx.txt")
