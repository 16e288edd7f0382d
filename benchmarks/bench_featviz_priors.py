"""The learned priors and the adversarial contrast on the real EfficientNet-Lite0, measured.

1. The denoising-autoencoder prior: for each (layer, channel), the same render (same seed, Fourier
   parameterization, transforms) without and with featviz.dae_prior(w): the channel's activation on the
   final image, its high-frequency energy (featviz.high_frequency_fraction: power above 0.25 cycles/pixel)
   and its DAE reconstruction error, with the ratios prior / no prior; plain pixel ascent (no transforms,
   no decorrelation) beside them for scale.
2. Targeted PGD from bundled photos (scikit-image chelsea, coffee) towards fixed classes, L-inf and L2:
   success, perturbation size, target probability, time per step, beside render's time per step.
Usage: python benchmarks/bench_featviz_priors.py [--quick] [--weight W] [--json PATH] [--png DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from unitscope import featviz, models, viz
from unitscope.featviz import objectives as O
from unitscope.featviz.spectrum import high_frequency_fraction
from unitscope.hooks import LayerCapture

CHANNELS = [("_blocks.3", 10), ("_blocks.6", 5), ("_blocks.10", 8), ("_blocks.14", 3)]
TARGETS = {"chelsea": 1, "coffee": 407}  # goldfish, ambulance


def activation(lm, layer, ch, images):
    with LayerCapture(lm.model, [layer]) as cap, torch.no_grad():
        lm.model(lm.preprocess(images))
        return float(cap.outputs[layer][:, ch].mean())


def dae_rows(lm, channels, size, steps, weight, png_dir):
    rows = []
    variants = {"pixel ascent": dict(param="pixel", decorrelate=False, transforms=None),
                "fourier+transforms": {}, f"+ dae_prior({weight:g})": {}}
    for layer, ch in channels:
        row = {"layer": layer, "channel": ch}
        tiles = []
        for name, kw in variants.items():
            objective = O.channel(layer, ch) + (featviz.dae_prior(weight) if name.startswith("+") else 0)
            t0 = time.perf_counter()
            r = featviz.render(lm.model, objective, size=size, steps=steps, preprocess=lm.preprocess, seed=0,
                               compile=False, **kw)
            row[name] = {"activation": activation(lm, layer, ch, r.images),
                         "hf_fraction": float(high_frequency_fraction(r.images)[0]),
                         "dae_error": float(featviz.reconstruction_error(r.images)[0]),
                         "s_per_step": (time.perf_counter() - t0) / steps}
            tiles.append(r.images[0])
        base, prior = row["fourier+transforms"], row[f"+ dae_prior({weight:g})"]
        row["ratios prior/no prior"] = {k: prior[k] / base[k] for k in ("activation", "hf_fraction", "dae_error")}
        rows.append(row)
        cells = [f"{n}: act {row[n]['activation']:.2f} hf {row[n]['hf_fraction']:.3f} dae {row[n]['dae_error']:.5f}"
                 for n in variants]
        ratios = " ".join(f"{k} {v:.2f}" for k, v in row["ratios prior/no prior"].items())
        print(f"{layer}:{ch} | " + " | ".join(cells) + f" | prior/no prior: {ratios}", flush=True)
        if png_dir:
            viz.save_grid(tiles, os.path.join(png_dir, f"dae_{layer}_{ch}.png"), titles=list(variants))
    return rows


def adversarial_rows(lm, size, steps, png_dir):
    from skimage import data

    rows = []
    x = torch.cat([models.load_image(getattr(data, n)(), size) for n in TARGETS])
    targets = list(TARGETS.values())
    for norm, eps in (("linf", 2 / 255), ("linf", 4 / 255), ("l2", 1.0), ("l2", 2.0)):
        t0 = time.perf_counter()
        r = featviz.adversarial(lm.model, x, targets, eps, steps, norm=norm, preprocess=lm.preprocess)
        dt = (time.perf_counter() - t0) / steps
        for i, name in enumerate(TARGETS):
            row = {"photo": name, "norm": norm, "eps": eps, "steps": steps,
                   "class_before": lm.class_names[int(r.probs_before[i].argmax())],
                   "class_after": lm.class_names[int(r.probs_after[i].argmax())],
                   "target": lm.class_names[targets[i]], "success": bool(r.success[i]),
                   "target_prob_before": float(r.probs_before[i, targets[i]]),
                   "target_prob_after": float(r.probs_after[i, targets[i]]),
                   "perturbation_norm": float(r.perturbation_norm()[i]), "s_per_step_batch2": dt}
            rows.append(row)
            print(f"{name:8s} {norm} eps {eps:.4f}: {row['class_before']} -> {row['class_after']} "
                  f"(target {row['target']} p {row['target_prob_after']:.3f}), |d| {row['perturbation_norm']:.4f}, "
                  f"{dt:.2f} s/step for 2 images", flush=True)
    if png_dir:
        c = featviz.contrast(lm.model, x[:1], targets[0], eps=2 / 255, adversarial_steps=steps,
                             render_steps=64 if size <= 64 else 256, preprocess=lm.preprocess)
        c.save(os.path.join(png_dir, "contrast_chelsea_goldfish.png"), lm.class_names)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one channel, 48 px, 8 steps: a smoke run")
    ap.add_argument("--weight", type=float, default=10.0, help="dae_prior weight (default: %(default)s)")
    ap.add_argument("--size", type=int, default=128, help="render size (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=256, help="render steps (default: %(default)s)")
    ap.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--png", default=None, help="save the images side by side in this folder")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    channels, size, steps, pgd_steps, photo = CHANNELS, args.size, args.steps, args.pgd_steps, 224
    if args.quick:
        channels, size, steps, pgd_steps, photo = CHANNELS[1:2], 48, 8, 2, 160
    if args.png:
        os.makedirs(args.png, exist_ok=True)
    lm = models.load("efficientnet_lite0")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    result = {"settings": {"size": size, "steps": steps, "weight": args.weight, "pgd_steps": pgd_steps,
                           "photo_size": photo, "threads": torch.get_num_threads()},
              "dae_prior": dae_rows(lm, channels, size, steps, args.weight, args.png),
              "adversarial": adversarial_rows(lm, photo, pgd_steps, args.png)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
