"""Feature visualization on the real EfficientNet-Lite0, in one process:

1. Whole layers at once: N channels rendered as one batch (featviz.channel(layer, [c0, ...])) against
   N single renders: seconds, the speed-up, and the largest pixel difference between the two.
2. Against Lucent (pip torch-lucent, when it imports): the same model, layer, channel, image size,
   step count and learning rate; time per step and the objective each final image reaches (both
   measured by featviz.score, without transforms). Lucent is run with the model's weights frozen
   (the same work as ours) and, below 224px, its fixed_image_size set to the render size (else it
   upsamples to 224): it then resizes the transformed image back to that size, ours feeds it as is.
3. How far renders go: for a few channels, the objective of the starting noise, of the best and
   worst dataset images (bundled photos and generated concept images, mean over positions, same
   size as the renders) and of the maximizing and minimizing renders.
4. High-frequency share (featviz.high_frequency_fraction, power above 0.25 cycles/pixel) of plain
   pixel ascent against the Fourier, decorrelated, transformed render, and of the photos.

Prints tables, writes benchmarks/out/bench_featviz.json.

    python benchmarks/bench_featviz.py [--quick] [--layer _blocks.6]   (about 10-15 min; --quick about 1 min)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import types

import torch

from unitscope import featviz, models
from unitscope.featviz import objectives as obj


def settings(quick):
    if quick:
        return dict(n=4, size=64, steps=8, lucent_size=64, lucent_steps=8, channels=[0, 1], concepts=16)
    return dict(n=16, size=128, steps=64, lucent_size=224, lucent_steps=64, channels=[0, 1, 2, 3, 4, 5, 6, 7],
                concepts=200)


def batched_vs_single(model, layer, cfg):
    chs = list(range(cfg["n"]))
    kw = dict(size=cfg["size"], steps=cfg["steps"], progress=False, compile=False)
    featviz.render(model, obj.channel(layer, chs), size=cfg["size"], steps=2, progress=False, compile=False)  # warm-up
    featviz.render(model, obj.channel(layer, 0), size=cfg["size"], steps=2, progress=False, compile=False)
    t = time.perf_counter()
    batched = featviz.render(model, obj.channel(layer, chs), seed=[0] * len(chs), **kw)
    t_batch = time.perf_counter() - t
    t = time.perf_counter()
    singles = [featviz.render(model, obj.channel(layer, c), seed=0, **kw) for c in chs]
    t_single = time.perf_counter() - t
    # oneDNN's batched convolutions differ from batch-1 ones in the last bits (~1e-6 relative); Adam's
    # normalized steps carry that into the images over many steps: report how far
    diffs = torch.stack([(batched.images[i] - s.images[0]).abs() for i, s in enumerate(singles)])
    return {"channels": len(chs), "size": cfg["size"], "steps": cfg["steps"], "batched_s": t_batch,
            "singles_s": t_single, "speedup": t_single / t_batch, "max_pixel_diff": diffs.max().item(),
            "mean_pixel_diff": diffs.mean().item()}


def _import_lucent():
    """Lucent's render loop, params, transforms and objectives. Two of its imports cannot be met here
    and are not used on this path: IPython.display (notebook display, show_image=False) and
    torchvision.transforms.Normalize (its preprocess=True path; we pass preprocess=False and append
    our own normalization). PyPI's torchvision needs the CUDA build of torch, this venv has the CPU
    one. Stand-ins are installed only when the real modules are missing. Lucent 0.1.8 also calls
    kornia.get_rotation_matrix2d / kornia.warp_affine, which kornia >= 0.7 keeps only under
    kornia.geometry.transform: the same functions are aliased back."""
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        ipy = types.ModuleType("IPython")
        ipy.display = types.ModuleType("IPython.display")
        sys.modules.update({"IPython": ipy, "IPython.display": ipy.display})
    try:
        import torchvision.transforms  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.Normalize = lambda mean, std: models.Normalize(mean, std)
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms})
    import kornia
    import kornia.geometry.transform as kgt
    for name in ("get_rotation_matrix2d", "warp_affine"):
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(kgt, name))
    from lucent.optvis import objectives as lobj
    from lucent.optvis import param as lparam
    from lucent.optvis import render as lrender
    from lucent.optvis import transform as ltransform
    return lobj, lparam, lrender, ltransform


def against_lucent(lm, layer, channel, cfg):
    size, steps = cfg["lucent_size"], cfg["lucent_steps"]
    row = {"layer": layer, "channel": channel, "size": size, "steps": steps, "lr": 0.05}
    t = time.perf_counter()
    ours = featviz.render(lm.model, obj.channel(layer, channel), size=size, steps=steps, lr=0.05,
                          preprocess=lm.preprocess, progress=False, compile=False)
    row["unitscope_s_per_step"] = (time.perf_counter() - t) / steps
    row["unitscope_objective"] = ours.values[0].item()
    try:
        lobj, lparam, lrender, ltransform = _import_lucent()
    except Exception as e:  # any import failure: say why, keep the rest of the benchmark
        row["lucent"] = f"not available: {type(e).__name__}: {e}"
        return row
    model = lm.model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:   # the same work as ours: no weight gradients
        p.requires_grad_(False)
    try:
        torch.manual_seed(0)
        transforms = list(ltransform.standard_transforms) + [lm.preprocess]
        t = time.perf_counter()
        images = lrender.render_vis(model, lobj.channel(layer.replace(".", "_"), channel),
                                    param_f=lambda: lparam.image(size), transforms=transforms, thresholds=(steps,),
                                    preprocess=False, progress=False, show_image=False,
                                    fixed_image_size=size if size < 224 else None)
        row["lucent_s_per_step"] = (time.perf_counter() - t) / steps
    finally:
        for p in frozen:
            p.requires_grad_(True)
    final = torch.from_numpy(images[-1]).permute(0, 3, 1, 2).float()
    row["lucent_objective"] = featviz.score(model, obj.channel(layer, channel), final,
                                            preprocess=lm.preprocess)[0].item()
    return row


def _dataset(cfg, size):
    from skimage import data

    from unitscope.data import make_concept_dataset
    names = ["astronaut", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "camera", "coins", "horse",
             "moon", "page", "hubble_deep_field", "immunohistochemistry", "motorcycle_left"]
    photos = [models.load_image(getattr(data, n)(), size)[0] for n in names if hasattr(data, n)]
    root = make_concept_dataset(tempfile.mkdtemp(prefix="bench_featviz_"), cfg["concepts"], size=max(size, 16))
    concepts = featviz.ImageFolder(os.path.join(root, "images"), size)
    return photos + [concepts[i] for i in range(len(concepts))]


def how_far(lm, layer, cfg):
    chs = cfg["channels"]
    images = _dataset(cfg, cfg["size"])
    ex = featviz.dataset_examples(lm.model, layer, images, k=1, units=chs, reduce="mean",
                                  preprocess=lm.preprocess, progress=False)
    kw = dict(size=cfg["size"], steps=cfg["steps"] * 2, seed=[0] * len(chs), preprocess=lm.preprocess, progress=False,
              compile=False)
    high = featviz.render(lm.model, obj.channel(layer, chs), **kw)
    low = featviz.render(lm.model, -obj.channel(layer, chs), **kw)
    rows = []
    for i, c in enumerate(chs):
        rows.append({"channel": c, "noise": high.history[0] / len(chs), "best_image": ex.values(c, "top")[0].item(),
                     "max_render": high.values[i].item(), "worst_image": ex.values(c, "bottom")[0].item(),
                     "min_render": -low.values[i].item()})
    return {"images": len(images), "steps": kw["steps"], "size": cfg["size"], "rows": rows}


def high_frequencies(lm, layer, cfg):
    kw = dict(size=cfg["size"], steps=cfg["steps"] * 2, preprocess=lm.preprocess, progress=False, compile=False)
    c = cfg["channels"][0]
    plain = featviz.render(lm.model, obj.channel(layer, c), param="pixel", decorrelate=False, transforms=None, **kw)
    lucid = featviz.render(lm.model, obj.channel(layer, c), **kw)
    photos = _dataset(dict(cfg, concepts=1), cfg["size"])[:-1]
    return {"channel": c, "plain_pixel": featviz.high_frequency_fraction(plain.images).item(),
            "fourier_decorrelated_transforms": featviz.high_frequency_fraction(lucid.images).item(),
            "photos_median": featviz.high_frequency_fraction(torch.stack(photos)).median().item(),
            "plain_objective": plain.values[0].item(), "lucid_objective": lucid.values[0].item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run (default: off)")
    p.add_argument("--layer", default="_blocks.6", help="layer of EfficientNet-Lite0 (default: %(default)s)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "bench_featviz.json"),
                   help="JSON output (default: benchmarks/out/bench_featviz.json)")
    args = p.parse_args(argv)
    cfg = settings(args.quick)
    lm = models.load("efficientnet_lite0")
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "quick": args.quick, "layer": args.layer}

    r = result["batched"] = batched_vs_single(lm.model, args.layer, cfg)
    print(f"\n1. {r['channels']} channels of {args.layer}, {r['size']}px, {r['steps']} steps")
    print(f"   one batch {r['batched_s']:.1f} s | {r['channels']} single renders {r['singles_s']:.1f} s | "
          f"speed-up {r['speedup']:.2f}x | pixel difference max {r['max_pixel_diff']:.1e}, mean "
          f"{r['mean_pixel_diff']:.1e}")

    r = result["lucent"] = against_lucent(lm, args.layer, cfg["channels"][0], cfg)
    print(f"\n2. channel {r['channel']} of {args.layer}, {r['size']}px, {r['steps']} steps, Adam lr {r['lr']}")
    print("   | | s/step | objective reached |\n   |---|---:|---:|")
    print(f"   | unitscope | {r['unitscope_s_per_step']:.3f} | {r['unitscope_objective']:.2f} |")
    if "lucent_s_per_step" in r:
        print(f"   | Lucent | {r['lucent_s_per_step']:.3f} | {r['lucent_objective']:.2f} |")
    else:
        print(f"   Lucent: {r['lucent']}")

    r = result["how_far"] = how_far(lm, args.layer, cfg)
    print(f"\n3. {args.layer}, {r['size']}px, {r['steps']} steps, {r['images']} dataset images (mean over positions)")
    print("   | channel | noise | best image | max render | worst image | min render |")
    print("   |---|---:|---:|---:|---:|---:|")
    for row in r["rows"]:
        print(f"   | {row['channel']} | {row['noise']:.2f} | {row['best_image']:.2f} | {row['max_render']:.2f} | "
              f"{row['worst_image']:.2f} | {row['min_render']:.2f} |")

    r = result["high_frequencies"] = high_frequencies(lm, args.layer, cfg)
    print(f"\n4. share of power above 0.25 cycles/pixel (channel {r['channel']}): plain pixel ascent "
          f"{r['plain_pixel']:.3f} (objective {r['plain_objective']:.1f}), Fourier + decorrelation + transforms "
          f"{r['fourier_decorrelated_transforms']:.3f} (objective {r['lucid_objective']:.1f}), photos (median) "
          f"{r['photos_median']:.3f}")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
