"""Dissection.load of version-2 files: a real run read back equal to the object that wrote it, every
field of every LayerDissection (arrays bit for bit, NaN and inf included); report, explain and
compare work on the loaded object as on the original; tampered files are refused in one line."""
import dataclasses
import json

import numpy as np
import pytest
import torch

import unitscope
from dissect.test_load import _net
from dissect.test_planted import NaNUnit, identity, make_planted_dataset
from unitscope.data import BrodenDataset
from unitscope.dissect import Dissection, LayerDissection, compare
from unitscope.explain.concepts import unit_concepts


@pytest.fixture(scope="module")
def runs(concept_root, tmp_path_factory):
    # topk 30 > 24 images: empty top-k slots (-1, -inf); the NaN unit: +inf threshold, dead
    conv = unitscope.dissect(_net(), ["1", "3"], BrodenDataset(concept_root), batch_size=8, iou_threshold=0.01,
                             topk=30, progress=False, preprocess=identity)
    conv.name = "tiny <net>"
    ds = BrodenDataset(make_planted_dataset(tmp_path_factory.mktemp("full") / "ds"))
    nan = unitscope.dissect(NaNUnit(), ["units"], ds, batch_size=8, preprocess=identity, progress=False)
    return {"conv": conv, "nan": nan}


def assert_equal_dissections(a: Dissection, b: Dissection) -> None:
    assert (a.name, a.timings, a.settings, list(a.layers)) == (b.name, b.timings, b.settings, list(b.layers))
    for x, y in zip(a, b):
        for f in dataclasses.fields(LayerDissection):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, np.ndarray):
                assert isinstance(v, np.ndarray) and (u.dtype, u.shape) == (v.dtype, v.shape), f.name
                assert u.tobytes() == v.tobytes(), f.name  # bit for bit: NaN and inf where present
                if not np.isnan(u).any() if u.dtype.kind == "f" else True:
                    assert torch.equal(torch.from_numpy(u), torch.from_numpy(v)), f.name
            else:
                assert type(u) is type(v) and u == v, f.name
        for prop in ("dead", "saturated", "plateau", "best_label", "best_iou"):
            np.testing.assert_array_equal(getattr(x, prop), getattr(y, prop))


def test_every_field_round_trips(runs, tmp_path):
    for name, d in runs.items():
        path = tmp_path / name / "dissection.json"
        path.parent.mkdir()
        d.to_json(path)
        loaded = Dissection.load(path.parent)
        assert_equal_dissections(d, loaded)
        assert loaded.to_json() == d.to_json()
    ld = runs["conv"]["3"]
    assert (ld.topk_index == -1).any() and np.isneginf(ld.topk_values).any()  # the planted extremes are there
    assert ld.ties is not None and ld.activation_total.sum() > 0
    nan = runs["nan"]["units"]
    assert np.isinf(nan.thresholds).any() and nan.dead.any()


def test_report_explain_and_compare_on_the_loaded_object(runs, tmp_path):
    d = runs["conv"]
    d.to_json(tmp_path / "dissection.json")
    loaded = Dissection.load(tmp_path / "dissection.json")
    a, b = d.save_report(tmp_path / "a"), loaded.save_report(tmp_path / "b")
    for page in ("index.html", "1.html", "3.html"):
        assert (tmp_path / "a" / page).read_text() == (tmp_path / "b" / page).read_text()
    strips = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("unit_*.jpg"))
    assert strips and strips == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("unit_*.jpg"))
    assert all((tmp_path / "a" / s).read_bytes() == (tmp_path / "b" / s).read_bytes() for s in strips)
    assert a.name == b.name
    for layer in ("1", "3"):
        x, y = unit_concepts(d, layer), unit_concepts(loaded, layer)
        assert (x.labels, x.categories, x.iou.tolist()) == (y.labels, y.categories, y.iou.tolist())
        for k in range(3):
            strip = x.top_images(k)
            assert strip is not None and np.array_equal(strip, y.top_images(k))
    for rule in ("best", "category"):
        rows = compare(d, loaded, rule=rule).rows
        assert rows[:len(rows) // 2] == rows[len(rows) // 2:]


def _doc(runs):
    return json.loads(runs["conv"].to_json())


def _refused(tmp_path, doc, match):
    p = tmp_path / "bad.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ValueError, match=match) as e:
        Dissection.load(p)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400  # one clear line


def _edited(runs, fn):
    doc = _doc(runs)
    fn(doc)
    return doc


def _arrays(doc, layer=1):
    return doc["layers"][layer]["data"]["arrays"]


def _put(doc, name, values, dtype, layer=1):
    from unitscope.dissect.saved_full import encode
    _arrays(doc, layer)[name] = encode(np.asarray(values), dtype)


def test_tampered_files_are_refused_in_one_line(runs, tmp_path):
    K = runs["conv"]["3"].num_units
    thr = runs["conv"]["3"].thresholds
    cases = [
        (lambda d: d.update(version=3), "version 3 is not one this unitscope reads"),
        (lambda d: d.update(format="other"), "format 'other'"),
        (lambda d: d["layers"][1].pop("data"), "'data' must be an object"),
        (lambda d: d["layers"][1]["data"].update(images=10 ** 30), "data.images must be an int"),
        (lambda d: d["layers"][1]["data"].update(images="24"), "data.images must be an int"),
        (lambda d: d["layers"][1]["data"].update(label_names=d["layers"][1]["data"]["label_names"][:-1]),
         "arrays.iou must have shape"),
        (lambda d: d["layers"][1]["data"].update(label_names=[1, 2]), "label_names must be a list of strings"),
        (lambda d: d["layers"][1]["data"].update(categories=["object", "object"]), "categories must be distinct"),
        (lambda d: d["layers"][1]["data"].update(image_paths=["../../etc/passwd"] * 24), "not a plain path"),
        (lambda d: d["layers"][1]["data"].update(image_paths=["a.jpg"]), "must list the 24 images"),
        (lambda d: _put(d, "thresholds", thr[:-1], "float32"), r"arrays.iou must have shape \[11, "),
        (lambda d: _arrays(d)["thresholds"].update(shape=[10 ** 12]), "K must be an int in"),
        (lambda d: _arrays(d)["thresholds"].update(shape=[10 ** 400]), "not a dissection|K must be an int"),
        (lambda d: _arrays(d)["iou"].update(dtype="float32"), "arrays.iou must have dtype float64"),
        (lambda d: _arrays(d)["iou"].update(base64="@@@@"), "iou.base64 is not valid base64"),
        (lambda d: _arrays(d)["iou"].update(base64=_arrays(d)["iou"]["base64"][:-8]), "iou holds .* bytes"),
        (lambda d: _put(d, "thresholds", np.full(K, np.nan), "float32"), "thresholds must be numbers or"),
        (lambda d: _put(d, "iou", np.full((K, len(runs["conv"]["3"].label_names)), 2.0), "float64"),
         r"iou must be in \[0, 1\]"),
        (lambda d: _put(d, "activation_total", np.full(K, -5), "int64"), "activation_total must be counts >= 0"),
        (lambda d: _put(d, "topk_index", np.full((K, 30), 99), "int64"), "topk_index must be -1 or an image"),
        (lambda d: _put(d, "thresholds", thr + 1, "float32"), "'units' is not what the layer's data gives"),
        (lambda d: d["layers"][1]["settings"].update(images=25), "settings.images 25 differs"),
        (lambda d: d["layers"][1]["settings"].update(deep=json.loads("[" * 20 + "]" * 20)), "plain values"),
        (lambda d: d.update(settings=[]), "'settings' must be an object"),
    ]
    for fn, match in cases:
        _refused(tmp_path, _edited(runs, fn), match)
    _refused(tmp_path, '{"layers": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply|not valid JSON")
    _refused(tmp_path, '{"version": 2, "layers": [], "name": ' + "9" * 5000 + "}", "not a dissection|not valid")
