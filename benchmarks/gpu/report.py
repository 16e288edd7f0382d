"""run.sh's bookkeeping: `env WORK` prints and saves the machine's facts (GPU, driver, toolkits,
versions); `summary WORK OUT HAVE_GPU` gathers the steps (WORK/steps.tsv), test counts (OUT/junit_*.xml),
sanitizer verdicts (WORK/sanitizer_*.log), the module's register report (OUT/resources.txt) and the
benchmark figures (OUT/bench_cuda.json, OUT/dissect.json, with torch.profiler rows and peak memory per
op) into OUT/summary.json and OUT/summary.md, prints the Markdown, and exits 0 only when a GPU was
present and every step passed. run.sh calls it after every step, so a call cut short keeps a summary.
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not on the PATH"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{cmd[0]}: {e}"


def environment(work: Path) -> dict:
    import torch

    facts = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "torch_sees_cuda": torch.cuda.is_available(),
             "gpu": _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                          "--format=csv,noheader"]),
             "nvcc": _run(["nvcc", "--version"]).splitlines()[-1:],
             "cmake": _run(["cmake", "--version"]).splitlines()[:1],
             "compute_sanitizer": _run(["compute-sanitizer", "--version"]).splitlines()[-1:],
             "cpus": __import__("os").cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(device=p.name, multiprocessors=p.multi_processor_count, memory_GiB=p.total_memory / 2**30,
                     capability=f"{p.major}.{p.minor}")
    (work / "env.json").write_text(json.dumps(facts, indent=1))
    for k, v in facts.items():
        print(f"{k:18s} {v}")
    return facts


def _junit(path: Path) -> dict | None:
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    counts = {k: int(suite.get(k, 0)) for k in keys}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_names"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                              if c.find("failure") is not None or c.find("error") is not None][:20]
    return counts


def _sanitizer(log: Path, step: dict | None) -> str:
    """A verdict: clean, N errors, unsupported on this machine, not run, or failed (why)."""
    if step is None:
        return "not run (the call ended before it, or UNITSCOPE_GPU_STEPS left it out)"
    if step["status"] == "skipped":
        return "not run (" + ("the budget was spent" if step["rc"] == "-" else step["rc"]) + ")"
    text = log.read_text(errors="replace") if log.is_file() else ""
    if "not on the PATH" in text:
        return "not available: compute-sanitizer is not on the PATH"
    if re.search(r"Device not supported|not supported on this|error 999|Unable to (start|initialize)", text):
        return "does not work on this machine (" + text.strip().splitlines()[0][:160] + ")"
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    if m and step["status"] == "ok" and m.group(1) == "0":
        return "works: 0 errors, the subset's results agree with cpp"
    if m and m.group(1) != "0":
        return f"works: {m.group(1)} errors reported (see run.log)"
    if step["status"] == "timeout":
        return "timed out"
    tail = text.strip().splitlines()[-1][:160] if text.strip() else "no output"
    return f"failed (rc {step['rc']}): {tail}"


SANITIZERS = ("memcheck", "racecheck", "initcheck", "synccheck")


def _resources(path: Path) -> dict | None:
    """cuobjdump --dump-resource-usage: per kernel registers, stack, local memory (spills), shared memory."""
    if not path.is_file():
        return None
    kernels, name = [], None
    for line in path.read_text(errors="replace").splitlines():
        m = re.search(r"Function ([^:\s]+)", line)
        if m:
            name = m.group(1)
        r = re.search(r"REG:(\d+)", line)
        if r and name:
            num = lambda key, line=line: int(x.group(1)) if (x := re.search(key + r":(\d+)", line)) else 0  # noqa: E731
            kernels.append({"kernel": name, "registers": int(r.group(1)), "stack": num("STACK"),
                            "local": num("LOCAL"), "shared": num("SHARED")})
            name = None
    unitscope = [k for k in kernels if "unitscope" in k["kernel"]]
    if not kernels:  # cuobjdump missing, or a module without CUDA code: say what it printed
        return {"error": (path.read_text(errors="replace").strip().splitlines() or ["empty"])[0][:200]}
    return {"kernels": len(kernels), "unitscope_kernels": unitscope,
            "max_registers": max((k["registers"] for k in unitscope), default=None),
            "spilling": [k["kernel"] for k in unitscope if k["local"] or k["stack"]]}


def _profiles(kb: dict) -> list[str]:
    """Markdown: peak GPU memory and the top torch.profiler rows of each op of bench_cuda.json."""
    ops = [("tally", kb.get("tally"))] + [(r.get("method"), r) for r in kb.get("quantiles") or []
                                          if isinstance(r, dict)] + [("Grad-CAM", kb.get("gradcam"))]
    md = []
    for name, r in ops:
        p = (r or {}).get("profile") if isinstance(r, dict) else None
        if not p:
            continue
        md += ["", f"**{name}**: peak GPU memory {_fmt(p.get('peak_memory_MiB'))} MiB", "", "```",
               (p.get("profiler_top") or "(no profiler table)").rstrip(), "```"]
    return md


def _fmt(v, digits=1):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def summary(work: Path, out: Path, have_gpu: bool) -> int:
    steps = []
    for line in (work / "steps.tsv").read_text().splitlines():
        name, status, seconds, rc = line.split("\t")
        steps.append({"step": name, "status": status, "seconds": int(seconds), "rc": rc})
    by = {s["step"]: s for s in steps}
    def load(path: Path):  # a file a step still writes, or cut short, counts as absent
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def junit(path: Path):
        try:
            return _junit(path)
        except ET.ParseError:
            return None

    res = {"gpu_present": have_gpu, "environment": load(work / "env.json"), "steps": steps,
           "cuda_tests": junit(out / "junit_cuda.xml"), "backend_tests": junit(out / "junit_backends.xml"),
           "compute_sanitizer": {t: _sanitizer(work / f"sanitizer_{t}.log", by.get(t)) for t in SANITIZERS},
           "resources": _resources(out / "resources.txt"),
           "kernel_bench": load(out / "bench_cuda.json"), "dissect": load(out / "dissect.json")}
    ok = have_gpu and all(s["status"] == "ok" for s in steps)
    res["passed"] = ok
    (out / "summary.json").write_text(json.dumps(res, indent=1))

    md = ["# unitscope GPU check", ""]
    env = res["environment"] or {}
    md.append(f"- GPU: {env.get('gpu', '?')}" + ("" if have_gpu else " — **no GPU present: smoke run, no figures**"))
    md.append(f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Python {env.get('python')}, "
              f"nvcc: {' '.join(env.get('nvcc') or [])}")
    md += ["", "| step | status | s |", "| --- | --- | --- |"]
    md += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
    for key in ("cuda_tests", "backend_tests"):
        t = res[key]
        if t:
            md.append(f"\n{key}: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                      f"{t['skipped']} skipped" + (f"; failing, first 5: {', '.join(t['failed_names'][:5])}"
                                                   if t["failed_names"] else ""))
    md.append("")
    md += [f"compute-sanitizer {t} (PYTORCH_NO_CUDA_MEMORY_CACHING=1): {v}"
           for t, v in res["compute_sanitizer"].items()]
    rs = res["resources"]
    if rs and "error" in rs:
        md += ["", f"cuobjdump: {rs['error']}"]
    elif rs:
        md += ["", f"cuobjdump: {len(rs['unitscope_kernels'])} unitscope kernels of {rs['kernels']}, at most "
               f"{rs['max_registers']} registers; spilling (stack or local memory): "
               f"{', '.join(rs['spilling']) or 'none'}"]
    kb = res["kernel_bench"]
    if kb:
        md += ["", f"Kernels on {kb['device']}; device copy bandwidth {_fmt(kb['copy_bandwidth_GBps'], 0)} GB/s "
               f"(read + write); read bandwidth (x.sum() over {_fmt(kb.get('read_bandwidth_GB_read'), 2)} GB, "
               f"the floor of one read) {_fmt(kb.get('read_bandwidth_GBps'), 0)} GB/s",
               "", "| kernel | unitscope | plain PyTorch | x plain | of copy bandwidth | goal |",
               "| --- | --- | --- | --- | --- | --- |"]
        t = kb.get("tally", {})
        if "error" not in t:
            md.append(f"| tally {t['shape']} | {_fmt(t['unitscope_images_per_s'], 0)} img/s | "
                      f"{_fmt(t['plain_torch_images_per_s'], 0)} img/s | {_fmt(t['x_plain_torch'])} | - | {t['goal']} |")
        for r in kb.get("quantiles", []) if isinstance(kb.get("quantiles"), list) else []:
            md.append(f"| {r['method']} (K={r['channels']}, {r['values_per_channel']:,} values each) | "
                      f"{_fmt(r['unitscope_ms'])} ms | {_fmt(r['plain_torch_backend_ms'])} ms | "
                      f"{_fmt(r.get('x_plain_torch', '-'))} | {_fmt(100 * r['fraction_of_copy_bandwidth'])}% | "
                      f"{r.get('goal', 'baseline')} |")
        g = kb.get("gradcam", {})
        if "error" not in g:
            md.append(f"| Grad-CAM {g['shape']} | {_fmt(g['unitscope_ms'], 2)} ms | {_fmt(g['plain_torch_ms'], 2)} ms | "
                      f"{_fmt(g['x_plain_torch'])} | {_fmt(100 * g['fraction_of_copy_bandwidth'])}% | {g['goal']} |")
        md += [f"\n{k} failed: {v['error']}" for k, v in kb.items() if isinstance(v, dict) and "error" in v]
        md += _profiles(kb)
    d = res["dissect"]
    if d:
        md += ["", f"Dissection on {d['device']}: {d['model']}, {d['layer']}, {d['rows_run']:,} rows "
               f"({d['distinct_images']} distinct generated images) in {_fmt(d['wall_s'])} s = "
               f"{_fmt(d['images_per_s'], 0)} images/s; parts (s): "
               + ", ".join(f"{k} {_fmt(v)}" for k, v in d["parts_s"].items()),
               f"{d['rows_goal']:,} rows: {_fmt(d['time_for_goal_rows_s'])} s"
               + (" (extrapolated)" if d["extrapolated"] else "") + f"; goal {d['goal']}: "
               + ("met" if d["goal_met"] else "NOT met")]
    md += ["", f"**{'PASSED' if ok else 'NOT PASSED'}**" + ("" if have_gpu else " (no GPU present)")]
    text = "\n".join(md) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "env":
        environment(Path(argv[1]))
        return 0
    if len(argv) == 4 and argv[0] == "summary":
        return summary(Path(argv[1]), Path(argv[2]), argv[3] == "1")
    print("usage: report.py env WORK | report.py summary WORK OUT HAVE_GPU", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
