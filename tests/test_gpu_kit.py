"""The GPU kit (benchmarks/gpu/) without a GPU: the scripts parse, run.sh's no-GPU path runs end to end
and leaves at most 8 files in OUTDIR with the toolchain printed first, and report.py reads what the
tools write (cuobjdump's resource report, sanitizer logs, files cut short)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"


def _report():
    spec = importlib.util.spec_from_file_location("gpu_report", GPU / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script", ["run.sh", "prepare.sh"])
def test_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(GPU / script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="run.sh needs coreutils' timeout")
def test_the_no_gpu_path_end_to_end(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # lists no GPU, even on a machine with one
    (fake / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    # run.sh works on a source tree holding the built module (as the GPU machine's copy does): a copy of
    # this one, with the compiled module this test process imports (installed, or built into the tree)
    import unitscope._C as compiled
    repo = tmp_path / "repo"
    for part in ("python", "benchmarks", "tests"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__", "out", "wheels"))
    module = repo / "python" / "unitscope" / Path(compiled.__file__).name
    if not module.exists():
        shutil.copy(compiled.__file__, module)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", PYTHON=sys.executable, UNITSCOPE_GPU_NO_BUILD="1",
               UNITSCOPE_GPU_STEPS="build backends resources kernel_bench dissect memcheck initcheck",
               UNITSCOPE_GPU_BUDGET_S="300")
    done = subprocess.run(["bash", str(repo / "benchmarks" / "gpu" / "run.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    log = done.stdout
    assert done.returncode == 1, log[-3000:] + done.stderr[-3000:]  # no GPU: never a pass
    first = log.index("which nvcc cmake ninja")
    assert first < log.index("Python.h") < log.index("== environment")
    assert "NO GPU is present" in log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).is_file() for f in files), files
    assert {"run.log", "summary.md", "summary.json", "bench_cuda.json", "dissect.json", "resources.txt"} <= set(files)
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    assert steps["kernel_bench"] == "ok" and steps["dissect"] == "ok" and steps["backends"] == "failed", steps
    assert steps["memcheck"] == "skipped" and "cuda_tests" not in steps  # left out by UNITSCOPE_GPU_STEPS
    assert summary["compute_sanitizer"]["memcheck"] == "not run (no GPU)"
    bench = json.loads((out / "bench_cuda.json").read_text())
    assert bench["read_bandwidth_GBps"] > 0 and "unitscope.tally" in bench["tally"]["profile"]["profiler_top"]
    assert all(r["profile"]["profiler_top"] for r in bench["quantiles"][:2])
    md = (out / "summary.md").read_text()
    assert "no GPU present" in md and "read bandwidth (x.sum()" in md and "**NOT PASSED**" in md


CUOBJDUMP = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
host = linux
compile_size = 64bit

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN9unitscope12_GLOBAL__N_119exact_append_kernelENS_17ExactQuantileArgsE:
  REG:18 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:504 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN9unitscope12_GLOBAL__N_111cam_kernelEPKvlPKflllbPf:
  REG:40 STACK:16 SHARED:0 LOCAL:8 CONSTANT[0]:417 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z9other_kernelv:
  REG:8 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:352 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_report_reads_cuobjdump_resource_usage(tmp_path):
    rep = _report()
    (tmp_path / "r.txt").write_text(CUOBJDUMP)
    r = rep._resources(tmp_path / "r.txt")
    assert r["kernels"] == 3 and len(r["unitscope_kernels"]) == 2 and r["max_registers"] == 40
    assert r["spilling"] == ["_ZN9unitscope12_GLOBAL__N_111cam_kernelEPKvlPKflllbPf"]
    (tmp_path / "r.txt").write_text("bash: cuobjdump: command not found\n")
    assert rep._resources(tmp_path / "r.txt") == {"error": "bash: cuobjdump: command not found"}


def test_report_sanitizer_verdicts(tmp_path):
    rep = _report()
    log = tmp_path / "s.log"
    log.write_text("sanitize_subset ok\n========= ERROR SUMMARY: 0 errors\n")
    assert rep._sanitizer(log, {"status": "ok", "rc": "0"}).startswith("works: 0 errors")
    log.write_text("========= Invalid __global__ write of size 4\n========= ERROR SUMMARY: 2 errors\n")
    assert rep._sanitizer(log, {"status": "failed", "rc": "3"}) == "works: 2 errors reported (see run.log)"
    assert rep._sanitizer(log, {"status": "skipped", "rc": "-"}) == "not run (the budget was spent)"
    assert rep._sanitizer(log, None).startswith("not run (the call ended")


def test_summary_survives_files_cut_short(tmp_path):
    # run.sh rewrites the summary after every step; a call killed mid-step leaves partial files
    rep = _report()
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "steps.tsv").write_text("environment\tok\t2\t0\nbuild\ttimeout\t240\t124\n")
    (out / "bench_cuda.json").write_text('{"device": "x", "tally": {')
    (out / "junit_cuda.xml").write_text("<testsuite tests='3'")
    assert rep.summary(work, out, True) == 1
    md = (out / "summary.md").read_text()
    assert "| build | timeout | 240 |" in md and "**NOT PASSED**" in md
