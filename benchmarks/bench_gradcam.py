"""Grad-CAM reduction: cpp, numba and the torch reference side by side in one process.

Shapes: EfficientNet-Lite0's head (B=64, K=1280, 7x7 -> 224x224, normalized) and a ResNet-50-like
head (B=256, K=2048, 7x7 -> 224x224). Also the memory-traffic floor: bytes that must move (read A and
G once, write the output once) over this machine's measured copy bandwidth. The `cpp out=` row writes
into one preallocated (warm) buffer; the other rows allocate their output every call. The `cpp SSE2`
row is the cpp kernel without its AVX2 paths (UNITSCOPE_NO_AVX2=1: SSE2 rows, cached stores), the
kernel as it was before them, for a before/after in one process.
Usage: python benchmarks/bench_gradcam.py [--quick] [--threads N] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import unitscope
from unitscope.kernels import gradcam


def median_time(fn, repeats: int, warmup: int = 10) -> float:
    # 10 warm-up calls: glibc's malloc returns the first freed outputs (12.8 MB at B=64) to the OS and only
    # then raises its mmap threshold, so a process's first ~10 allocating calls page-fault a fresh output
    # (measured: 5.2 ms a call, then 1.5); outputs over 32 MB (B=256) are mmap'd, and faulted, every call
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plain_torch(A, G, out_size):
    """What a user writes without unitscope: mean, einsum, relu, F.interpolate, min-max."""
    w = G.mean(dim=(2, 3))
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", w, A))[:, None]
    cam = F.interpolate(cam, size=out_size, mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin(dim=(1, 2), keepdim=True)
    rng = cam.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(rng > 0, (cam - lo) / rng.clamp_min(1e-30), torch.zeros_like(cam))


def copy_bandwidth(nbytes: int = 256 << 20) -> float:
    """Bytes per second of a large tensor copy (read + write counted), the memory-traffic yardstick."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), repeats=5)
    return 2 * nbytes / t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke test)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default="benchmarks/out/bench_gradcam.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(64, 1280, 7, 224), (256, 2048, 7, 224)]
    repeats = 7
    if args.quick:
        shapes, repeats = [(8, 128, 7, 64)], 3
    bw = copy_bandwidth(32 << 20 if args.quick else 256 << 20)
    backends = [b for b in ("cpp", "numba") if b in unitscope.backends()] + ["torch"]
    rows = []
    for B, K, h, S in shapes:
        g = torch.Generator().manual_seed(0)
        A = torch.randn(B, K, h, h, generator=g).relu_()
        G = torch.randn(B, K, h, h, generator=g) * 1e-3
        traffic = (A.numel() + G.numel() + B * S * S) * 4
        floor_s = traffic / bw
        times = {}
        for b in backends:
            times[b] = median_time(lambda: gradcam(A, G, out_size=S, normalize=True, backend=b), repeats)  # noqa: B023 (called in this iteration)
            if b == "cpp":
                buf = torch.empty(B, S, S)
                times["cpp out="] = median_time(lambda: gradcam(A, G, out_size=S, normalize=True, backend="cpp", out=buf), repeats)  # noqa: B023
                os.environ["UNITSCOPE_NO_AVX2"] = "1"
                try:
                    times["cpp SSE2"] = median_time(lambda: gradcam(A, G, out_size=S, normalize=True, backend="cpp"), repeats)  # noqa: B023
                finally:
                    del os.environ["UNITSCOPE_NO_AVX2"]
        times["plain torch (F.interpolate)"] = median_time(lambda: plain_torch(A, G, (S, S)), repeats)  # noqa: B023 (called in this iteration)
        for name, t in times.items():
            rows.append(dict(shape=f"B={B} K={K} {h}x{h}->{S}x{S}", backend=name, ms=t * 1e3,
                             speedup_vs_reference=times["torch"] / t, vs_memory_floor=t / floor_s))
    print(f"threads={args.threads}  copy bandwidth {bw / 1e9:.1f} GB/s  ({platform.processor() or platform.machine()})")
    print(f"{'shape':30s} {'backend':28s} {'median ms':>10s} {'x reference':>12s} {'x floor':>8s}")
    for r in rows:
        print(f"{r['shape']:30s} {r['backend']:28s} {r['ms']:10.2f} {r['speedup_vs_reference']:12.2f} {r['vs_memory_floor']:8.2f}")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(threads=args.threads, copy_bandwidth_GBps=bw / 1e9, machine=platform.machine(),
                       torch=torch.__version__, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
