"""`unitscope featviz`: for each channel of a layer, the image that maximizes it and the one that
minimizes it (several channels per optimization) and, with --dataset, its most and least activating
dataset images; one grid PNG per channel and a page OUT/featviz.html (images under OUT/featviz/)."""
from __future__ import annotations

import os

import torch

from unitscope._html import esc, page
from unitscope._io import atomic_write_text
from unitscope.featviz import objectives
from unitscope.featviz._loop import frozen
from unitscope.featviz.dae import dae_prior
from unitscope.featviz.dataset_examples import dataset_examples
from unitscope.featviz.render import render
from unitscope.hooks import LayerCapture
from unitscope.viz import save_grid, save_image, to_image_array


def _finite_nonnegative(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_arguments(p):
    from unitscope import cli
    from unitscope.models.own import add_model_arguments

    add_model_arguments(p, classes=False)  # --model, --weights, --mean/--std/--no-normalize
    p.add_argument("--layer", required=True,
                   help="module name as in model.named_modules(), e.g. _blocks.6, or name@k for the k-th call of a "
                        "module that runs several times (`unitscope layers --model M` lists them)")
    p.add_argument("--channels", default="0,1,2,3",
                   help="comma-separated channel indices, or a range START-END (inclusive) (default: %(default)s)")
    p.add_argument("--objective", choices=["channel", "neuron"], default="channel",
                   help="channel: the channel's mean over all positions; neuron: its value at the centre "
                        "position (default: %(default)s)")
    p.add_argument("--size", type=cli.positive_int, default=128,
                   help="rendered image size in pixels, at least 16 and at least what the model can run on "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, default=256, help="optimization steps per render (default: %(default)s)")
    p.add_argument("--lr", type=cli.positive_float, default=0.05, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--param", choices=["fourier", "pixel"], default="fourier",
                   help="image parameterization: a frequency-scaled spectrum or plain pixels (default: %(default)s)")
    p.add_argument("--batch", type=cli.positive_int, default=8,
                   help="channels rendered together in one optimization; each image is the one rendered "
                        "alone, to float precision (default: %(default)s)")
    p.add_argument("--device", type=cli.device, default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--prior-weight", type=_finite_nonnegative, default=0.0,
                   help="weight of the shipped denoising-autoencoder prior (featviz.dae_prior), which pulls the "
                        "renders towards natural images; about 10 smooths them at little cost in activation, "
                        "0 turns it off (default: %(default)s)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="random seed of every render (default: %(default)s)")
    p.add_argument("--dataset", type=cli.existing_dir, default=None,
                   help="a Broden folder or a folder of images: adds each channel's most and least activating "
                        "images (their receptive-field patches) to its grid (default: none)")
    p.add_argument("--examples", type=cli.positive_int, default=9,
                   help="dataset images shown per channel, each way (default: %(default)s)")
    p.add_argument("--reduce", choices=["mean", "max"], default="max",
                   help="how a dataset image's activation map becomes the channel's score: max over positions "
                        "(the strongest response anywhere, as dataset_examples() and the dissection's top images "
                        "rank them) or mean (as the channel objective) (default: %(default)s)")
    p.add_argument("--dataset-size", type=cli.positive_int, default=224,
                   help="dataset images are resized to this size (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-channel lines (default: off)")
    p.add_argument("--out", required=True, type=cli.output_dir,
                   help="output folder; writes featviz.html and featviz/*.png there")


def _channels(spec: str) -> list[int]:
    try:
        if "-" in spec.strip()[1:]:
            lo, hi = (int(v) for v in spec.split("-", 1))
            if hi < lo:
                raise ValueError(f"--channels {spec!r}: the range END {hi} is below its START {lo}")
            return list(range(lo, hi + 1))
        channels = [int(c) for c in spec.split(",") if c.strip()]
    except ValueError as e:
        if "END" in str(e):
            raise
        raise ValueError(f"--channels must be comma-separated integers or START-END, got {spec!r}") from None
    if not channels:
        raise ValueError(f"--channels names no channel: {spec!r}")
    return list(dict.fromkeys(channels))


def _check(args, model, preprocess, device) -> list[int]:
    """Validate every argument before any long step; returns the channels."""
    for name, low in (("size", 16), ("steps", 1), ("batch", 1), ("examples", 1), ("dataset_size", 16)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not args.prior_weight >= 0:
        raise ValueError(f"--prior-weight must be >= 0, got {args.prior_weight}")
    if args.dataset is not None and not os.path.isdir(args.dataset):
        raise ValueError(f"--dataset {args.dataset!r} is not a folder")
    channels = _channels(args.channels)
    cap = LayerCapture(model, args.layer, detach=True)  # a bad name (or '@k') fails here, with the close names
    name = cap.spec
    try:
        with frozen(model), torch.no_grad(), cap:
            model(preprocess(torch.full((1, 3, args.size, args.size), 0.5, device=device)))
    except RuntimeError as e:  # e.g. "Kernel size can't be greater than actual input size"
        raise ValueError(f"--size {args.size}: the model cannot run on a {args.size}x{args.size} image "
                         f"({str(e).splitlines()[0]}); try a larger --size") from e
    num = cap.output.shape[1]
    bad = [c for c in channels if not 0 <= c < num]
    if bad:
        raise ValueError(f"--channels: channel {bad[0]} is out of range for layer {name!r} with {num} channels "
                         f"(0..{num - 1})")
    return channels


def _caption(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values.tolist())


def run(args) -> int:
    from unitscope.models.own import loaded_from_args

    device = torch.device(args.device) if args.device else torch.device("cpu")
    loaded = loaded_from_args(args, device, classifier=False)
    channels = _check(args, loaded.model, loaded.preprocess, device)
    folder = os.path.join(args.out, "featviz")
    os.makedirs(folder, exist_ok=True)
    say = (lambda *a: None) if args.quiet else print
    make = objectives.channel if args.objective == "channel" else objectives.neuron
    opts = dict(size=args.size, steps=args.steps, lr=args.lr, param=args.param, preprocess=loaded.preprocess,
                device=device, progress=not args.quiet)
    ex = None
    if args.dataset is not None:
        ex = dataset_examples(loaded.model, args.layer, args.dataset, k=args.examples, units=channels,
                              preprocess=loaded.preprocess, reduce=args.reduce, size=args.dataset_size,
                              device=device, progress=not args.quiet)
    stem = args.layer.replace(".", "_")
    cells = []
    for start in range(0, len(channels), args.batch):
        chunk = channels[start:start + args.batch]
        seeds = [args.seed] * len(chunk)  # each channel's image as if rendered alone with --seed
        prior = dae_prior(args.prior_weight) if args.prior_weight > 0 else 0
        high = render(loaded.model, make(args.layer, chunk) + prior, seed=seeds, **opts)
        low = render(loaded.model, -make(args.layer, chunk) + prior, seed=seeds, **opts)
        for i, c in enumerate(chunk):
            base = f"{stem}_{args.objective}{c}"
            save_image(to_image_array(high.images[i]), os.path.join(folder, f"{base}_max.png"))
            save_image(to_image_array(low.images[i]), os.path.join(folder, f"{base}_min.png"))
            top_row, bottom_row = [high.images[i]], [low.images[i]]
            titles_top, titles_bottom = ["max"], ["min"]
            text = f"max render {high.values[i]:.2f}, min render {-low.values[i]:.2f}"
            if ex is not None:
                top_row += ex.patches(c, "top", size=args.size)
                bottom_row += ex.patches(c, "bottom", size=args.size)
                titles_top += [f"{v:.2f}" for v in ex.values(c, "top")]
                titles_bottom += [f"{v:.2f}" for v in ex.values(c, "bottom")]
                text += (f"; dataset ({args.reduce}) top {_caption(ex.values(c, 'top')[:3])}..., "
                         f"bottom {_caption(ex.values(c, 'bottom')[:3])}...")
            grid = save_grid([to_image_array(t) for t in top_row + bottom_row], os.path.join(folder, f"{base}.png"),
                             titles=titles_top + titles_bottom, ncols=len(top_row))
            cells.append((c, os.path.basename(grid), text))
            say(f"{args.objective} {c}: {text} -> {grid}")
    _page(args, cells, ex)
    say(f"wrote {os.path.join(args.out, 'featviz.html')}")
    return 0


def _page(args, cells, ex):
    rf = ""
    if ex is not None and ex.receptive_field is not None:
        y0, x0, y1, x1 = ex.receptive_field["box"]
        rf = (f"<p>Dataset patches: the receptive field ({y1 - y0}x{x1 - x0} pixels of a {args.dataset_size}px "
              f"image, measured by {ex.receptive_field['method']}) around the channel's peak (top) or trough "
              "(bottom) position.</p>")
    rows = "\n".join(f'<figure><img src="featviz/{esc(n)}" alt="{esc(args.objective)} {c}">'
                     f"<figcaption>{esc(args.objective)} {c}: {esc(t)}</figcaption></figure>" for c, n, t in cells)
    body = (f"<h1>{esc(args.model)} / {esc(args.layer)}</h1>"
            f"<p>Each row pair: the image that maximizes the {esc(args.objective)} (top row, then the dataset images "
            f"that activate it most) and the one that minimizes it (bottom row, then the least activating images). "
            f"{args.steps} steps, {esc(args.param)} parameterization, seed {args.seed}.</p>{rf}\n{rows}\n")
    atomic_write_text(os.path.join(args.out, "featviz.html"),
                      page(f"featviz {args.model} {args.layer}", body, "figure{margin:10px 0;font:13px sans-serif}"))
