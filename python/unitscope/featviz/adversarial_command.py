"""`unitscope adversarial`: one class seen two ways on a model (registry name or MODULE:FACTORY): the
feature visualization of its logit (from noise) beside the adversarial example towards it (from a
photo); writes the PNGs."""
from __future__ import annotations

import os

import torch


def add_arguments(p):
    from unitscope import cli
    from unitscope.models.own import add_model_arguments

    add_model_arguments(p)  # --model, --weights, --mean/--std/--no-normalize, --classes
    p.add_argument("--image", required=True, type=cli.image_file,
                   help="the photo: a file Pillow reads, or skimage:NAME for a photo bundled with scikit-image")
    p.add_argument("--target", type=cli.nonnegative_int, required=True, help="the class id to reach and to render")
    p.add_argument("--eps", type=cli.positive_float, default=2 / 255,
                   help="perturbation budget in [0, 1] pixel units (default: 2/255 for linf; try 1.0 for l2)")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf", help="the budget's norm (default: %(default)s)")
    p.add_argument("--steps", type=cli.positive_int, default=20, help="PGD steps (default: %(default)s)")
    p.add_argument("--render-steps", type=cli.positive_int, default=256,
                   help="feature visualization steps (default: %(default)s)")
    p.add_argument("--size", type=cli.positive_int, default=None,
                   help="image side, at least 8 (default: the registry model's input size, 224 for MODULE:FACTORY)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="seed of the rendering's noise (default: %(default)s)")
    p.add_argument("--device", type=cli.device, default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, type=cli.output_dir, help="output folder (created)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")


def run(args) -> int:
    from unitscope import models, viz
    from unitscope.featviz.adversarial import contrast
    from unitscope.models.own import loaded_from_args

    if args.size is not None and args.size < 8:
        raise ValueError(f"--size must be at least 8, got {args.size}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = loaded_from_args(args, device, input_size=args.size)
    if not 0 <= args.target < len(lm.class_names):
        raise ValueError(f"--target must lie in [0, {len(lm.class_names)}), got {args.target}")
    x = models.load_image(args.image, lm.input_size).to(device)
    c = contrast(lm.model, x, args.target, eps=args.eps, norm=args.norm, adversarial_steps=args.steps,
                 render_steps=args.render_steps, preprocess=lm.preprocess, device=device, seed=args.seed,
                 progress=not args.quiet)
    os.makedirs(args.out, exist_ok=True)
    a = c.adversarial
    viz.save_image(viz.to_image_array(a.image[0]), os.path.join(args.out, "adversarial.png"))
    viz.save_image(viz.to_image_array(a.perturbation_image(0)), os.path.join(args.out, "perturbation.png"))
    viz.save_image(viz.to_image_array(c.rendering.images[0]), os.path.join(args.out, "featviz.png"))
    c.save(os.path.join(args.out, "contrast.png"), lm.class_names)
    names = lm.class_names
    k0, k1, t = int(a.probs_before[0].argmax()), int(a.probs_after[0].argmax()), args.target
    print(f"photo: {names[k0]} {a.probs_before[0, k0]:.3f}, {names[t]} {a.probs_before[0, t]:.4f}")
    print(f"adversarial ({args.norm} norm {float(a.perturbation_norm()[0]):.4g} <= {args.eps:g}): "
          f"{names[k1]} {a.probs_after[0, k1]:.3f}, {names[t]} {a.probs_after[0, t]:.4f}")
    print(f"feature visualization of the logit of {names[t]}: logit {c.rendering.history[-1]:.2f}")
    print(f"wrote {os.path.join(args.out, 'contrast.png')}")
    return 0
