"""Streaming per-channel quantiles: ExactQuantile and QuantileSketch (cpp, numba, torch reference)
side by side in one process with datasketches (KLL k=200/2000, REQ high-rank accuracy) and
torch.kthvalue: values per second, memory per channel, rank error at q = 0.995.

Throughput mode (default): K=512 channels x 10^7 values each, fed as (16, K, 56, 56) batches of
dissection-like activations (channel k: normal, log-normal, ReLU with 70% zeros or a two-mode mixture).
Every batch is fresh (seeded) and fed to every method in turn; only update calls are timed. The slow baselines
(torch reference, datasketches, kthvalue) see a subset of channels (--baseline-channels) for the
whole stream; values/s is per value either way. Rank error: the true rank of each method's answer
is counted over the whole stream afterwards.
Accuracy mode (--accuracy): 10^8 values per channel on the issue's five distributions (sorted
ascending included): QuantileSketch vs REQ/KLL rank error at q in {0.99, 0.995, 0.999}.
Against one read (--vs-sum): ExactQuantile (cpp, numba) over (64, 512, 14, 14) batches, 6 and 60
updates, the result included, beside a plain x.sum((0, 2, 3)) over the same batches: the floor
of any method that reads every value once. Reported as values/s and as a ratio to the sum.
Usage: python benchmarks/bench_quantile.py [--quick] [--accuracy] [--vs-sum] [--threads N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

import unitscope

Q = 0.995


def make_batch(b, B, K, h, w):
    """Batch b of dissection-like activations, fresh values from seed b: channel k % 4 is normal,
    log-normal, ReLU (70% zeros) or a two-mode mixture."""
    g = torch.Generator().manual_seed(1000 + b)
    z = torch.randn(B, K, h, w, generator=g)
    x = z.clone()
    x[:, 1::4] = z[:, 1::4].exp()
    x[:, 2::4] = (z[:, 2::4] - 0.5244).clamp(min=0)
    mode = torch.rand(z[:, 3::4].shape, generator=g) < 0.8
    x[:, 3::4] = torch.where(mode, z[:, 3::4], 6 + 0.3 * z[:, 3::4])
    return x


class Method:
    def __init__(self, name, channels, make, feed, answer, memory, threads):
        self.name, self.channels, self.make, self.feed, self.answer = name, channels, make, feed, answer
        self.memory, self.threads = memory, threads
        self.obj, self.seconds, self.values = None, 0.0, 0


def ds_feed(sketches, chans):
    def feed(objs, x):
        for s, k in zip(objs, chans):
            s.update(np.ascontiguousarray(x[:, k].numpy()).reshape(-1))
    return feed


def methods(K, total, sub, have):
    import datasketches as ds

    chans = list(range(sub))
    out = []
    for be in [b for b in ("cpp", "numba") if b in have] + ["torch"]:
        kk = K if be != "torch" else sub
        out.append(Method(f"ExactQuantile[{be}]", list(range(kk)),
                          lambda kk=kk, be=be: unitscope.ExactQuantile(kk, Q, total, backend=be),
                          lambda o, x, kk=kk: o.update(x[:, :kk]), lambda o: o.result(),
                          lambda o, kk=kk: o.memory_bytes / kk, torch.get_num_threads() if be != "torch" else 1))
        out.append(Method(f"QuantileSketch[{be}]", list(range(kk)),
                          lambda kk=kk, be=be: unitscope.QuantileSketch(kk, backend=be),
                          lambda o, x, kk=kk: o.update(x[:, :kk]), lambda o: o.quantile(Q),
                          lambda o: o.memory_bytes_per_channel, torch.get_num_threads() if be != "torch" else 1))
    for label, mk in (("kll_floats_sketch k=200", lambda: ds.kll_floats_sketch(200)),
                      ("kll_floats_sketch k=2000", lambda: ds.kll_floats_sketch(2000)),
                      ("req_floats_sketch k=12 hra", lambda: ds.req_floats_sketch(12, True))):
        out.append(Method(label, chans, lambda mk=mk: [mk() for _ in chans], ds_feed(None, chans),
                          lambda o: torch.tensor([s.get_quantile(Q) for s in o]),
                          lambda o: float(np.mean([len(s.serialize()) for s in o])), 1))
    return out


def true_ranks(answers, chunks):
    """Counts of values < and <= each answer (M, K), over chunks (K, n), in two searchsorted passes."""
    M, K = answers.shape
    bounds, order = torch.sort(torch.nan_to_num(answers.t(), nan=float("inf")), dim=1)  # (K, M)
    bounds = bounds.contiguous()
    lt = torch.zeros(K, M + 1, dtype=torch.float64)
    le = torch.zeros(K, M + 1, dtype=torch.float64)
    rows = torch.arange(K)[:, None] * (M + 1)
    for xr in chunks:
        for acc, right in ((lt, False), (le, True)):
            # values with bucket index i are < (or <=) bounds[i:], so the count below bound j is the
            # number of values with index <= j
            i = torch.searchsorted(bounds, xr.contiguous(), right=not right)
            acc += torch.bincount((rows + i).reshape(-1), minlength=K * (M + 1)).view(K, M + 1).double()
    out = []
    for acc in (le, lt):
        below = acc.cumsum(1)[:, :M]  # count of values whose index <= j, per sorted bound j
        out.append(torch.empty(K, M, dtype=torch.float64).scatter_(1, order, below).t())
    return out[0], out[1]


def run_throughput(args):
    K, h, w, B = args.channels, 56, 56, 16
    per_batch = B * h * w
    batches = max(1, args.values // per_batch)
    total = batches * per_batch
    sub = min(args.baseline_channels, K)
    print(f"throughput: K={K} x {total:,} values per channel ({batches} batches of {(B, K, h, w)}), "
          f"{torch.get_num_threads()} threads; slow baselines on {sub} channels", flush=True)
    ms = methods(K, total, sub, unitscope.backends())
    for m in ms:
        m.obj = m.make()
    kth_ch = list(range(min(args.kth_channels, K)))
    kth_cols = [[] for _ in kth_ch]
    for b in range(batches):  # every method sees the same fresh batch; only update calls are timed
        x = make_batch(b, B, K, h, w)
        for m in ms:
            torch.set_num_threads(m.threads)  # the torch reference runs on one thread (labelled so)
            t0 = time.perf_counter()
            m.feed(m.obj, x)
            m.seconds += time.perf_counter() - t0
            torch.set_num_threads(args.threads)
            m.values += per_batch * len(m.channels)
        for cols, k in zip(kth_cols, kth_ch):
            cols.append(x[:, k].reshape(-1).clone())
        if b % 20 == 0:
            print(f"  batch {b}/{batches}", flush=True)
    for m in ms:
        m.result = m.answer(m.obj).to(torch.float32)
        m.mem = m.memory(m.obj)
        m.obj = None
        print(f"  {m.name}: {m.values / m.seconds / 1e6:.1f} M values/s", flush=True)
    # torch.kthvalue: needs each channel's whole stream in memory
    kth_vals, kth_s = [], 0.0
    for cols in kth_cols:
        col = torch.cat(cols)
        cols.clear()
        t0 = time.perf_counter()
        kth_vals.append(torch.kthvalue(col, int(np.floor(Q * (total - 1))) + 1).values)
        kth_s += time.perf_counter() - t0
        del col
    # true ranks of every answer, counted over the whole stream (regenerated)
    answers = torch.full((len(ms) + 1, K), float("nan"))
    for i, m in enumerate(ms):
        answers[i, m.channels] = m.result
    answers[len(ms), kth_ch] = torch.stack(kth_vals)
    le, lt = true_ranks(answers, (make_batch(b, B, K, h, w).transpose(0, 1).reshape(K, -1) for b in range(batches)))
    le, lt = le / total, lt / total
    err = torch.where((lt <= Q) & (Q <= le), 0.0, torch.minimum((lt - Q).abs(), (le - Q).abs()))
    rows = []
    for i, m in enumerate(ms):
        rows.append({"method": m.name, "threads": m.threads, "channels": len(m.channels),
                     "values_per_s": m.values / m.seconds, "memory_bytes_per_channel": m.mem,
                     "max_rank_error": float(err[i, m.channels].max()), "mean_rank_error": float(err[i, m.channels].mean())})
    rows.append({"method": "torch.kthvalue (all values in memory)", "threads": torch.get_num_threads(),
                 "channels": len(kth_ch), "values_per_s": len(kth_ch) * total / kth_s,
                 "memory_bytes_per_channel": 4 * total, "max_rank_error": float(err[-1, kth_ch].max()),
                 "mean_rank_error": float(err[-1, kth_ch].mean())})
    return {"K": K, "values_per_channel": total, "rows": rows}


def gen_accuracy(name, n, chunk, seed=0):
    g = torch.Generator().manual_seed(seed)
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        if name == "sorted":  # stratified normal sample, ascending
            u = (torch.arange(start, start + c, dtype=torch.float64) + torch.rand(c, generator=g, dtype=torch.float64)) / n
            yield torch.special.ndtri(u).to(torch.float32)
            continue
        z = torch.randn(c, generator=g)
        if name == "normal":
            yield z
        elif name == "lognormal":
            yield z.exp()
        elif name == "relu70":
            yield (z - 0.5244).clamp(min=0)
        else:
            mode = torch.rand(c, generator=g) < 0.8
            yield torch.where(mode, z, 6 + 0.3 * z)


def run_accuracy(args):
    import datasketches as ds

    n, qs = args.accuracy_values, (0.99, 0.995, 0.999)
    names = ["normal", "lognormal", "relu70", "mixture", "sorted"]
    print(f"accuracy: {n:,} values per channel", flush=True)
    table = []
    for name in names:
        sk = unitscope.QuantileSketch(1)
        req, kll = ds.req_floats_sketch(12, True), ds.kll_floats_sketch(2000)
        for x in gen_accuracy(name, n, 1 << 22):
            sk.update(x[:, None])
            req.update(x.numpy())
            kll.update(x.numpy())
        cand = {"QuantileSketch": [float(sk.quantile(q)[0]) for q in qs],
                "req_floats_sketch k=12 hra": [req.get_quantile(q) for q in qs],
                "kll_floats_sketch k=2000": [kll.get_quantile(q) for q in qs]}
        vals = torch.tensor([v for vs in cand.values() for v in vs], dtype=torch.float32)
        le = torch.zeros(len(vals), dtype=torch.float64)
        lt = torch.zeros(len(vals), dtype=torch.float64)
        for x in gen_accuracy(name, n, 1 << 22):
            le += (x[None, :] <= vals[:, None]).sum(1)
            lt += (x[None, :] < vals[:, None]).sum(1)
        le, lt = le / n, lt / n
        i = 0
        for meth, _vs in cand.items():
            errs = []
            for q in qs:
                errs.append(0.0 if lt[i] <= q <= le[i] else float(min(abs(lt[i] - q), abs(le[i] - q))))
                i += 1
            table.append({"distribution": name, "method": meth, **{f"rank_error@{q}": e for q, e in zip(qs, errs)}})
            print(f"  {name:9s} {meth:28s} " + "  ".join(f"{q}: {e:.1e}" for q, e in zip(qs, errs)), flush=True)
    return {"values_per_channel": n, "rows": table}


def run_vs_sum(args, updates=(6, 60), shape=(64, 512, 14, 14), repeats=3):
    """ExactQuantile's update + result against x.sum((0, 2, 3)) over the same batches, alternated,
    the best of `repeats` each."""
    B, K, h, w = shape
    have = [be for be in ("cpp", "numba") if be in unitscope.backends()]
    rows = []
    for n in updates:
        xs = [make_batch(b, B, K, h, w) for b in range(n)]
        total = n * B * h * w
        values = n * B * K * h * w
        best = {}
        for _ in range(repeats):
            t = time.perf_counter()
            acc = torch.zeros(K)
            for x in xs:
                acc += x.sum((0, 2, 3))
            best["x.sum((0, 2, 3))"] = min(best.get("x.sum((0, 2, 3))", 1e9), time.perf_counter() - t)
            for be in have:
                t = time.perf_counter()
                q = unitscope.ExactQuantile(K, Q, total, dim=1, backend=be)
                for x in xs:
                    q.update(x)
                q.result()
                name = f"ExactQuantile [{be}]"
                best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
        floor = best["x.sum((0, 2, 3))"]
        for name, sec in best.items():
            rows.append({"updates": n, "method": name, "seconds": sec, "values_per_s": values / sec,
                         "vs_sum": floor / sec})
            print(f"{n:>3d} updates  {name:24s} {values / sec / 1e6:>9.1f} M values/s  {floor / sec:>5.2f}x the sum's speed")
        del xs
    return rows


def print_table(res):
    rows = res["rows"]
    ref = next((r for r in rows if r["method"].startswith("req")), None)
    print(f"\n{'method':40s} {'thr':>3s} {'ch':>4s} {'M values/s':>11s} {'x REQ':>7s} {'bytes/channel':>14s} "
          f"{'max rank err':>13s}")
    for r in rows:
        ratio = r["values_per_s"] / ref["values_per_s"] if ref else float("nan")
        mem = f"{r['memory_bytes_per_channel']:,.0f}" if r["memory_bytes_per_channel"] is not None else "-"
        print(f"{r['method']:40s} {r['threads']:>3d} {r['channels']:>4d} {r['values_per_s'] / 1e6:>11.1f} "
              f"{ratio:>7.2f} {mem:>14s} {r['max_rank_error']:>13.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K=64 x 10^6 values (smoke test)")
    ap.add_argument("--accuracy", action="store_true", help="also the 10^8-values-per-channel accuracy table")
    ap.add_argument("--accuracy-values", type=int, default=10 ** 8, help="values per channel of --accuracy (default 10^8)")
    ap.add_argument("--vs-sum", action="store_true", help="only ExactQuantile against one x.sum read of the same batches")
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--values", type=int, default=10 ** 7, help="values per channel")
    ap.add_argument("--baseline-channels", type=int, default=8)
    ap.add_argument("--kth-channels", type=int, default=4)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default="benchmarks/out/bench_quantile.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.channels, args.values, args.baseline_channels, args.kth_channels = 64, 10 ** 6, 4, 2
        args.accuracy_values = min(args.accuracy_values, 10 ** 6)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                       "backends": unitscope.backends(verbose=True)}}
    if "cpp" in unitscope.backends():  # the instruction set ExactQuantile's cpp filter picked at run time
        isa = unitscope._backend.compiled_module().exact_quantile_isa()
        out["machine"]["exact_quantile_filter"] = ("portable", "avx2", "avx512")[isa]
        print(f"ExactQuantile cpp filter: {out['machine']['exact_quantile_filter']}, {args.threads} threads")
    if args.vs_sum:
        out["vs_sum"] = run_vs_sum(args, updates=(2, 6) if args.quick else (6, 60))
    else:
        out["throughput"] = run_throughput(args)
        print_table(out["throughput"])
    if args.accuracy:
        out["accuracy"] = run_accuracy(args)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, args.json)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
