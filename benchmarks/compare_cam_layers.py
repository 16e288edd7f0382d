"""Which EfficientNet-Lite0 layer should Grad-CAM-style methods explain by default? A quality comparison
(not a timing) of candidate layers on scikit-image's photos: how much the Grad-CAM map depends on the
class, whether Score-CAM gives a map at all, and how much of the layer is negative.

Per photo (224x224) and layer:
  negative: fraction of the layer's activations below 0.
  Grad-CAM corr: mean Pearson correlation (over pixels) between the Grad-CAM maps (ReLU, upsampled
      to 224x224) of the photo's top-5 classes, over the 10 pairs; 1 = the map ignores the class.
      Pairs where a map is constant (all zero) have no correlation: counted in "flat pairs".
  Score-CAM nonzero: fraction of pixels where the Score-CAM map of the top class is > 0.

    python benchmarks/compare_cam_layers.py [--quick] [--layers _bn1,_swish@1] [--channels N] [--photos a,b]

--channels N uses Score-CAM's max_channels=N (the N channels of largest mean activation per image)
instead of all 1280; --quick = one photo, 16 channels. Prints a table, writes
benchmarks/out/compare_cam_layers.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from unitscope import models
from unitscope import saliency as S

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def class_correlation(maps):
    """maps (T, H, W) -> (mean Pearson correlation over the pairs with two non-constant maps, flat pairs)."""
    flat = maps.reshape(maps.shape[0], -1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    norm = flat.norm(dim=1)
    corrs, flat_pairs = [], 0
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            if norm[i] == 0 or norm[j] == 0:
                flat_pairs += 1
            else:
                corrs.append(float(flat[i] @ flat[j] / (norm[i] * norm[j])))
    return (sum(corrs) / len(corrs) if corrs else float("nan")), flat_pairs


def measure(lm, x, layer, channels, batch_size):
    """The three figures for one photo x (1, 3, 224, 224) and one layer."""
    with torch.no_grad(), S.LayerCapture(lm.model, layer) as cap:
        logits = lm.model(lm.preprocess(x))
    A = cap.check()
    top5 = logits.topk(5, dim=1).indices  # (1, 5)
    cams = S.GradCAM(lm.model, layer, preprocess=lm.preprocess, normalize=False)(x, top5)[0]  # (5, H, W)
    corr, flat_pairs = class_correlation(cams)
    score = S.ScoreCAM(lm.model, layer, preprocess=lm.preprocess, max_channels=channels,
                       batch_size=batch_size)(x, top5[:, 0])[0]
    return {"negative": float((A < 0).float().mean()), "gradcam_corr": corr, "flat_pairs": flat_pairs,
            "scorecam_nonzero": float((score > 0).float().mean()), "top5": top5[0].tolist()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one photo, Score-CAM on 16 channels (a smoke run)")
    p.add_argument("--layers", default="_bn1,_swish@1", help="comma-separated layers (default: %(default)s)")
    p.add_argument("--channels", type=int, default=None,
                   help="Score-CAM max_channels (default: all channels; 16 with --quick)")
    p.add_argument("--photos", default=",".join(PHOTOS), help="comma-separated scikit-image photos (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="Score-CAM masked images per forward (default: 64)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                                 "compare_cam_layers.json"))
    args = p.parse_args(argv)
    from skimage import data

    lm = models.load("efficientnet_lite0")
    photos = args.photos.split(",")[:1] if args.quick else args.photos.split(",")
    unknown = [ph for ph in photos if ph not in PHOTOS]
    if unknown:
        p.error(f"--photos must name some of {', '.join(PHOTOS)}, got {', '.join(unknown)}")
    channels = args.channels if args.channels is not None else (16 if args.quick else None)
    layers = args.layers.split(",")
    rows = []
    t0 = time.perf_counter()
    for photo in photos:
        x = models.load_image(getattr(data, photo)(), lm.input_size)
        for layer in layers:
            r = measure(lm, x, layer, channels, args.batch_size)
            rows.append({"photo": photo, "layer": layer, **r})
            print(f"{photo:10s} {layer:10s} negative {r['negative']:.3f}  Grad-CAM top-5 corr {r['gradcam_corr']:.3f} "
                  f"(flat pairs {r['flat_pairs']})  Score-CAM nonzero {r['scorecam_nonzero']:.3f}", flush=True)
    print("\n| layer | negative | Grad-CAM top-5 corr (mean) | flat pairs | Score-CAM nonzero (mean) |")
    print("|---|---|---|---|---|")
    for layer in layers:
        rs = [r for r in rows if r["layer"] == layer]
        corr = [r["gradcam_corr"] for r in rs if r["gradcam_corr"] == r["gradcam_corr"]]
        mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
        print(f"| {layer} | {mean([r['negative'] for r in rs]):.3f} | {mean(corr):.3f} | "
              f"{sum(r['flat_pairs'] for r in rs)} | {mean([r['scorecam_nonzero'] for r in rs]):.3f} |")
    print(f"\n{len(photos)} photos, Score-CAM channels: {channels or 'all'}, {time.perf_counter() - t0:.0f} s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"photos": list(photos), "score_channels": channels, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
