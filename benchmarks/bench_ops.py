"""The operator path against the direct call, in one process: torch.ops.unitscope.* (the dispatcher, the
backend choice at run time, on the CPU the C++ kernels of unitscope._torch_ops where the build has
them) against calling the same backend body directly (kernels/gradcam.run, tally.count_batch,
exact_quantile.feed, quantile_sketch.feed), on a small shape (where a fixed cost per call shows) and a
typical one. Beside them: the operator's Python kernel (torch.ops.unitscope._python_<name>, what a
build without unitscope._torch_ops runs) and an empty operator of the same schema whose Python kernel
does nothing (torch's fixed cost of entering Python from the dispatcher). Calls alternate, so load
drifts hit all of them.
Usage: python benchmarks/bench_ops.py [--quick] [--threads N] [--backend cpp] [--json PATH]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import time

import torch

import unitscope
from unitscope.kernels import (
    ExactQuantile,
    QuantileSketch,
    _ops,
    exact_quantile,
    quantile_sketch,
    tally,
)

gradcam_mod = importlib.import_module("unitscope.kernels.gradcam")  # the module, not the function it exports


def paired_times(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each of fns, called in turn."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


_EMPTY = torch.library.Library("unitscope_bench_empty", "DEF")


def empty_op(name: str):
    """An operator with torch.ops.unitscope.<name>'s schema that does nothing (returns an empty tensor
    where the schema returns one): what the dispatcher and one Python kernel entry cost."""
    schema = str(getattr(torch.ops.unitscope, name).default._schema).split("::", 1)[1]
    _EMPTY.define(schema)
    _EMPTY.impl(name, lambda *args: torch.empty(0) if schema.endswith("Tensor") else None, "CompositeExplicitAutograd")
    if "!)" in schema:
        _EMPTY.m.register_ad_inplace_or_view_fallback(name)
    return getattr(torch.ops.unitscope_bench_empty, name).default


def cases(backend: str, small: bool):
    """(name, direct call, the operator's arguments) for every operator."""
    g = torch.Generator().manual_seed(0)
    B, K, h, S = (2, 16, 7, 28) if small else (32, 512, 7, 112)
    A = torch.randn(B, K, h, h, generator=g)
    G = torch.randn(B, K, h, h, generator=g)
    yield ("gradcam", lambda: gradcam_mod.run(backend, A, G, None, True, S, S, False, True, None),
           (A, G, None, True, S, S, False, True, backend, None))

    C = 20
    thr = tally.float32_thresholds(torch.zeros(K), False)
    pix = torch.randint(0, C, (B, 2, S, S), generator=g, dtype=torch.int16)
    cfg = tally.TallyConfig(K, C, 1, (S, S), False, ">", "dataset", torch.zeros(C, dtype=torch.int64))
    counts = {"intersection": torch.zeros(K, C, dtype=torch.int64), "activation": torch.zeros(K, 1, dtype=torch.int64),
              "label": torch.zeros(C, dtype=torch.int64), "activation_total": torch.zeros(K, dtype=torch.int64)}
    batch = tally.Batch(A, thr, thr, pix, None, None)
    yield ("tally_", lambda: tally.count_batch(backend, cfg, batch, counts),
           (A, thr, pix, None, None, cfg.label_category, *counts.values(), S, S, False, False, True, backend, None))

    x = torch.randn(8 if small else 64, K, 49, generator=g)
    eq = ExactQuantile(K, 0.995, 10 ** 9, backend=backend)
    yield ("exact_quantile_update_",
           lambda: exact_quantile.feed(backend, x, eq._buf, eq._fill, eq._thr, eq._nan, eq.m, not eq.top, None),
           (x, eq._buf, eq._fill, eq._thr, eq._nan, eq.m, not eq.top, backend, None))
    qs = QuantileSketch(K, backend=backend)
    yield ("quantile_sketch_update_", lambda: quantile_sketch.feed(backend, x, qs._s, qs.nb, None),
           (x, *qs._s.values(), qs.nb, backend, None))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch/kernel threads (default: torch's)")
    ap.add_argument("--backend", default="cpp", choices=("cpp", "numba", "torch"), help="backend both paths use (default: cpp)")
    ap.add_argument("--json", default="benchmarks/out/bench_ops.json", help="where to write the rows (default: %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.backend not in unitscope.backends():
        raise SystemExit(f"bench_ops: error: backend {args.backend!r} is not available here: "
                         f"{unitscope.backends(verbose=True)[args.backend]}")
    repeats = 5 if args.quick else 50
    rows = []
    empty = {}
    for small in (True, False):
        for name, direct, op_args in cases(args.backend, small):
            op = getattr(torch.ops.unitscope, name).default
            py_op = getattr(torch.ops.unitscope, "_python_" + name).default
            empty[name] = empty.get(name) or empty_op(name)
            t_direct, t_op, t_py, t_empty = paired_times(
                [direct, lambda: op(*op_args), lambda: py_op(*op_args), lambda: empty[name](*op_args)],  # noqa: B023
                repeats)
            rows.append({"op": name, "shape": "small" if small else "typical", "direct_us": t_direct * 1e6,
                         "operator_us": t_op * 1e6, "python_kernel_us": t_py * 1e6, "empty_op_us": t_empty * 1e6,
                         "ratio": t_op / t_direct, "python_kernel_ratio": t_py / t_direct})
    print(f"backend={args.backend} threads={args.threads} torch {torch.__version__} "
          f"({platform.processor() or platform.machine()}); operator CPU kernels: "
          f"{'C++' if not _ops.COMPILED_KERNELS_MISSING else 'Python (' + _ops.COMPILED_KERNELS_MISSING + ')'}; "
          "ratio = operator / direct, python ratio = Python kernel / direct (same process)")
    print(f"{'operator':26s} {'shape':8s} {'direct us':>10s} {'operator us':>12s} {'python kernel us':>17s} "
          f"{'empty op us':>12s} {'ratio':>6s} {'python ratio':>13s}")
    for r in rows:
        print(f"{r['op']:26s} {r['shape']:8s} {r['direct_us']:10.1f} {r['operator_us']:12.1f} "
              f"{r['python_kernel_us']:17.1f} {r['empty_op_us']:12.1f} {r['ratio']:6.2f} {r['python_kernel_ratio']:13.2f}")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"backend": args.backend, "threads": args.threads, "torch": torch.__version__,
                   "operator_cpu_kernels": "C++" if not _ops.COMPILED_KERNELS_MISSING else "Python",
                   "machine": platform.machine(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
