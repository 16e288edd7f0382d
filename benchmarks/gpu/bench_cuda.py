"""The CUDA kernels beside plain PyTorch on the same GPU, and against the GPU's measured copy
bandwidth: the figures behind issue 10's speed goals (tally images/s and x plain PyTorch, quantile
and Grad-CAM bandwidth as a fraction of a device-to-device copy). Prints a table, writes JSON.

    python benchmarks/gpu/bench_cuda.py [--quick] [--device cuda|cpu] [--json PATH]

--device cpu runs the same code with the cpp backend and host timers: a smoke test of the script on
a machine without a GPU, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import unitscope
from unitscope import _tensors as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_gradcam import plain_torch as plain_gradcam  # noqa: E402
from bench_tally import CATEGORIES, NUM_LABELS, S, label_category, make_activations, make_labels  # noqa: E402


class Timer:
    """Median seconds of fn() after warm-up: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn, repeats: int = 5, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def copy_bandwidth(timer, device, nbytes):
    """Bytes per second of a device-to-device copy, bytes read plus bytes written."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timer(lambda: dst.copy_(src), repeats=10, warmup=2)


def read_bandwidth(timer, device, nbytes):
    """Bytes per second of x.sum() over nbytes: one read of memory, the floor of a kernel that reads
    its input once (the copy bandwidth above counts a read and a write)."""
    x = torch.rand(nbytes // 4, device=device)
    return nbytes / timer(lambda: x.sum(), repeats=10, warmup=2)


def profile_op(device, fn, name, rows=8):
    """One call of fn under torch.profiler, labelled `name`: its top rows by self time on the device
    (on the CPU for --device cpu; unitscope's kernels are not torch operators, so on the CPU only the
    label's total shows them), and the peak memory the call allocated on the GPU beyond what was
    allocated before."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        with record_function(name):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    table = None
    for key in (("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)):
        try:  # the device column's name changed between torch versions
            table = events.table(sort_by=key, row_limit=rows)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else None
    return {"peak_memory_MiB": peak, "profiler_top": table}


def plain_tally(A, thr, pix, img, cat, num_categories):
    """The tally as plain PyTorch on the tensors' device: F.interpolate, a mask, one bincount per
    label map (no repeated-label removal: the benchmark's label maps use disjoint label ranges)."""
    B, K = A.shape[:2]
    C = cat.shape[0]
    up = F.interpolate(A, size=pix.shape[2:], mode="bilinear", align_corners=False)
    mask = (up > thr[None, :, None, None]).flatten(2)  # (B, K, P)
    n = mask.sum(2)  # (B, K)
    unit = torch.arange(K, device=A.device)[None, :, None] * C
    inter = torch.zeros(K * C, dtype=torch.int64, device=A.device)
    present = torch.zeros(B, num_categories, dtype=torch.int64, device=A.device)  # labelled pixels per category
    for l in range(pix.shape[1]):
        lab = pix[:, l].long().flatten(1)  # (B, P)
        keep = mask & (lab[:, None, :] > 0)
        inter += torch.bincount((unit + lab[:, None, :])[keep], minlength=K * C)
        present.scatter_add_(1, cat[lab], (lab > 0).long())
    inter = inter.reshape(K, C)
    units = torch.arange(K, device=A.device)[None, :].expand(B, K)
    for j in range(img.shape[1]):  # image labels (all nonzero here) cover every pixel
        lab = img[:, j].long()
        inter.index_put_((units, lab[:, None].expand(B, K)), n, accumulate=True)
        present[torch.arange(B, device=A.device), cat[lab]] += 1
    activation = (n[:, :, None] * (present > 0)[:, None, :]).sum(0)
    return inter, activation


def bench_tally(timer, device, quick):
    n, batch = (32, 16) if quick else (1024, 256)
    K, h = (64, 7) if quick else (512, 7)
    g = torch.Generator().manual_seed(0)
    pix, img = make_labels(n, g)
    A = make_activations(n, K, h, h, g)
    thr = torch.quantile(A.transpose(0, 1).reshape(K, -1), 0.995, dim=1)
    A, pix, img, thr = A.to(device), pix.to(device), img.to(device), thr.to(device)
    cat = label_category().to(device)
    backend = "cuda" if device.type == "cuda" else "cpp"

    def ours():
        t = unitscope.IoUTally(K, NUM_LABELS, label_category=cat, num_categories=len(CATEGORIES), out_size=S,
                               device=device, backend=backend)
        for lo in range(0, n, batch):
            t.update(A[lo:lo + batch], thr, pix[lo:lo + batch], img[lo:lo + batch])
        return t

    n_plain, b_plain = (8, 8) if quick else (128, 32)

    def plain():
        for lo in range(0, n_plain, b_plain):
            plain_tally(A[lo:lo + b_plain], thr, pix[lo:lo + b_plain], img[lo:lo + b_plain], cat, len(CATEGORIES))

    t_ours = timer(ours, repeats=3)
    t_plain = timer(plain, repeats=3)
    got = ours()
    inter, _ = plain_tally(A[:b_plain], thr, pix[:b_plain], img[:b_plain], cat, len(CATEGORIES))
    first = unitscope.IoUTally(K, NUM_LABELS, label_category=cat, num_categories=len(CATEGORIES), out_size=S,
                               device=device, backend=backend).update(A[:b_plain], thr, pix[:b_plain], img[:b_plain])
    diff = (first.intersection - inter).abs().sum().item() / max(1, inter.sum().item())
    ours_ips, plain_ips = n / t_ours, n_plain / t_plain
    return {"profile": profile_op(device, ours, "unitscope.tally"),
            "shape": f"K={K} {h}x{h}->{S}x{S}, {NUM_LABELS} labels, 4 maps + 2 image labels", "images": n,
            "batch": batch, "unitscope_images_per_s": ours_ips, "plain_torch_images_per_s": plain_ips,
            "x_plain_torch": ours_ips / plain_ips, "intersection_rel_diff_vs_plain": diff,
            "images_counted": got.images, "goal": ">= 20,000 images/s and >= 20x plain PyTorch"}


def bench_quantiles(timer, device, bw, quick, rbw=None):
    B, K, hw, batches = (4, 32, 14, 2) if quick else (64, 512, 56, 8)
    g = torch.Generator(device=device).manual_seed(1)
    xs = [torch.randn(B, K, hw, hw, generator=g, device=device).relu_() for _ in range(batches)]
    total = B * hw * hw * batches
    read_bytes = sum(x.numel() * 4 for x in xs)
    backend = "cuda" if device.type == "cuda" else "cpp"
    rows = []
    for name, make in (("ExactQuantile q=0.995", lambda be: unitscope.ExactQuantile(K, 0.995, total, device=device,
                                                                                   backend=be)),
                       ("QuantileSketch", lambda be: unitscope.QuantileSketch(K, device=device, backend=be))):
        def feed(be, make=make):
            q = make(be)
            for x in xs:
                q.update(x)
            return q

        t_ours = timer(lambda: feed(backend), repeats=3)
        t_plain = timer(lambda: feed("torch"), repeats=1 if quick else 2)
        prof = profile_op(device, lambda: feed(backend), f"unitscope.{name.split()[0]}")
        rows.append({"profile": prof, "method": name, "channels": K,
                     "values_per_channel": total, "read_GB": read_bytes / 1e9,
                     "unitscope_ms": t_ours * 1e3, "plain_torch_backend_ms": t_plain * 1e3,
                     "x_plain_torch": t_plain / t_ours, "read_GBps": read_bytes / t_ours / 1e9,
                     "fraction_of_copy_bandwidth": read_bytes / t_ours / bw,
                     "x_one_read": read_bytes / t_ours / rbw if rbw else None,  # issue 24: >= 0.4x for ExactQuantile
                     "goal": "one read of the activations at >= 50% of the copy bandwidth"})
    flat = torch.cat([x.transpose(0, 1).reshape(K, -1) for x in xs], 1)
    k = max(1, round(0.995 * (flat.shape[1] - 1)) + 1)
    t_kth = timer(lambda: torch.kthvalue(flat, k, dim=1), repeats=3)
    rows.append({"method": "torch.kthvalue over the whole stream held in memory (not streaming)", "channels": K,
                 "values_per_channel": total, "unitscope_ms": None, "plain_torch_backend_ms": t_kth * 1e3,
                 "read_GBps": read_bytes / t_kth / 1e9, "fraction_of_copy_bandwidth": read_bytes / t_kth / bw})
    return rows


def bench_gradcam(timer, device, bw, quick):
    B, K, h, S_out = (8, 128, 7, 64) if quick else (256, 2048, 7, 224)
    g = torch.Generator(device=device).manual_seed(2)
    A = torch.randn(B, K, h, h, generator=g, device=device).relu_()
    G = torch.randn(B, K, h, h, generator=g, device=device) * 1e-3
    backend = "cuda" if device.type == "cuda" else "cpp"
    t_ours = timer(lambda: unitscope.kernels.gradcam(A, G, out_size=S_out, normalize=True, backend=backend), repeats=20)
    t_plain = timer(lambda: plain_gradcam(A, G, (S_out, S_out)), repeats=20)
    traffic = (A.numel() + G.numel() + B * S_out * S_out) * 4
    err = (unitscope.kernels.gradcam(A, G, out_size=S_out, normalize=True, backend=backend)
           - plain_gradcam(A, G, (S_out, S_out))).abs().max().item()
    prof = profile_op(device, lambda: unitscope.kernels.gradcam(A, G, out_size=S_out, normalize=True, backend=backend),
                      "unitscope.gradcam")
    return {"profile": prof, "shape": f"B={B} K={K} {h}x{h}->{S_out}x{S_out} normalized", "unitscope_ms": t_ours * 1e3,
            "plain_torch_ms": t_plain * 1e3, "x_plain_torch": t_plain / t_ours, "traffic_GB": traffic / 1e9,
            "fraction_of_copy_bandwidth": traffic / t_ours / bw, "max_abs_diff_vs_plain": err,
            "goal": ">= 50% of the copy bandwidth and >= 3x plain PyTorch"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run); default: the issue's sizes")
    ap.add_argument("--device", default="cuda", help="cuda (default; the current device) or cpu (smoke test only)")
    ap.add_argument("--json", default="benchmarks/out/bench_cuda.json", help="where the JSON goes (default: %(default)s)")
    args = ap.parse_args()
    device = T.resolve_device(args.device)
    if device.type == "cuda" and "cuda" not in unitscope.backends():
        print(f"bench_cuda: error: the cuda backend is {unitscope.backends(verbose=True)['cuda']}", file=sys.stderr)
        return 2
    timer = Timer(device)
    size = (64 << 20) if args.quick else (2 << 30)
    bw = copy_bandwidth(timer, device, size)
    rbw = read_bandwidth(timer, device, size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test, not a measurement)"
    print(f"{name}: device copy bandwidth {bw / 1e9:.0f} GB/s (read + write); x.sum() over {size / 1e9:.2f} GB reads "
          f"{rbw / 1e9:.0f} GB/s (the floor of one read)")
    out = {"device": name, "torch": torch.__version__, "quick": args.quick, "copy_bandwidth_GBps": bw / 1e9,
           "read_bandwidth_GBps": rbw / 1e9, "read_bandwidth_GB_read": size / 1e9}
    steps = (("tally", lambda: bench_tally(timer, device, args.quick)),
             ("quantiles", lambda: bench_quantiles(timer, device, bw, args.quick, rbw)),
             ("gradcam", lambda: bench_gradcam(timer, device, bw, args.quick)))
    for key, run in steps:  # one failing part does not lose the others' figures
        t0 = time.perf_counter()
        try:
            out[key] = run()
        except Exception as e:  # noqa: BLE001 - recorded in the JSON and printed
            out[key] = {"error": f"{type(e).__name__}: {e}"}
        print(f"{key} ({time.perf_counter() - t0:.0f} s): {json.dumps(out[key], indent=1)}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 1 if any("error" in out[k] for k, _ in steps if isinstance(out[k], dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
