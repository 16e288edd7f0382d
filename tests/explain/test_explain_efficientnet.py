"""explain() and `unitscope explain` on the real EfficientNet-Lite0 and scikit-image's cat, with a
dissection.json written here (every even unit a detector of a made-up concept)."""
import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import unitscope
from unitscope.hooks import LayerCapture
from unitscope.saliency import GradCAM

pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = unitscope.models.load("efficientnet_lite0")
    x = unitscope.models.load_image(skimage_data.chelsea(), size=lm.input_size)
    layer = lm.cam_layer
    with torch.no_grad(), LayerCapture(lm.model, layer) as cap:
        lm.model(lm.preprocess(x))
    K = cap.outputs[layer].shape[1]
    units = [{"unit": k, "threshold": 0.0, "label": f"concept{k % 7}", "category": ["color", "texture"][k % 4 // 2],
              "iou": 0.1 if k % 2 == 0 else 0.01} for k in range(K)]
    tmp = tmp_path_factory.mktemp("dissection")
    path = tmp / "dissection.json"
    path.write_text(json.dumps({"layers": [{"layer": layer, "units": units, "settings": {"iou_threshold": 0.04}}]}))
    image = tmp / "cat.png"
    unitscope.viz.save_image(unitscope.viz.to_image_array(x[0]), image)
    return lm, x, layer, path, image


def test_explain_efficientnet(setup):
    lm, x, layer, path, _ = setup
    (e,) = unitscope.explain(lm, x, path, layer, top=4)
    assert e.predicted_name == "Egyptian cat" and e.target == e.predicted and 0 < e.probability < 1
    cam = GradCAM(lm.model, layer, relu=False, upsample=False, preprocess=lm.preprocess, normalize=False)(x, target=e.target)
    assert e.total == pytest.approx(float(cam.double().mean()), rel=1e-4, abs=1e-6)
    assert len(e.units) == 4 and e.units[0].contribution >= e.units[-1].contribution > 0
    for u in e.units:
        assert u.mask.shape == (224, 224) and u.activation.dtype == np.float32
        assert (u.label == f"concept{u.unit % 7}") == (u.unit % 2 == 0)
        assert u.label == "no concept" or u.unit % 2 == 0
    assert {c.name for c in e.categories} <= {"color", "texture", "no concept"}
    assert e.summary().startswith("predicted 'Egyptian cat' (p=")


def test_cli(setup, tmp_path, capsys):
    from unitscope.cli import main

    lm, _, layer, path, image = setup
    out = tmp_path / "out"
    assert main(["explain", "--model", "efficientnet_lite0", "--image", str(image), "--dissection", str(path),
                 "--layer", layer, "--out", str(out), "--top", "3"]) == 0
    assert "predicted 'Egyptian cat'" in capsys.readouterr().out
    assert (out / "summary.txt").read_text().startswith("predicted 'Egyptian cat'")
    page = (out / "explanation.html").read_text()
    assert page.count("_map.png") == 3 and (out / "explanation_files" / "image.png").is_file()
    base = ["explain", "--model", "efficientnet_lite0", "--image", str(image), "--dissection", str(path),
            "--out", str(out)]
    for extra, message in ((["--layer", layer, "--top", "0"], "argument --top: must be a positive integer, got 0"),
                           (["--layer", layer, "--dissection", str(out)], "is a directory, expected a file"),
                           (["--layer", layer, "--target", "1000"], "--target must be a class id in [0, 1000)"),
                           (["--layer", "_fc"], "is not in dissection file")):
        capsys.readouterr()
        with pytest.raises(SystemExit) if "argument" in message or "directory" in message else nullcontext():
            assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("unitscope explain: error: ") and message in err, err
