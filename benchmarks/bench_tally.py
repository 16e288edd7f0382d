"""Benchmark of the upsample-threshold-IoU tally (unitscope.IoUTally): images/s of the cpp, numba and
torch-reference backends side by side in one process, plus a re-creation of NetDissect-Lite's
per-unit NumPy loop, for three ResNet-18 layer shapes; prints a table and writes
benchmarks/out/bench_tally.json.

    python benchmarks/bench_tally.py [--quick] [--images N] [--threads T]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import unitscope

NUM_LABELS = 1198
# (category, first label, last label, fraction of unlabelled pixels) for the 4 label maps, Broden-like
MAPS = (("object", 1, 584, 0.1), ("part", 585, 818, 0.75), ("material", 819, 850, 0.5), ("color", 851, 861, 0.0))
CATEGORIES = ("object", "part", "material", "color", "scene", "texture")
SHAPES = ((512, 7, 7, "layer4"), (256, 14, 14, "layer3"), (64, 56, 56, "layer1"))
S = 112


def label_category() -> torch.Tensor:
    cat = torch.zeros(NUM_LABELS, dtype=torch.int64)
    for i, (_, lo, hi, _) in enumerate(MAPS):
        cat[lo:hi + 1] = i
    cat[862:1190] = 4
    cat[1190:] = 5
    return cat


def make_labels(n: int, g: torch.Generator):
    """pixel_labels int16 (n, 4, S, S): piecewise-constant regions (nearest-upsampled random grids);
    image_labels int16 (n, 2): one scene and one texture label."""
    maps = []
    for i, (_, lo, hi, empty) in enumerate(MAPS):
        grid = 4 + 2 * i
        lab = torch.randint(lo, hi + 1, (n, 1, grid, grid), generator=g)
        lab = torch.where(torch.rand(n, 1, grid, grid, generator=g) < empty, torch.zeros_like(lab), lab)
        maps.append(F.interpolate(lab.float(), size=(S, S), mode="nearest").to(torch.int16))
    img = torch.stack([torch.randint(862, 1190, (n,), generator=g), torch.randint(1190, 1198, (n,), generator=g)], 1)
    return torch.cat(maps, 1), img.to(torch.int16)


def make_activations(n: int, K: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Realistic layer outputs: spatially smooth (Gaussian-blurred noise), per-image unit gains
    (a few images excite a unit strongly), ReLU'd so most values are 0. float32 (n, K, h, w)."""
    x = torch.randn(n, K, h + 4, w + 4, generator=g)
    k1 = torch.exp(-torch.arange(-2, 3, dtype=torch.float32) ** 2 / 2.0)
    k2 = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
    x = F.conv2d(x.reshape(n * K, 1, h + 4, w + 4), k2[None, None]).reshape(n, K, h, w)
    gain = torch.exp(torch.randn(n, K, 1, 1, generator=g) * 0.7)
    return torch.relu(x * gain * 3 - 0.3)


def quantile_thresholds(A: torch.Tensor, q: float = 0.995) -> torch.Tensor:
    """The true q quantile of each unit's raw activations over all images (float32 (K,))."""
    K = A.shape[1]
    flat = A.transpose(0, 1).reshape(K, -1)
    return torch.stack([torch.quantile(row.double(), q) for row in flat]).float()


def netdissect_lite_loop(A: np.ndarray, thr: np.ndarray, pix: np.ndarray, img: np.ndarray, labelcat: np.ndarray):
    """A re-creation of NetDissect-Lite's tally: per image, per unit, skip the unit unless its map's
    max exceeds the threshold, else resize the map with PIL bilinear, find the pixels above the
    threshold, bincount their labels, and accumulate per-category unit areas through a label x
    category indicator. Its counts follow its own conventions (PIL resize, repeated labels counted
    per map); it is here as a speed baseline."""
    n, K = A.shape[:2]
    tally_both = np.zeros((K, NUM_LABELS), np.int64)
    tally_units = np.zeros(K, np.int64)
    tally_units_cat = np.zeros((K, labelcat.shape[1]), np.int64)
    tally_labels = np.zeros(NUM_LABELS, np.int64)
    for b in range(n):
        pixels = pix[b]
        counts = np.bincount(pixels.ravel(), minlength=NUM_LABELS)
        counts[0] = 0
        tally_labels += counts
        for unit in range(K):
            fmap = A[b, unit]
            if fmap.max() <= thr[unit]:
                continue
            up = np.asarray(Image.fromarray(fmap).resize((S, S), resample=Image.BILINEAR))
            idx = np.argwhere(up > thr[unit])
            tally_units[unit] += len(idx)
            bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=NUM_LABELS)
            bt[0] = 0
            tally_cat = bt @ labelcat
            tally_both[unit] += bt
            for scalar in img[b]:
                tally_cat = tally_cat + labelcat[scalar]
                tally_both[unit, scalar] += len(idx)
            tally_units_cat[unit] += len(idx) * (tally_cat > 0)
    return tally_both, tally_units, tally_units_cat, tally_labels


def time_backend(backend, A, thr, pix, img, batch, threads, repeats):
    cat = label_category()
    best = float("inf")
    tally = None
    for _ in range(repeats):
        tally = unitscope.IoUTally(A.shape[1], NUM_LABELS, label_category=cat, num_categories=len(CATEGORIES),
                                   out_size=S, backend=backend, num_threads=threads)
        t0 = time.perf_counter()
        for lo in range(0, A.shape[0], batch):
            tally.update(A[lo:lo + batch], thr, pix[lo:lo + batch], img[lo:lo + batch])
        best = min(best, time.perf_counter() - t0)
    return A.shape[0] / best, tally


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small image counts (a smoke run)")
    ap.add_argument("--images", type=int, default=None, help="images for the compiled backends")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default torch.get_num_threads())")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "bench_tally.json"))
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    n_fast = args.images or (64 if args.quick else 512)
    n_ref = 4 if args.quick else 16
    n_ndl = 8 if args.quick else 64
    batch = 32
    backends = [b for b in ("cpp", "numba") if b in unitscope.backends()]
    g = torch.Generator().manual_seed(0)
    pix, img = make_labels(n_fast, g)
    labelcat = np.zeros((NUM_LABELS, len(CATEGORIES)), np.int64)
    labelcat[np.arange(1, NUM_LABELS), label_category().numpy()[1:]] = 1
    rows = []
    print(f"IoU tally, {NUM_LABELS} labels, 4 label maps + 2 image labels at {S}x{S}, thresholds at the 0.995 "
          f"quantile, {threads} threads, batch {batch}")
    for K, h, w, layer in SHAPES:
        A = make_activations(n_fast, K, h, w, g)
        thr = quantile_thresholds(A)
        result = {"layer": layer, "K": K, "h": h, "w": w, "images": {}, "images_per_s": {}}
        # warm up (Numba compiles on first use) and check that every backend counts the same
        ref_rate, ref = time_backend("torch", A[:n_ref], thr, pix[:n_ref], img[:n_ref], batch, threads, 1)
        result["images_per_s"]["torch"], result["images"]["torch"] = ref_rate, n_ref
        for name in backends:
            _, t = time_backend(name, A[:n_ref], thr, pix[:n_ref], img[:n_ref], batch, threads, 1)
            for key in ("intersection", "activation", "label", "activation_total"):
                assert torch.equal(getattr(t, key), getattr(ref, key)), f"{name} {key} differs from the reference"
        for name in backends:
            rate, _ = time_backend(name, A, thr, pix, img, batch, threads, 3)
            result["images_per_s"][name], result["images"][name] = rate, n_fast
        An, thrn, pixn, imgn = A[:n_ndl].numpy(), thr.numpy(), pix[:n_ndl].numpy(), img[:n_ndl].numpy()
        t0 = time.perf_counter()
        netdissect_lite_loop(An, thrn, pixn.astype(np.int64), imgn.astype(np.int64), labelcat)
        result["images_per_s"]["netdissect_lite_loop"] = n_ndl / (time.perf_counter() - t0)
        result["images"]["netdissect_lite_loop"] = n_ndl
        active = (A.amax(dim=(2, 3)) > thr[None, :]).float().mean().item()
        result["unit_image_pairs_passing_max"] = active
        rows.append(result)

    base = ("torch", "netdissect_lite_loop")
    print(f"\n{'layer':8} {'K x h x w':>12} {'backend':>22} {'images/s':>10} {'x torch':>9} {'x NDL loop':>11}")
    for r in rows:
        for name in (*backends, *base):
            rate = r["images_per_s"][name]
            print(f"{r['layer']:8} {r['K']:>5} x {r['h']:>2}x{r['w']:<2} {name:>22} {rate:10.1f} "
                  f"{rate / r['images_per_s']['torch']:9.1f} {rate / r['images_per_s']['netdissect_lite_loop']:11.1f}")
        print(f"{'':8} {'':>12} (unit-image pairs whose max passes: {100 * r['unit_image_pairs_passing_max']:.1f}%)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    meta = {"threads": threads, "batch": batch, "labels": NUM_LABELS, "label_maps": 4, "image_labels": 2,
            "out_size": S, "quantile": 0.995, "quick": args.quick, "machine": platform.platform(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
