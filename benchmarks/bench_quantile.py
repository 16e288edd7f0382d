"""Streaming per-channel quantiles: ExactQuantile and QuantileSketch (cpp, numba, torch reference)
side by side in one process with datasketches (KLL k=200/2000, REQ high-rank accuracy) and
torch.kthvalue: values per second, memory per channel, rank error at q = 0.995.

Throughput mode (default): K=512 channels x 10^7 values each, fed as (16, K, 56, 56) batches of
dissection-like activations (channel k: normal, log-normal, ReLU with 70% zeros or a two-mode mixture).
A pool of batches is reused, scaled by a per-cycle factor so values do not repeat. The slow baselines
(torch reference, datasketches, kthvalue) see a subset of channels (--baseline-channels) for the
whole stream; values/s is per value either way. Rank error: the true rank of each method's answer
is counted over the whole stream afterwards.
Accuracy mode (--accuracy): 10^8 values per channel on the issue's five distributions (sorted
ascending included): QuantileSketch vs REQ/KLL rank error at q in {0.99, 0.995, 0.999}.
Usage: python benchmarks/bench_quantile.py [--quick] [--accuracy] [--threads N] [--json PATH]
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


def make_pool(pool, B, K, h, w, seed=0):
    """Dissection-like activations: channel k % 4 is normal, log-normal, ReLU (70% zeros), mixture."""
    g = torch.Generator().manual_seed(seed)
    out = []
    kind = torch.arange(K) % 4
    for _ in range(pool):
        z = torch.randn(B, K, h, w, generator=g)
        x = torch.where((kind == 1)[None, :, None, None], z.exp(), z)
        x = torch.where((kind == 2)[None, :, None, None], (z - 0.5244).clamp(min=0), x)
        mode = torch.rand(B, K, h, w, generator=g) < 0.8
        mix = torch.where(mode, z, 6 + 0.3 * z)
        out.append(torch.where((kind == 3)[None, :, None, None], mix, x).contiguous())
    return out


def stream(pool, batches):
    """The b-th batch: pool[b % P] scaled by 1 + 1e-4 * (b // P) (no value repeats across cycles)."""
    for b in range(batches):
        cyc = b // len(pool)
        yield pool[b % len(pool)] * (1.0 + 1e-4 * cyc) if cyc else pool[b % len(pool)]


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


def run_throughput(args):
    K, h, w, B = args.channels, 56, 56, 16
    per_batch = B * h * w
    batches = max(1, args.values // per_batch)
    total = batches * per_batch
    sub = min(args.baseline_channels, K)
    print(f"throughput: K={K} x {total:,} values per channel ({batches} batches of {(B, K, h, w)}), "
          f"{torch.get_num_threads()} threads; slow baselines on {sub} channels", flush=True)
    pool = make_pool(min(args.pool, batches), B, K, h, w)
    have = unitscope.backends()
    ms = methods(K, total, sub, have)
    for m in ms:
        m.obj = m.make()
        for x in stream(pool, batches):
            t0 = time.perf_counter()
            m.feed(m.obj, x)
            m.seconds += time.perf_counter() - t0
            m.values += per_batch * len(m.channels)
        t0 = time.perf_counter()
        m.result = m.answer(m.obj).to(torch.float32)
        m.query_s = time.perf_counter() - t0
        m.mem = m.memory(m.obj)
        m.obj = None  # free the state before the next method
        print(f"  {m.name}: {m.values / m.seconds / 1e6:.1f} M values/s", flush=True)
    # torch.kthvalue: needs each channel's whole stream in memory
    kth_ch = list(range(min(args.kth_channels, K)))
    kth_vals, kth_s = [], 0.0
    for k in kth_ch:
        col = torch.cat([x[:, k].reshape(-1) for x in stream(pool, batches)])
        t0 = time.perf_counter()
        kth_vals.append(torch.kthvalue(col, int(np.floor(Q * (total - 1))) + 1).values)
        kth_s += time.perf_counter() - t0
        del col
    # true ranks of every answer, counted over the whole stream
    answers = torch.full((len(ms) + 1, K), float("nan"))
    for i, m in enumerate(ms):
        answers[i, m.channels] = m.result
    answers[len(ms), kth_ch] = torch.stack(kth_vals)
    le = torch.zeros(answers.shape, dtype=torch.float64)
    lt = torch.zeros(answers.shape, dtype=torch.float64)
    for x in stream(pool, batches):
        xr = x.transpose(0, 1).reshape(K, -1)
        for i in range(answers.shape[0]):
            v = answers[i][:, None]
            le[i] += (xr <= v).sum(1)
            lt[i] += (xr < v).sum(1)
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


def memory_of(ms, K, total, sub):
    """Memory per channel for methods whose objects were dropped: rebuild an empty one."""
    return {m.name: m.memory(m.make()) for m in ms}


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
        for meth, vs in cand.items():
            errs = []
            for q in qs:
                errs.append(0.0 if lt[i] <= q <= le[i] else float(min(abs(lt[i] - q), abs(le[i] - q))))
                i += 1
            table.append({"distribution": name, "method": meth, **{f"rank_error@{q}": e for q, e in zip(qs, errs)}})
            print(f"  {name:9s} {meth:28s} " + "  ".join(f"{q}: {e:.1e}" for q, e in zip(qs, errs)), flush=True)
    return {"values_per_channel": n, "rows": table}


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
    ap.add_argument("--accuracy-values", type=int, default=10 ** 8)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--values", type=int, default=10 ** 7, help="values per channel")
    ap.add_argument("--baseline-channels", type=int, default=8)
    ap.add_argument("--kth-channels", type=int, default=4)
    ap.add_argument("--pool", type=int, default=6, help="distinct batches generated")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default="benchmarks/out/bench_quantile.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.channels, args.values, args.baseline_channels, args.kth_channels = 64, 10 ** 6, 4, 2
        args.accuracy_values = min(args.accuracy_values, 10 ** 6)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                       "backends": unitscope.backends(verbose=True)}}
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
