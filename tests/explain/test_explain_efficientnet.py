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
    cam = GradCAM(lm.model, layer, relu=False, upsample=False, preprocess=lm.preprocess,
                  normalize=False)(x, target=e.target)
    assert e.total == pytest.approx(float(cam.double().sum()), rel=1e-4, abs=1e-6)
    assert len(e.units) == 4 and e.units[0].contribution >= e.units[-1].contribution > 0
    for u in e.units:
        assert u.mask.shape == (224, 224) and u.activation.dtype == np.float32
        assert (u.label == f"concept{u.unit % 7}") == (u.unit % 2 == 0)
        assert u.label == "no concept" or u.unit % 2 == 0
    assert {c.name for c in e.categories} <= {"color", "texture", "no concept"}
    assert e.summary().startswith("predicted 'Egyptian cat' (p=")


def test_head_contributions_sum_to_logit_minus_bias(setup, tmp_path):
    """At the CAM layer (_swish@1, the activated head: average pooling and _fc follow), the signed
    contributions sum to the class logit minus _fc's bias; the page lists only positive contributors,
    states both partial sums and the signed total, and warns that the made-up concepts are not cats."""
    import html
    import re

    lm, x, layer, path, _ = setup
    assert layer == "_swish@1"
    (e,) = unitscope.explain(lm, x, path, layer, top=5)
    with torch.no_grad():
        logit = float(lm.model(lm.preprocess(x))[0, e.target])
    bias = float(lm.model._fc.bias[e.target].detach())
    assert e.logit == pytest.approx(logit, rel=1e-5)
    assert e.positive_total > 0 > e.negative_total  # both signs occur at the head
    assert e.positive_total + e.negative_total == pytest.approx(e.total, rel=1e-12)
    assert e.total == pytest.approx(logit - bias, rel=1e-4, abs=1e-4)
    assert all(u.contribution > 0 for u in e.units) and len(e.units) == 5
    page = e.to_html(tmp_path / "p.html").read_text()
    text = html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))
    assert f"positive ones sum to {e.positive_total:.4g}, negative ones to {e.negative_total:.4g}" in text
    assert f"the signed total {e.total:.4g}" in text and "the class logit minus the classifier's bias" in text
    assert f"(the logit here: {logit:.4g})" in text
    assert "no concept close to 'Egyptian cat'" in text and "the nearest of these concepts" in text
    assert "feature visualization" not in text  # no featviz asked for: no empty column
    listed = re.findall(r"<tr><td>([^<]+)</td><td>[^<]*</td><td>\d+</td><td>([-0-9.e+]+)</td><td>([0-9.]+)%</td>", page)
    assert listed and all(float(c) > 0 and float(sh) > 0 for _, c, sh in listed)  # no negatives, no 0.0% shares
    assert "no concept" not in e.summary().split("contributed most")[1].split(";")[0]


def test_cli(setup, tmp_path, capsys):
    from unitscope.cli import main

    lm, _, layer, path, image = setup
    out = tmp_path / "out"
    assert main(["explain", "--model", "efficientnet_lite0", "--image", str(image), "--dissection", str(path),
                 "--out", str(out), "--top", "3"]) == 0  # --layer defaults to the CAM layer, _swish@1
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
