"""Train the denoising autoencoder that unitscope.featviz.dae_prior uses, once, deterministically:
random patches of the photos that ship with scikit-image and of generated concept images, Gaussian
noise of a random level, mean squared error to the clean patch. Writes float16 weights.

    PYTHONPATH=python python tools/train_dae.py --out python/unitscope/featviz/weights/dae.pt
(the shipped weights: the defaults, 2000 steps; about 10 minutes on one free CPU core, 26 on a shared
2-core machine. The same arguments give the same weights on one machine and torch version.)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unitscope.data import make_concept_dataset
from unitscope.featviz.dae import FORMAT, VERSION, DenoisingAutoencoder
from unitscope.models import load_image

# scikit-image's bundled photos that load offline (no pooch download); grey ones are repeated to RGB
COLOR_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina"]
GREY_PHOTOS = ["camera", "coins", "moon", "brick", "grass", "gravel"]
SCALES = (1.0, 0.5, 0.25)  # each photo at these scales, so patches see both fine texture and objects


def image_pool(n_concepts: int, seed: int) -> list[torch.Tensor]:
    """(3, H, W) float32 images in [0, 1]: every photo at every scale, and the concept images."""
    from skimage import data

    pool = []
    for name in COLOR_PHOTOS + GREY_PHOTOS:
        x = load_image(getattr(data, name)())
        h, w = x.shape[-2:]
        for s in SCALES:
            size = (max(48, round(h * s)), max(48, round(w * s)))
            pool.append(load_image(getattr(data, name)(), size)[0] if s != 1.0 else x[0])
    with tempfile.TemporaryDirectory() as tmp:
        root = make_concept_dataset(Path(tmp) / "concepts", n_concepts, size=128, seed=seed)
        for p in sorted((root / "images" / "generated").glob("*.jpg")):
            pool.append(load_image(p)[0])
    return pool


def sample_batch(pool, batch: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Random patches (batch, 3, patch, patch), randomly flipped; images drawn uniformly."""
    out = torch.empty(batch, 3, patch, patch)
    for i in range(batch):
        im = pool[int(torch.randint(len(pool), (1,), generator=g))]
        h, w = im.shape[-2:]
        y = int(torch.randint(h - patch + 1, (1,), generator=g))
        x = int(torch.randint(w - patch + 1, (1,), generator=g))
        p = im[:, y:y + patch, x:x + patch]
        if torch.rand(1, generator=g) < 0.5:
            p = p.flip(-1)
        out[i] = p
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="weights file to write (.pt)")
    ap.add_argument("--steps", type=int, default=2000, help="training steps (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32, help="patches per step (default: %(default)s)")
    ap.add_argument("--patch", type=int, default=32, help="patch side in pixels (default: %(default)s)")
    ap.add_argument("--width", type=int, default=32, help="feature channels of the DAE (default: %(default)s)")
    ap.add_argument("--sigma", type=float, nargs=2, default=(0.02, 0.2),
                    help="noise standard deviation range, uniform per patch (default: 0.02 0.2)")
    ap.add_argument("--concepts", type=int, default=64, help="generated concept images (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed for data, noise and initialization (default: 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    t0 = time.time()
    pool = image_pool(args.concepts, args.seed)
    print(f"{len(pool)} images in the pool ({time.time() - t0:.1f} s)", flush=True)
    g = torch.Generator().manual_seed(args.seed)
    model = DenoisingAutoencoder(args.width)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    lo, hi = args.sigma
    val = sample_batch(pool, 256, args.patch, torch.Generator().manual_seed(args.seed + 1))
    val_sigma = torch.linspace(lo, hi, 256).view(-1, 1, 1, 1)
    val_noisy = val + val_sigma * torch.randn(val.shape, generator=torch.Generator().manual_seed(args.seed + 2))

    def validate():
        with torch.no_grad():
            return float(F.mse_loss(model(val_noisy), val)), float(F.mse_loss(val_noisy, val))

    running = None
    for step in tqdm(range(args.steps), disable=args.quiet, mininterval=5):
        clean = sample_batch(pool, args.batch, args.patch, g)
        sigma = lo + (hi - lo) * torch.rand(args.batch, 1, 1, 1, generator=g)
        noisy = clean + sigma * torch.randn(clean.shape, generator=g)
        loss = F.mse_loss(model(noisy), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            v, v0 = validate()
            print(f"step {step + 1}: train mse {running:.5f}, validation mse {v:.5f} (noisy input {v0:.5f}), "
                  f"{time.time() - t0:.0f} s", flush=True)
    blob = {"format": FORMAT, "version": VERSION, "width": args.width,
            "sigma": [lo, hi], "patch": args.patch, "steps": args.steps, "seed": args.seed,
            "state_dict": {k: v.detach().half() for k, v in model.state_dict().items()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp{os.getpid()}"
    torch.save(blob, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB) in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
