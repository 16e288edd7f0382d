"""explain() on a planted model: unit 0 fires on red and drives class 0, so on a red image unit 0 and
the concept 'red' must come first; contributions are checked against Grad-CAM and against the hand
computation W[c, k] / (h w) * mean(A_k) of a linear head over global average pooling."""
import json

import numpy as np
import pytest
import torch

import unitscope
from unitscope.data import make_concept_dataset
from unitscope.saliency import GradCAM

SIZE = 64


class ColorUnits(torch.nn.Module):
    """Four units at half resolution: 0 red (R - max(G, B)), 1 green, 2 blue, 3 brightness (times a
    parameter of ones, so that the output is in the autograd graph as in a trained network)."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1, 4, 1, 1))

    def forward(self, x):
        x = torch.nn.functional.avg_pool2d(x, 2)
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        return self.gain * torch.stack([r - torch.maximum(g, b), g - torch.maximum(r, b), b - torch.maximum(r, g),
                                        (r + g + b) / 3], 1)


class Planted(torch.nn.Module):
    """Class c's logit = W[c] . mean(A): class 0 <- red (and a little brightness), 1 <- green, 2 <- blue."""

    def __init__(self):
        super().__init__()
        self.units = ColorUnits()
        self.fc = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[5.0, -1.0, -1.0, 0.5], [-1.0, 5.0, -1.0, 0.5], [-1.0, -1.0, 5.0, 0.5]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.units(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = make_concept_dataset(tmp_path_factory.mktemp("concepts"), 24, size=SIZE, seed=0)
    model = Planted().eval()
    result = unitscope.dissect(model, "units", root, preprocess=lambda x: x, batch_size=8, progress=False)
    return model, result


def red_image():
    """A grey image with a pure red square. Pure: the concept dataset's full-frame texture images hold
    so many (jittered) red pixels that the red unit's 99.5% quantile lies among them, above the
    dataset's canonical red (210, 35, 35)."""
    x = torch.full((1, 3, SIZE, SIZE), 0.5)
    x[:, :, 16:48, 8:40] = torch.tensor([255, 0, 0]).view(1, 3, 1, 1) / 255.0
    return x


def test_dissection_names_the_red_unit(planted):
    _, result = planted
    det = {d["unit"]: d["label"] for d in result["units"].detectors()}
    assert det.get(0) == "red-c"


def test_red_unit_and_red_concept_rank_first(planted):
    model, result = planted
    (e,) = unitscope.explain(model, red_image(), result, "units", top=2, class_names=["red", "green", "blue"])
    assert e.predicted == e.target == 0 and e.predicted_name == "red"
    assert e.units[0].unit == 0 and e.units[0].label == "red-c" and e.units[0].category == "color"
    assert e.concepts[0].name == "red-c" and e.concepts[0].units[0] == 0
    assert e.categories[0].name == "color"
    assert e.summary().startswith("predicted 'red' (p=") and "(the nearest of its concepts): red-c (color, " in e.summary()
    # the red unit passes its threshold on the red square and nowhere else
    m = e.units[0].mask
    assert m.shape == (SIZE, SIZE) and m[20:44, 12:36].all() and not m[:12].any() and not m[:, 44:].any()
    assert abs(e.units[0].coverage - m.mean()) < 1e-12
    # shares: fractions of the positive total
    pos = e.contributions[e.contributions > 0].sum()
    assert e.units[0].share == pytest.approx(e.contributions[0] / pos)
    assert sum(c.share for c in e.concepts) == pytest.approx(e.contributions.sum() / pos)


def test_contributions_by_hand_and_against_gradcam(planted):
    model, result = planted
    x = torch.cat([red_image(), torch.rand(2, 3, SIZE, SIZE)])
    target = [1, 0, 2]
    expl = unitscope.explain(model, x, result["units"], "units", target=target)
    A = model.units(x)
    hw = A.shape[-1] * A.shape[-2]
    cam = GradCAM(model, "units", relu=False, upsample=False, normalize=False)(x, target=target)  # (B, h, w), layer resolution
    for b, e in enumerate(expl):
        assert e.target == target[b]
        # alpha_k = W[c, k] / hw, times the spatial sum of A_k: W[c, k] mean(A_k) (issue 21: contributions
        # sum to the Grad-CAM map's sum, the logit minus the bias at a CAM layer, no longer its mean)
        by_hand = (model.fc.weight[target[b]].double() / hw * A[b].double().sum(dim=(1, 2))).detach().numpy()
        np.testing.assert_allclose(e.contributions, by_hand, rtol=1e-6, atol=1e-9)
        assert e.total == pytest.approx(float(cam[b].double().sum()), rel=1e-5, abs=1e-7)
        assert e.total == pytest.approx(e.contributions.sum())
        assert e.total == pytest.approx(e.logit - float(model.fc.bias[target[b]].detach()), rel=1e-5, abs=1e-6)
        ranked = [int(k) for k in np.argsort(-e.contributions, kind="stable")[:5] if e.contributions[k] > 0]
        assert [u.unit for u in e.units] == ranked  # only positive contributors are listed
    assert "explaining 'class 1'" in expl[0].summary()  # the red image predicts class 0


def test_from_json_same_as_object_and_html(planted, tmp_path):
    model, result = planted
    path = tmp_path / "dissection.json"
    result.to_json(path)
    (a,) = unitscope.explain(model, red_image(), result, "units")
    (b,) = unitscope.explain(model, red_image(), str(path), "units")
    assert [(u.unit, u.label, u.category) for u in a.units] == [(u.unit, u.label, u.category) for u in b.units]
    np.testing.assert_array_equal(a.contributions, b.contributions)
    assert a.units[0].top_images is not None and b.units[0].top_images is None  # no report beside the JSON
    page = a.to_html(tmp_path / "page" / "red.html")
    text = page.read_text()
    for name in ["image.png", "unit0_map.png", "unit0_top.png"]:
        assert f'src="red_files/{name}"' in text and (tmp_path / "page" / "red_files" / name).is_file()
    # with a featviz mapping, and with the report's strips in report/ (as `unitscope dissect` writes them)
    result.save_report(tmp_path / "report")
    (c,) = unitscope.explain(model, red_image(), path, "units", featviz={0: np.zeros((8, 8, 3))})
    assert c.units[0].top_images is not None and c.units[0].featviz.shape == (8, 8, 3)
    assert c.units[1].featviz is None
    assert c.units[0].top_images.shape == a.units[0].top_images.shape  # the report's JPEG of the same strip
    result.to_json(tmp_path / "report" / "d.json")  # the strips beside the JSON
    (d,) = unitscope.explain(model, red_image(), tmp_path / "report" / "d.json", "units")
    assert d.units[0].top_images is not None


def _json(tmp_path, units, settings=None, layer="units"):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"layers": [{"layer": layer, "units": units, "settings": settings or {}}]}))
    return p


def test_names_are_escaped(planted, tmp_path):
    model, _ = planted
    units = [{"unit": k, "threshold": 0.1, "label": "<script>x</script>", "category": "<b>c</b>", "iou": 0.5}
             for k in range(4)]
    (e,) = unitscope.explain(model, red_image(), _json(tmp_path, units), "units")
    text = e.to_html(tmp_path / "e.html").read_text()
    assert "<script>" not in text and "<b>c</b>" not in text and "&lt;script&gt;" in text


def test_bad_input(planted, tmp_path):
    model, result = planted
    x = red_image()
    ok = [{"unit": k, "threshold": 0.1, "label": "a", "category": "c", "iou": 0.5} for k in range(4)]
    with pytest.raises(ValueError, match="is not a file"):
        unitscope.explain(model, x, tmp_path / "missing.json", "units")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        unitscope.explain(model, x, tmp_path / "bad.json", "units")
    with pytest.raises(ValueError, match="is not in dissection file"):
        unitscope.explain(model, x, _json(tmp_path, ok, layer="other"), "units")
    with pytest.raises(ValueError, match="has 4 units but the dissection has 3"):
        unitscope.explain(model, x, _json(tmp_path, ok[:3]), "units")
    with pytest.raises(ValueError, match="distinct 'unit'"):
        unitscope.explain(model, x, _json(tmp_path, ok[:3] + [dict(ok[0])]), "units")
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        unitscope.explain(model, x, _json(tmp_path, ok[:3] + [dict(ok[3], threshold="NaN")]), "units")
    with pytest.raises(ValueError, match="threshold_op"):
        unitscope.explain(model, x, _json(tmp_path, ok, {"threshold_op": "<"}), "units")
    with pytest.raises(ValueError, match="is not in the dissection"):
        unitscope.explain(model, x, result, "fc")
    with pytest.raises(ValueError, match="is of layer 'units'"):
        unitscope.explain(model, x, result["units"], "fc")
    with pytest.raises(TypeError, match="dissection must be"):
        unitscope.explain(model, x, 3, "units")
    with pytest.raises(ValueError, match="one class per image"):
        unitscope.explain(model, x, result, "units", target=[[0, 1]])
    with pytest.raises(ValueError, match="top must be"):
        unitscope.explain(model, x, result, "units", top=0)
    with pytest.raises(ValueError, match="class_names must have one name per class"):
        unitscope.explain(model, x, result, "units", class_names=["a"])


def test_close_concepts_rule():
    """A concept is close to a class when a word of its name (3+ letters, plural 's' dropped) is a word of
    the class name, among thing categories; colours and textures never are."""
    from unitscope.data.generate import VOCAB
    from unitscope.explain.concepts import close_concepts

    assert close_concepts("tabby, tabby cat", [("cat", "object"), ("car", "object")]) == ["cat"]
    assert close_concepts("sports car", [("cars", "object"), ("wheel", "part")]) == ["cars"]
    assert close_concepts("Egyptian cat", VOCAB[1:]) == []  # the generated dataset knows no cats
    assert close_concepts("red wine", [("red-c", "color"), ("striped", "texture")]) == []
    assert close_concepts("beach wagon", [("beach-s", "scene")]) == ["beach-s"]


def test_close_concept_lifts_the_warning(planted, tmp_path):
    model, result = planted
    (e,) = unitscope.explain(model, red_image(), result, "units", class_names=["red", "green", "blue"])
    assert e.close_concepts == [] and "the nearest of these concepts" in e.warning()
    assert "the nearest of these concepts" in e.to_html(tmp_path / "a.html").read_text()
    (f,) = unitscope.explain(model, red_image(), result, "units", class_names=["red house", "green", "blue"])
    assert f.close_concepts == ["house"] and f.warning() == ""
    assert "nearest" not in f.to_html(tmp_path / "b.html").read_text() and "(they detect)" in f.summary()
