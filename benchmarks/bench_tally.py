"""Benchmark of the upsample-threshold-IoU tally (unitscope.IoUTally): images/s of the cpp, numba and
torch-reference backends side by side in one process, plus a re-creation of NetDissect-Lite's
per-unit NumPy loop; prints a table and writes benchmarks/out/bench_tally.json.

Three kinds of data (--data, default all three):
- gain: synthetic, three ResNet-18 layer shapes, Broden-like label maps; smooth activations with a
  random gain per (image, unit), so that a unit is strong on a few images (many (image, unit) pairs
  never reach the threshold and are skipped);
- nogain: the same without the gains (fewer pairs can be skipped);
- efficientnet: the real EfficientNet-Lite0's `_blocks.10` and `_swish@1` activations on the
  generated concept set (benchmarks/out/concepts_512_224, made if missing) with its own labels.

    python benchmarks/bench_tally.py [--quick] [--images N] [--threads T] [--data gain,nogain,efficientnet]
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


def make_activations(n: int, K: int, h: int, w: int, g: torch.Generator, gain: bool = True) -> torch.Tensor:
    """Layer-like outputs: spatially smooth (Gaussian-blurred noise), per-image unit gains when
    `gain` (a few images excite a unit strongly), ReLU'd so most values are 0. float32 (n, K, h, w)."""
    x = torch.randn(n, K, h + 4, w + 4, generator=g)
    k1 = torch.exp(-torch.arange(-2, 3, dtype=torch.float32) ** 2 / 2.0)
    k2 = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
    x = F.conv2d(x.reshape(n * K, 1, h + 4, w + 4), k2[None, None]).reshape(n, K, h, w)
    if not gain:
        return torch.relu(x * 3 - 0.3)
    gains = torch.exp(torch.randn(n, K, 1, 1, generator=g) * 0.7)
    return torch.relu(x * gains * 3 - 0.3)


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
    C, S = labelcat.shape[0], pix.shape[-1]
    tally_both = np.zeros((K, C), np.int64)
    tally_units = np.zeros(K, np.int64)
    tally_units_cat = np.zeros((K, labelcat.shape[1]), np.int64)
    tally_labels = np.zeros(C, np.int64)
    for b in range(n):
        pixels = pix[b]
        counts = np.bincount(pixels.ravel(), minlength=C)
        counts[0] = 0
        tally_labels += counts
        for unit in range(K):
            fmap = A[b, unit]
            if fmap.max() <= thr[unit]:
                continue
            up = np.asarray(Image.fromarray(fmap).resize((S, S), resample=Image.BILINEAR))
            idx = np.argwhere(up > thr[unit])
            tally_units[unit] += len(idx)
            bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=C)
            bt[0] = 0
            tally_cat = bt @ labelcat
            tally_both[unit] += bt
            for scalar in img[b]:
                if scalar == 0:
                    continue
                tally_cat = tally_cat + labelcat[scalar]
                tally_both[unit, scalar] += len(idx)
            tally_units_cat[unit] += len(idx) * (tally_cat > 0)
    return tally_both, tally_units, tally_units_cat, tally_labels


def time_backend(backend, A, thr, pix, img, batch, threads, repeats, cat=None, num_categories=len(CATEGORIES)):  # noqa: B008 (a constant)
    cat = label_category() if cat is None else cat
    best = float("inf")
    tally = None
    for _ in range(repeats):
        tally = unitscope.IoUTally(A.shape[1], len(cat), label_category=cat, num_categories=num_categories,
                                   out_size=tuple(pix.shape[-2:]), backend=backend, num_threads=threads)
        t0 = time.perf_counter()
        for lo in range(0, A.shape[0], batch):
            tally.update(A[lo:lo + batch], thr, pix[lo:lo + batch], img[lo:lo + batch])
        best = min(best, time.perf_counter() - t0)
    return A.shape[0] / best, tally


def bench_case(data, layer, A, pix, img, cat, num_categories, backends, threads, n_ref, n_ndl, batch):
    """One layer's activations A (n, K, h, w) with labels: every backend and the NDL loop."""
    K, h, w = A.shape[1:]
    thr = quantile_thresholds(A)
    result = {"data": data, "layer": layer, "K": K, "h": h, "w": w, "images": {}, "images_per_s": {}}
    # warm up (Numba compiles on first use) and check that every backend counts the same
    ref_rate, ref = time_backend("torch", A[:n_ref], thr, pix[:n_ref], img[:n_ref], batch, threads, 1, cat, num_categories)
    result["images_per_s"]["torch"], result["images"]["torch"] = ref_rate, n_ref
    for name in backends:
        _, t = time_backend(name, A[:n_ref], thr, pix[:n_ref], img[:n_ref], batch, threads, 1, cat, num_categories)
        for key in ("intersection", "activation", "label", "activation_total"):
            assert torch.equal(getattr(t, key), getattr(ref, key)), f"{name} {key} differs from the reference"
    for name in backends:
        rate, _ = time_backend(name, A, thr, pix, img, batch, threads, 3, cat, num_categories)
        result["images_per_s"][name], result["images"][name] = rate, A.shape[0]
    labelcat = np.zeros((len(cat), num_categories), np.int64)
    labelcat[np.arange(1, len(cat)), cat.numpy()[1:]] = 1
    An, thrn = A[:n_ndl].numpy(), thr.numpy()
    pixn, imgn = pix[:n_ndl].numpy().astype(np.int64), img[:n_ndl].numpy().astype(np.int64)
    t0 = time.perf_counter()
    netdissect_lite_loop(An, thrn, pixn, imgn, labelcat)
    result["images_per_s"]["netdissect_lite_loop"] = n_ndl / (time.perf_counter() - t0)
    result["images"]["netdissect_lite_loop"] = n_ndl
    result["unit_image_pairs_passing_max"] = (A.amax(dim=(2, 3)) > thr[None, :]).float().mean().item()
    return result


def efficientnet_case(n: int):
    """(layer, activations, pixel_labels, image_labels, label_category, num_categories) per layer:
    the real EfficientNet-Lite0 on n generated concept images (eager forward, 2 layers)."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_dissect import load_efficientnet
    from unitscope.data import BrodenDataset, collate_broden, make_concept_dataset
    from unitscope.dissect.capture import LayerCapture
    from unitscope.dissect.run import imagenet_preprocess
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", f"concepts_{n}_224")
    if not os.path.isfile(os.path.join(root, "index.csv")):
        make_concept_dataset(root, n, size=224, seed=0, progress=False)
    ds = BrodenDataset(root)
    model, pre, layers = load_efficientnet()
    pre = pre if pre is not None else imagenet_preprocess
    acts = {layer: [] for layer in layers}
    pix, img = [], []
    with torch.no_grad(), LayerCapture(model, layers) as cap:
        for lo in range(0, n, 32):
            batch = collate_broden([ds[i] for i in range(lo, min(n, lo + 32))])
            out = cap(pre(batch["image"]))
            for layer in layers:
                acts[layer].append(out[layer].float().contiguous())
            pix.append(batch["pixel_labels"])
            img.append(batch["image_labels"])
    cat = torch.from_numpy(ds.label_category.clip(min=0))
    pix, img = torch.cat(pix), torch.cat(img)
    return [(layer, torch.cat(acts[layer]), pix, img, cat, len(ds.categories)) for layer in layers]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small image counts (a smoke run)")
    ap.add_argument("--images", type=int, default=None, help="images for the compiled backends")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default torch.get_num_threads())")
    ap.add_argument("--data", default="gain,nogain,efficientnet",
                    help="kinds of data, comma-separated (default gain,nogain,efficientnet; see above)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "bench_tally.json"))
    args = ap.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    n_fast = args.images or (64 if args.quick else 512)
    n_ref = 4 if args.quick else 16
    n_ndl = 8 if args.quick else 64
    batch = 32
    kinds = [k.strip() for k in args.data.split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("gain", "nogain", "efficientnet")]
    if bad:
        ap.error(f"--data: unknown kind(s) {bad}; choose from gain, nogain, efficientnet")
    backends = [b for b in ("cpp", "numba") if b in unitscope.backends()]
    rows = []
    print(f"IoU tally, thresholds at the 0.995 quantile, {threads} threads, batch {batch}; synthetic data: "
          f"{NUM_LABELS} labels, 4 label maps + 2 image labels at {S}x{S}")
    for kind in kinds:
        if kind == "efficientnet":
            for layer, A, pix, img, cat, ncat in efficientnet_case(n_fast):
                rows.append(bench_case(kind, layer, A, pix, img, cat, ncat, backends, threads, n_ref, n_ndl, batch))
            continue
        g = torch.Generator().manual_seed(0)
        pix, img = make_labels(n_fast, g)
        for K, h, w, layer in SHAPES:
            A = make_activations(n_fast, K, h, w, g, gain=kind == "gain")
            rows.append(bench_case(kind, layer, A, pix, img, label_category(), len(CATEGORIES), backends, threads,
                                   n_ref, n_ndl, batch))

    base = ("torch", "netdissect_lite_loop")
    print(f"\n{'data':12} {'layer':10} {'K x h x w':>12} {'backend':>22} {'images/s':>10} {'x torch':>9} {'x NDL loop':>11}")
    for r in rows:
        for name in (*backends, *base):
            rate = r["images_per_s"][name]
            print(f"{r['data']:12} {r['layer']:10} {r['K']:>5} x {r['h']:>2}x{r['w']:<2} {name:>22} {rate:10.1f} "
                  f"{rate / r['images_per_s']['torch']:9.1f} {rate / r['images_per_s']['netdissect_lite_loop']:11.1f}")
        print(f"{'':23} {'':>12} (unit-image pairs whose max passes: {100 * r['unit_image_pairs_passing_max']:.1f}%)")
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
