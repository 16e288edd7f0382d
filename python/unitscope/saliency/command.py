"""`unitscope saliency`: explain a registered model's prediction for one photo with several methods;
writes one PNG overlay per method and class, a grid, and an index.html naming the classes."""
from __future__ import annotations

import json
import os
import time

import torch

from unitscope._html import esc, page
from unitscope._io import atomic_write_text

PAGE = "saliency.html"  # the page of this command; featviz and dissect write their own names into a shared --out
METHODS = ("gradient", "gxi", "smoothgrad", "ig", "guided", "gradcam", "gradcam++", "hirescam", "scorecam",
           "guided_gradcam", "xgradcam", "layercam", "eigencam", "ablationcam", "fullgrad", "lrp", "deeplift", "gradientshap",
           "occlusion", "lime", "kernelshap")
CAM_METHODS = {"gradcam", "gradcam++", "hirescam", "scorecam", "guided_gradcam", "xgradcam", "layercam", "eigencam",
               "ablationcam"}
# pixel-level (gradient-family) maps are drawn as the demo draws them: viz.gradient_map's smoothed, clipped magnitude
PIXEL_METHODS = {"gradient", "gxi", "smoothgrad", "ig", "guided", "guided_gradcam", "lrp", "deeplift", "gradientshap"}


def add_arguments(parser):
    from unitscope import cli
    from unitscope.models.own import add_model_arguments

    add_model_arguments(parser)  # --model, --weights, --mean/--std/--no-normalize, --classes
    parser.add_argument("--input-size", type=cli.positive_int, default=None,
                        help="the photo is resized to this square size (default: the registry model's input size, "
                             "224 for MODULE:FACTORY)")
    parser.add_argument("--image", required=True, type=cli.image_file,
                        help="the photo: a file Pillow reads (8- or 16-bit) or skimage:NAME for a photo bundled "
                             "with scikit-image, e.g. skimage:chelsea")
    parser.add_argument("--method", default="gradcam,ig,gradient", type=_checked(_methods),
                        help=f"comma-separated methods among: {', '.join(METHODS)}; or 'all' (default: %(default)s)")
    parser.add_argument("--target", default="top1", type=_checked(_target_syntax),
                        help="a class id N, several 'N,M', or topK for the K most likely classes (default: top1)")
    parser.add_argument("--layer", default=None,
                        help="layer for the CAM methods (default: the model's CAM layer: the registry's, or for "
                             "MODULE:FACTORY the last feature map before global pooling; `unitscope layers` lists them)")
    parser.add_argument("--out", required=True, type=cli.output_dir,
                        help=f"output folder (created): {PAGE}, targets.json, grid.png, one PNG per method and class")
    parser.add_argument("--device", default=None, type=cli.device,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--steps", type=cli.positive_int, default=32, help="Integrated Gradients steps (default: %(default)s)")
    parser.add_argument("--samples", type=cli.positive_int, default=None,
                        help="samples for SmoothGrad and GradientSHAP (default 25), LIME and KernelSHAP (default 500; at least 2)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=16, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--composite", default="epsilon_gamma_box", type=_checked(_composite),
                        help="LRP composite (rules by layer): epsilon_gamma_box (z^B on the pixels, gamma on "
                             "convolutions, epsilon on linear layers), epsilon_plus, epsilon_plus_flat, "
                             "epsilon_alpha2_beta1, epsilon_alpha2_beta1_flat or deep_taylor (default: %(default)s)")
    parser.add_argument("--alpha", type=cli.float_in(0, 1), default=0.6, help="heat map opacity in [0, 1] (default: %(default)s)")
    parser.add_argument("--metrics", action="store_true",
                        help="print and save (targets.json) each method's faithfulness correlation (Quantus's "
                             "definition: 100 random subsets of 224 input values set to the image minimum), and with "
                             "--mask its pointing game and relevance mass (default: off)")
    parser.add_argument("--mask", default=None, type=cli.image_file,
                        help="object mask for --metrics (pointing game, relevance mass): an image file, nonzero "
                             "(brighter than mid-gray) where the object is, resized to the model's input size "
                             "(default: none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (they are on by default)")


def _checked(parse):
    """An argparse type from a parser raising ValueError: the message reaches the user."""
    import argparse

    def check(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return check


def _methods(arg):
    names = list(METHODS) if arg.strip() == "all" else [m.strip().lower() for m in arg.split(",") if m.strip()]
    aliases = {"ig": "ig", "integrated_gradients": "ig", "gradcampp": "gradcam++", "gradcam_plus_plus": "gradcam++",
               "guided_backprop": "guided", "gradient_x_input": "gxi", "vanilla": "gradient", "shap": "kernelshap",
               "guidedgradcam": "guided_gradcam", "xgrad_cam": "xgradcam", "layer_cam": "layercam",
               "eigen_cam": "eigencam", "ablation_cam": "ablationcam", "deep_taylor": "lrp", "deep_lift": "deeplift",
               "gradient_shap": "gradientshap", "gradshap": "gradientshap"}
    names = [aliases.get(n, n) for n in names]
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise ValueError(f"unknown {', '.join(bad) or '(none given)'}; choose among {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def _composite(arg):
    from unitscope.saliency.lrp import COMPOSITES

    if arg not in COMPOSITES:
        raise ValueError(f"unknown composite {arg!r}; choose among {', '.join(COMPOSITES)}")
    return arg


def _target_syntax(arg):
    """--target checked before the model runs (the class range needs the model): returns arg."""
    _targets(arg, None)
    return arg


def _targets(arg, probs):
    """'top5' / '285' / '285,281' -> list of class ids; probs (1, N), or None to check the syntax only."""
    arg = arg.strip().lower()
    n = probs.shape[1] if probs is not None else float("inf")
    if arg.startswith("top"):
        try:
            k = int(arg[3:] or 1)
        except ValueError:
            raise ValueError(f"must be N, N,M,... or topK, got {arg!r}") from None
        if probs is None:
            if k < 1:
                raise ValueError(f"{arg}: K must be at least 1")
            return []
        if not 1 <= k <= n:
            raise ValueError(f"--target {arg}: K must lie in [1, {n}]")
        return probs[0].topk(k).indices.tolist()
    try:
        ids = [int(v) for v in arg.split(",")]
    except ValueError:
        raise ValueError(f"must be N, N,M,... or topK, got {arg!r}") from None
    bad = [i for i in ids if not 0 <= i < n]
    if bad and probs is None:
        raise ValueError(f"classes must be >= 0, got {bad}")
    if bad:
        raise ValueError(f"--target classes must lie in [0, {n}), got {bad}")
    return ids


def build_method(name, model, layer, preprocess, steps=32, samples=None, batch_size=16,
                 composite="epsilon_gamma_box"):
    """A configured unitscope.saliency method for a CLI/benchmark method name."""
    from unitscope import saliency as S

    kw = dict(preprocess=preprocess)
    if name == "gradient":
        return S.VanillaGradient(model, **kw)
    if name == "gxi":
        return S.GradientTimesInput(model, **kw)
    if name == "smoothgrad":
        return S.SmoothGrad(S.VanillaGradient(model, **kw), n_samples=samples or 25, noise=0.15, batch_size=batch_size)
    if name == "ig":
        return S.IntegratedGradients(model, steps=steps, batch_size=batch_size, channel="sum", **kw)
    if name == "guided":
        return S.GuidedBackprop(model, **kw)
    if name == "gradcam":
        return S.GradCAM(model, layer, **kw)
    if name == "gradcam++":
        return S.GradCAMPlusPlus(model, layer, **kw)
    if name == "hirescam":
        return S.HiResCAM(model, layer, **kw)
    if name == "scorecam":
        return S.ScoreCAM(model, layer, batch_size=batch_size, **kw)
    if name == "guided_gradcam":
        return S.GuidedGradCAM(model, layer, **kw)
    if name == "xgradcam":
        return S.XGradCAM(model, layer, **kw)
    if name == "layercam":
        return S.LayerCAM(model, layer, **kw)
    if name == "eigencam":
        return S.EigenCAM(model, layer, **kw)
    if name == "ablationcam":
        return S.AblationCAM(model, layer, batch_size=batch_size, **kw)
    if name == "fullgrad":
        return S.FullGrad(model, **kw)
    if name == "lrp":
        return S.LRP(model, composite, channel="sum", **kw)
    if name == "deeplift":
        return S.DeepLift(model, baseline="black", channel="sum", **kw)
    if name == "gradientshap":
        return S.GradientSHAP(model, baselines="black", n_samples=samples or 25, stdev=0.15, batch_size=batch_size,
                              channel="sum", **kw)
    if name == "occlusion":
        return S.Occlusion(model, window=32, stride=16, batch_size=batch_size, **kw)
    if name == "lime":
        return S.LIME(model, n_samples=samples or 500, batch_size=batch_size, **kw)
    if name == "kernelshap":
        return S.KernelSHAP(model, n_samples=samples or 500, batch_size=batch_size, **kw)
    raise ValueError(f"unknown method {name!r}")


def run(args) -> int:
    from unitscope import models, viz
    from unitscope.models.own import loaded_from_args
    from unitscope.saliency import LayerCapture, show_progress

    methods = args.method
    if args.samples == 1 and {"lime", "kernelshap"} & set(methods):
        raise ValueError("--samples must be at least 2 for LIME and KernelSHAP, got 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = loaded_from_args(args, device, input_size=args.input_size)
    layer = args.layer or lm.cam_layer or (
        models.cam_layer(lm.model, lm.input_size, preprocess=lm.preprocess) if set(methods) & CAM_METHODS else "")
    if set(methods) & CAM_METHODS:
        LayerCapture(lm.model, layer)  # a misspelled --layer (or a bad '@k') fails here, with the close names
    x = models.load_image(args.image, lm.input_size).to(device)
    mask = _read_mask(args.mask, x) if args.mask is not None else None
    if mask is not None and not args.metrics:
        raise ValueError("--mask is used by --metrics only; add --metrics")
    probs = torch.softmax(lm.predict(x), dim=1).cpu()
    targets = _targets(args.target, probs)
    os.makedirs(args.out, exist_ok=True)
    viz.save_image(viz.to_image_array(x[0]), os.path.join(args.out, "image.png"))
    rows, tiles, titles, timing = [], [], [], {}
    for t in targets:
        rows.append({"class": t, "name": lm.class_names[t], "probability": float(probs[0, t]), "files": {}})
    for name in methods:
        method = build_method(name, lm.model, layer, lm.preprocess, steps=args.steps, samples=args.samples,
                              batch_size=args.batch_size, composite=args.composite)
        start = time.perf_counter()
        with show_progress(name, enabled=not args.quiet):
            maps = method(x, torch.tensor([targets], device=device))[0]  # (T, ...) for the T targets at once
        timing[name] = time.perf_counter() - start
        for row, m in zip(rows, maps):
            fname = f"{name.replace('+', 'p')}_{row['class']}.png"
            signed, label = None, None
            if name in PIXEL_METHODS:
                m, signed, label = torch.from_numpy(viz.gradient_map(m, percentile=99, smooth=2.0)), False, "x p99"
            img = viz.colorbar(viz.overlay(x[0], m, alpha=args.alpha, signed=signed), m, signed=signed, label=label)
            viz.save_image(img, os.path.join(args.out, fname))
            row["files"][name] = fname
            tiles.append(img)
            titles.append(f"{name} {row['name']}")
        print(f"{name:15s} {timing[name]:7.2f} s")
        if args.metrics:
            _metrics(method, x, maps, rows, name, mask)
    viz.save_grid(tiles, os.path.join(args.out, "grid.png"), titles=titles, ncols=len(methods))
    _write_html(args, rows, methods, layer, timing)
    image = args.image if args.image.startswith("skimage:") and not os.path.exists(args.image) else os.path.abspath(args.image)
    atomic_write_text(os.path.join(args.out, "targets.json"),
                      json.dumps({"model": lm.name, "image": image, "layer": layer, "targets": rows,
                                  "seconds": timing}, indent=2))
    print(f"wrote {len(tiles)} overlays, grid.png and {PAGE} to {args.out}")
    return 0


def _read_mask(path, x):
    """The --mask file as a bool Tensor (1, H, W) at x's size (nearest), on x's device."""
    import numpy as np
    import torch.nn.functional as F

    from unitscope.models.images import read_image

    m = torch.from_numpy(np.ascontiguousarray(read_image(path).mean(axis=2) > 0.5))[None, None].float()
    m = F.interpolate(m, size=tuple(x.shape[-2:]), mode="nearest")[:, 0] > 0.5
    if not m.any():
        raise ValueError(f"--mask {path!r} marks no pixel (nothing brighter than mid-gray)")
    return m.to(x.device)


def _metrics(method, x, maps, rows, name, mask):
    """Faithfulness correlation (and pointing game, relevance mass with a mask) of each class's map."""
    from unitscope.saliency.metrics import faithfulness_correlation, pointing_game, relevance_mass

    for row, m in zip(rows, maps):
        t = torch.tensor([row["class"]], device=x.device)
        scores = {"faithfulness_correlation": float(faithfulness_correlation(method, x, m[None].detach(), t)[0])}
        if mask is not None:
            flat = m[None].detach() if m.dim() == 2 else m[None].detach().sum(dim=1)
            scores["pointing_game"] = float(pointing_game(flat, mask)[0])
            scores["relevance_mass"] = float(relevance_mass(flat, mask)[0])
        row.setdefault("metrics", {})[name] = scores
        print(f"  {row['name'][:24]:24s} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))


def _write_html(args, rows, methods, layer, timing):
    head = "".join(f"<th>{esc(m)}<br><small>{timing[m]:.2f} s</small></th>" for m in methods)
    table = []
    for r in rows:
        cells = "".join(f'<td><img src="{esc(r["files"][m])}"></td>' for m in methods)  # photo + colour bar
        table.append(f"<tr><th>{esc(r['name'])}<br><small>class {r['class']}, p = {r['probability']:.3f}</small></th>"
                    f"{cells}</tr>")
    body = (f"<h1>{esc(os.path.basename(args.image))} &mdash; {esc(args.model)}</h1>"
            f"<p><img src='image.png' width='224'></p><p>CAM layer: <code>{esc(layer)}</code></p>"
            f"<table><tr><th>class</th>{head}</tr>{''.join(table)}</table>")
    style = "td,th{padding:4px;text-align:center}"
    atomic_write_text(os.path.join(args.out, PAGE), page("unitscope saliency", body, style))
