"""`unitscope explain`: which dissected concepts of a layer made a model's prediction (registry name or
MODULE:FACTORY) for one photo; writes explanation.html (maps beside the concepts) and summary.txt, prints the summary."""
from __future__ import annotations

import os

import torch


def add_arguments(p):
    from unitscope import cli
    from unitscope.models.own import add_model_arguments

    add_model_arguments(p)  # --model, --weights, --mean/--std/--no-normalize, --classes
    p.add_argument("--input-size", type=cli.positive_int, default=None,
                   help="the photo is resized to this square size (default: the registry model's input size, 224 "
                        "for MODULE:FACTORY)")
    p.add_argument("--image", required=True, type=cli.image_file, help="the photo: a file Pillow reads, or skimage:NAME for a photo "
                                                  "bundled with scikit-image (e.g. skimage:chelsea); required")
    p.add_argument("--dissection", required=True, type=cli.existing_file,
                   help="the dissection.json of a dissection of --layer (written by `unitscope dissect`); the "
                        "report's top-image strips beside it or in its report/ folder are shown when present; "
                        "required")
    p.add_argument("--layer", default=None,
                   help="the dissected layer to explain by, a module name or name@k (default: the model's CAM layer: "
                        "the registry's, e.g. _swish@1, or for MODULE:FACTORY the last feature map before global "
                        "pooling; `unitscope layers --model M` shows it)")
    p.add_argument("--out", required=True, type=cli.output_dir, help="output folder (created): explanation.html, its images in "
                                                "explanation_files/, summary.txt; required")
    p.add_argument("--target", type=int, default=None,
                   help="the class id to explain (default: the predicted class)")
    p.add_argument("--top", type=cli.positive_int, default=5,
                   help="how many of the highest-contributing units get maps and images (default: %(default)s)")
    p.add_argument("--featviz-steps", type=cli.nonnegative_int, default=0,
                   help="render a feature visualization of each top unit with this many steps, at the activation's "
                        "input when --layer is an activation (an inactive ReLU passes no gradient); 0 renders none "
                        "(128 gives a readable picture, about a minute per unit on a CPU) (default: %(default)s)")
    p.add_argument("--device", type=cli.device, default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")


def run(args) -> int:
    from unitscope import featviz, models
    from unitscope.explain import explain
    from unitscope.models.own import loaded_from_args

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = loaded_from_args(args, device, input_size=args.input_size)
    layer = args.layer or lm.cam_layer or models.cam_layer(lm.model, lm.input_size, preprocess=lm.preprocess)
    x = models.load_image(args.image, size=lm.input_size).to(device)
    if args.target is not None and not 0 <= args.target < len(lm.class_names):
        raise ValueError(f"--target must be a class id in [0, {len(lm.class_names)}), got {args.target}")
    render = None
    if args.featviz_steps:
        from unitscope.models.layers import render_layer

        at = render_layer(lm.model, layer, lm.input_size, preprocess=lm.preprocess)  # an activation's input

        def render(unit):
            r = featviz.render(lm.model, featviz.channel(at, unit), size=128, steps=args.featviz_steps,
                               preprocess=lm.preprocess, device=device, progress=not args.quiet)
            return r.images[0]
    (e,) = explain(lm, x, args.dissection, layer, target=args.target, top=args.top, featviz=render)
    os.makedirs(args.out, exist_ok=True)
    page = e.to_html(os.path.join(args.out, "explanation.html"))
    with open(os.path.join(args.out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(e.summary() + "\n")
    print(e.summary())
    print(f"-> {page}")
    return 0
