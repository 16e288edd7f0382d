"""Dissection.load of version-1 files (the summary only, before every field was written; the full
version 2 is tested in test_load_full.py): read back equal to the Dissection that wrote them
(detectors, unique detectors under both rules and other thresholds, units, JSON, compare, explain,
the report), ties between categories settled as the label numbers settled them, non-finite
thresholds in the spellings old and new files use, and every kind of bad file refused with a
message naming the field."""
import json

import numpy as np
import pytest
import torch

import unitscope
from unitscope.data import BrodenDataset
from unitscope.dissect import Dissection, LayerDissection, compare
from unitscope.explain.concepts import unit_concepts


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4, padding=2), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.nn.ReLU())


@pytest.fixture(scope="module")
def dissected(concept_root):
    d = unitscope.dissect(_net(), ["1", "3"], BrodenDataset(concept_root), batch_size=8, iou_threshold=0.01,
                          progress=False)
    d.name = "tiny <net>"
    return d


def v1(text: str) -> str:
    """A version-2 dissection.json as version 1 wrote it: no format, version, settings or data."""
    doc = json.loads(text)
    for key in ("format", "version", "settings"):
        doc.pop(key)
    for layer in doc["layers"]:
        layer.pop("data")
    return json.dumps(doc, indent=1)


def _same(a: Dissection, b: Dissection):
    assert json.loads(v1(a.to_json())) == json.loads(v1(b.to_json()))
    assert a.name == b.name and a.timings == b.timings and a.settings == b.settings
    assert list(a.layers) == list(b.layers)
    for x, y in zip(a, b):
        assert x.num_units == y.num_units and x.categories == y.categories and x.images == y.images
        np.testing.assert_array_equal(x.thresholds, y.thresholds)
        assert [x.label_names[i] for i in x.best_label] == [y.label_names[i] for i in y.best_label]
        np.testing.assert_array_equal(x.best_iou, y.best_iou)
        assert [x.categories[c] for c in x.best_category] == [y.categories[c] for c in y.best_category]
        assert x.units() == y.units()
        for thr in (None, 0.0, 0.005, 0.02, 0.04, 0.2):
            assert x.detectors(thr) == y.detectors(thr)
            for rule in ("category", "best"):
                assert x.unique_detectors(thr, rule) == y.unique_detectors(thr, rule), (thr, rule)


def test_round_trip_of_a_dissection(dissected, tmp_path):
    path = tmp_path / "dissection.json"
    path.write_text(v1(dissected.to_json()))
    loaded = Dissection.load(path)
    _same(dissected, loaded)
    assert sum(len(v) for v in loaded.detectors().values()) > 0  # the comparison is not of empty lists
    assert Dissection.load(tmp_path).to_json() == loaded.to_json()  # a folder holding dissection.json
    assert loaded["3"].intersection.min() == -1 and loaded["3"].topk_index.shape == (12, 0)  # not in the file
    for rule in ("category", "best"):
        assert compare(dissected, loaded, rule=rule).rows[:2] == compare(dissected, loaded, rule=rule).rows[2:]
    for layer in ("1", "3"):  # what explain() reads of the layer
        a, b = unit_concepts(dissected, layer), unit_concepts(loaded, layer)
        np.testing.assert_array_equal(a.thresholds, b.thresholds)
        assert (a.labels, a.categories, a.iou.tolist(), a.iou_threshold, a.threshold_op) == \
               (b.labels, b.categories, b.iou.tolist(), b.iou_threshold, b.threshold_op)
    # the report from a loaded dissection: the same tables and charts, no image strips
    index = loaded.save_report(tmp_path / "report")
    page = (tmp_path / "report" / "3.html").read_text()
    assert index.is_file() and "tiny &lt;net&gt;" in index.read_text() and "unit_0000.jpg" not in page
    assert page.count("<tr") == dissected["3"].num_units + page.count("<table")  # a head row per table


def _layer(iou, label_category, names, categories, thresholds=None):
    K, C = iou.shape
    z = np.zeros
    return LayerDissection(
        layer="L", thresholds=np.asarray(thresholds if thresholds is not None else np.ones(K), np.float32),
        iou=np.asarray(iou, np.float64), intersection=z((K, C), np.int64), activation=z((K, len(categories)), np.int64),
        label_count=z(C, np.int64), activation_total=z(K, np.int64), images=3, label_names=list(names),
        categories=list(categories), label_category=np.asarray(label_category, np.int64), topk_index=z((K, 0), np.int64),
        topk_values=z((K, 0), np.float32), topk_maps=z((K, 0, 1, 1), np.float32), minimum=z(K, np.float32),
        maximum=np.ones(K, np.float32), settings={"iou_threshold": 0.04, "images": 3})


def test_ties_between_categories_resolve_as_the_label_numbers_did(tmp_path):
    # label numbers: 0 is not a concept; 1 'b' (scene) comes before 2 'a' (object) and 3 'c' (object)
    names = ["-", "b", "a", "c", "=cmd|' /C calc'!A0", "<img src=x onerror=alert(1)>$\\frac{1}{2}$"]
    label_category = [-1, 1, 0, 0, 1, 0]
    iou = np.array([[0.9, 0.3, 0.3, 0.1, 0.0, 0.0],   # tie 'b' (scene) vs 'a' (object): 'b', the lower number
                    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # all zero: the first concept label, 'b'
                    [0.0, 0.1, 0.5, 0.5, 0.2, 0.0],   # within a category: 'a' before 'c'
                    [0.0, 0.0, 0.0, 0.0, 0.6, 0.6],   # names that look like a formula and markup: data
                    [0.0, 0.05, 0.0, 0.05, 0.0, 0.0]])  # 'c' is first met here (object), tie with 'b'
    ld = _layer(iou, label_category, names, ["object", "scene"])
    d = Dissection({"L": ld}, settings=ld.settings, name="ties")  # as dissect() makes it
    (tmp_path / "d.json").write_text(v1(d.to_json()))
    loaded = Dissection.load(tmp_path / "d.json")
    _same(d, loaded)
    assert [u["label"] for u in sorted(loaded["L"].units(), key=lambda u: u["unit"])] == \
        ["b", "b", "a", "=cmd|' /C calc'!A0", "b"]


@pytest.mark.parametrize("written", ["Infinity", "null", '"inf"', '"Infinity"', '"INF"'])
def test_nonfinite_thresholds_in_old_and_new_spellings(tmp_path, written):
    iou = np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    ld = _layer(iou, [-1, 0, 0], ["-", "x", "y"], ["object"], thresholds=[1.5, np.inf])
    ld.minimum[1] = ld.maximum[1] = np.nan  # a unit that was NaN everywhere: threshold +inf, dead
    d = Dissection({"L": ld}, settings=ld.settings)
    text = v1(d.to_json())
    assert text.count('"inf"') == 1  # to_json's strict-JSON spelling of the dead unit's threshold
    # `Infinity` is what to_json wrote until it wrote valid JSON; the rest are other spellings read back
    (tmp_path / "d.json").write_text(text.replace('"inf"', written))
    loaded = Dissection.load(tmp_path / "d.json")
    assert loaded["L"].thresholds[1] == np.inf and loaded["L"].dead.tolist() == [False, True]
    _same(d, loaded)
    (tmp_path / "d.json").write_text(text.replace('"inf"', '"-inf"'))
    assert Dissection.load(tmp_path / "d.json")["L"].thresholds[1] == -np.inf


def test_a_version1_file_marks_no_unit_saturated(tmp_path):
    # version 1 stores no maxima: a live unit whose threshold is exactly 1.0 was once read back as
    # saturated (its maximum filled in as 1.0); unknown now reads as not saturated, and still live
    iou = np.array([[0.0, 0.5, 0.0], [0.0, 0.0, 0.3]])
    ld = _layer(iou, [-1, 0, 0], ["-", "x", "y"], ["object"], thresholds=[1.0, 6.0])
    ld.maximum[:] = [1.0, 6.0]  # both saturated when written
    d = Dissection({"L": ld}, settings=ld.settings)
    assert d["L"].saturated.tolist() == [True, True]
    (tmp_path / "d.json").write_text(v1(d.to_json()))
    loaded = Dissection.load(tmp_path / "d.json")["L"]
    assert loaded.saturated.tolist() == [False, False] and loaded.dead.tolist() == [False, False]


def _bad(tmp_path, doc, message):
    p = tmp_path / "bad.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        Dissection.load(p)


def test_bad_files_are_refused_naming_the_field(tmp_path, dissected):
    good = json.loads(v1(dissected.to_json()))
    unit = good["layers"][1]["units"][0]
    cat = unit["category"]

    def edit(fn):
        doc = json.loads(json.dumps(good))
        fn(doc)
        return doc

    with pytest.raises(ValueError, match="must be a dissection.json file or a folder holding one"):
        Dissection.load(tmp_path / "missing.json")
    _bad(tmp_path, "{not json", "not valid JSON")
    _bad(tmp_path, [1, 2], "expected an object with a 'layers' list")
    _bad(tmp_path, edit(lambda d: d.update(name=["x"])), "'name' must be a string")
    _bad(tmp_path, edit(lambda d: d.update(timings={"forward": "slow"})), "'timings' must map names to numbers")
    _bad(tmp_path, edit(lambda d: d["layers"].append(d["layers"][0])), "layer '1' appears twice")
    _bad(tmp_path, edit(lambda d: d["layers"][0].update(layer=3)), r"layers\[0\]: expected an object with a string 'layer'")
    _bad(tmp_path, edit(lambda d: d["layers"][0].update(units=[])), "'units' must be a non-empty list")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][1].update(unit=unit["unit"])),
         r"units\[1\] must have a distinct 'unit' in \[0, 12\)")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][0].update(unit=True)), "distinct 'unit'")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][0].update(iou=1.5)), "iou must be a number in \\[0, 1\\]")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][0].update(threshold="big")), "threshold must be a number")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][0]["per_category"][cat].update(label=["x"])),
         "must hold a string 'label'")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][0]["per_category"].pop(cat)), "categories .* differ|best concept")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][0].update(label="not its label")), "is not its best in that")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["units"][0].update(iou=unit["iou"] / 2)), "is not the largest")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["settings"].update(threshold_op="<")), "settings.threshold_op")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["settings"].update(iou_threshold="0.04")), "settings.iou_threshold")
    _bad(tmp_path, edit(lambda d: d["layers"][1]["settings"].update(images=-1)), "settings.images")
