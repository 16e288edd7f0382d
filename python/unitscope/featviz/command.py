"""`unitscope featviz`: render what channels of a layer respond to, as PNGs and a small HTML page."""
from __future__ import annotations

import html
import os

from unitscope.featviz import objectives
from unitscope.featviz.render import render
from unitscope.viz import save_image, to_image_array


def add_arguments(p):
    p.add_argument("--model", required=True, help="registry name (see unitscope.models.names())")
    p.add_argument("--layer", required=True, help="module name as in model.named_modules()")
    p.add_argument("--channels", default="0,1,2,3", help="comma-separated channel indices")
    p.add_argument("--objective", choices=["channel", "neuron"], default="channel")
    p.add_argument("--minimize", action="store_true", help="render what lowers the channel instead")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--param", choices=["fourier", "pixel"], default="fourier")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    from unitscope import models

    try:
        channels = [int(c) for c in args.channels.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"--channels must be comma-separated integers, got {args.channels!r}")
    loaded = models.load(args.model, device=args.device)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for c in channels:
        make = objectives.channel if args.objective == "channel" else objectives.neuron
        objective = make(args.layer, c)
        if args.minimize:
            objective = -objective
        r = render(loaded.model, objective, size=args.size, steps=args.steps, lr=args.lr, param=args.param,
                   preprocess=loaded.preprocess, device=args.device, seed=args.seed, progress=True)
        name = f"{args.layer.replace('.', '_')}_{args.objective}{c}{'_min' if args.minimize else ''}.png"
        save_image(to_image_array(r.images[0]), os.path.join(args.out, name))
        rows.append((c, name, r.history[-1]))
        print(f"{objective.name}: final objective {r.history[-1]:.3f} -> {name}")
    cells = "\n".join(f'<figure><img src="{html.escape(n)}" width="{args.size}"><figcaption>{args.objective} {c}'
                      f"<br>objective {v:.3f}</figcaption></figure>" for c, n, v in rows)
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(args.model)} {html.escape(args.layer)}</title>"
            "<style>figure{display:inline-block;margin:6px;font:12px sans-serif;text-align:center}</style>"
            f"<h1>{html.escape(args.model)} / {html.escape(args.layer)}</h1>{cells}\n")
    with open(os.path.join(args.out, "index.html.tmp"), "w") as f:
        f.write(page)
    os.replace(os.path.join(args.out, "index.html.tmp"), os.path.join(args.out, "index.html"))
    return 0
