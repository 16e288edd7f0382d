"""unitscope.dissect against the plain-PyTorch reference dissection, layer capture, checkpoints
(resume equality, key refusal), exports and the report."""
import json

import numpy as np
import pytest
import torch

import unitscope
import unitscope.reference.dissect as ref
from unitscope.data import BrodenDataset
from unitscope.dissect import Dissection, imagenet_preprocess
from unitscope.dissect.run import PROBE_IMAGES


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4, padding=2), torch.nn.ReLU(),     # "1": 16x16 for 64x64 input
        torch.nn.Conv2d(8, 12, 3, stride=2, padding=1), torch.nn.ReLU(),    # "3": 8x8, upsampled x4 to 32x32
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(12, 3))


@pytest.fixture(scope="module")
def ds(concept_root):
    return BrodenDataset(concept_root)


def _equal_to_reference(d, model, ds, layers, **kw):
    expect = ref.dissect(model, layers, ds, **kw)
    for layer in layers:
        got = d[layer]
        # thresholds: the float64 quantile formula, to float32 rounding
        np.testing.assert_allclose(got.thresholds, expect[layer]["thresholds"].numpy(), rtol=1e-6, atol=1e-7)
        # counts: exactly the reference's, given the same thresholds
        same = ref.dissect(model, [layer], ds, thresholds={layer: torch.from_numpy(got.thresholds)}, **kw)[layer]
        for name, mine in (("intersection", got.intersection), ("activation", got.activation),
                           ("label", got.label_count), ("activation_total", got.activation_total)):
            assert np.array_equal(mine, same[name].numpy()), name
        assert np.array_equal(got.iou, same["iou"].numpy())
        assert got.images == len(ds)


@pytest.mark.parametrize("union", ["category", "dataset"])
@pytest.mark.parametrize("op", [">", ">="])
def test_equals_reference(ds, union, op):
    model = tiny_cnn()
    d = unitscope.dissect(model, ["1", "3"], ds, batch_size=5, union=union, threshold_op=op, progress=False)
    _equal_to_reference(d, model, ds, ["1", "3"], union=union, threshold_op=op)


def test_mask_union_equals_reference_and_is_saved(ds, tmp_path):
    # NetDissect-Lite's union (issue 20), on the default backend and on numba (the kernel tests compare
    # every backend with the reference)
    model = tiny_cnn(2)
    d = unitscope.dissect(model, ["3"], ds, batch_size=5, union="mask", progress=False)
    _equal_to_reference(d, model, ds, ["3"], union="mask")
    numba = unitscope.dissect(model, ["3"], ds, batch_size=5, union="mask", progress=False, backend="numba")
    assert np.array_equal(numba["3"].activation, d["3"].activation)
    full = unitscope.dissect(model, ["3"], ds, batch_size=5, progress=False)
    assert (d["3"].activation <= full["3"].activation).all() and (d["3"].activation < full["3"].activation).any()
    assert np.array_equal(d["3"].intersection, full["3"].intersection)
    d.to_json(tmp_path / "dissection.json")
    loaded = Dissection.load(tmp_path / "dissection.json")
    assert loaded["3"].settings["union"] == "mask" and loaded["3"].units() == d["3"].units()


def test_align_corners_and_no_cache_equal_reference(ds):
    model = tiny_cnn(1)
    d = unitscope.dissect(model, ["3"], ds, batch_size=7, upsample="bilinear-align-corners",
                          cache_activations=False, progress=False)
    _equal_to_reference(d, model, ds, ["3"], align_corners=True)


def test_batch_size_and_workers_do_not_change_result(ds):
    model = tiny_cnn()
    a = unitscope.dissect(model, ["3"], ds, batch_size=24, progress=False)["3"]
    b = unitscope.dissect(model, ["3"], ds, batch_size=5, num_workers=2, progress=False)["3"]
    assert np.array_equal(a.iou, b.iou) and np.array_equal(a.thresholds, b.thresholds)
    assert np.array_equal(a.topk_index, b.topk_index) and np.array_equal(a.topk_maps, b.topk_maps)


def test_topk_images_are_the_most_activating(ds):
    model = tiny_cnn()
    d = unitscope.dissect(model, ["3"], ds, batch_size=5, topk=4, progress=False)["3"]
    acts = ref.collect_activations(model, ["3"], ds)["3"]
    peak = acts.amax(dim=(2, 3))  # (N, K)
    for k in range(peak.shape[1]):
        order = sorted(range(len(ds)), key=lambda i: (-float(peak[i, k]), i))[:4]
        assert d.topk_index[k].tolist() == order
        assert torch.equal(torch.from_numpy(d.topk_maps[k, 0]), acts[order[0], k])
    assert np.allclose(d.maximum, peak.max(0).values.numpy()) and np.allclose(d.minimum, acts.amin((0, 2, 3)).numpy())


def test_sketch_thresholds_close_to_exact(ds):
    model = tiny_cnn()
    # (normalized input: on the [0, 1] images some ReLU units are 0 at their 0.995 quantile, a plateau)
    norm = imagenet_preprocess
    d = unitscope.dissect(model, ["1"], ds, batch_size=8, exact=False, progress=False, preprocess=norm)["1"]
    e = unitscope.dissect(model, ["1"], ds, batch_size=8, progress=False, preprocess=norm)["1"]
    acts = ref.collect_activations(model, ["1"], ds, norm)["1"].transpose(0, 1).reshape(8, -1)
    for k in range(8):  # the sketch's threshold sits at a rank within 1e-3 of the exact one
        rank_s = float((acts[k] <= float(d.thresholds[k])).double().mean())
        assert abs(rank_s - 0.995) < 2e-3, (k, rank_s)
    assert e.thresholds.shape == d.thresholds.shape


# ---- capture ---------------------------------------------------------------------------------
class Reuse(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.pool = torch.nn.AvgPool2d(4)

    def forward(self, x):
        return self.conv(self.pool(self.conv(x)))


def test_module_called_twice_is_an_error_naming_the_fix(ds):
    with pytest.raises(ValueError, match=r"layer 'conv' \(Conv2d\) is called 2 times .*'conv@k'.*conv@0, conv@1"):
        unitscope.dissect(Reuse(), ["conv"], ds, batch_size=8, progress=False)
    d = unitscope.dissect(Reuse(), ["conv@1"], ds, batch_size=8, progress=False)
    assert d["conv@1"].topk_maps.shape[2:] == (16, 16)
    with pytest.raises(ValueError, match="ran only 2 time"):
        unitscope.dissect(Reuse(), ["conv@2"], ds, batch_size=8, progress=False)


def test_bad_layer_and_arguments(ds):
    with pytest.raises(ValueError, match="'nope' is not a module of the model"):
        unitscope.dissect(tiny_cnn(), ["nope"], ds, progress=False)
    with pytest.raises(ValueError, match=r"layer '6' must output a Tensor \(B, K, h, w\)"):
        unitscope.dissect(tiny_cnn(), ["6"], ds, progress=False)
    for kw, match in [({"quantile": 1.5}, "quantile must be"), ({"threshold_op": "<"}, "threshold_op must be"),
                      ({"union": "all"}, "union must be"), ({"upsample": "nearest"}, "upsample must be"),
                      ({"batch_size": 0}, "batch_size must be"), ({"checkpoint_every": -1}, "checkpoint_every must be"),
                      ({"checkpoint_dir": "ck\0pt"}, "without NUL bytes")]:
        with pytest.raises(ValueError, match=match):
            unitscope.dissect(tiny_cnn(), ["1"], ds, progress=False, **kw)
    with pytest.raises(TypeError, match="dataset must be a BrodenDataset"):
        unitscope.dissect(tiny_cnn(), ["1"], [1, 2], progress=False)


class Tokens(torch.nn.Module):
    """A ViT-like layer: (B, 1 + 8*8, C) tokens with a class token first."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 6, 8, stride=8)
        self.block = torch.nn.Identity()

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([t.mean(1, keepdim=True), t], 1)
        return self.block(t)


def test_token_outputs_become_maps(ds):
    torch.manual_seed(0)
    model = Tokens()
    with pytest.raises(ValueError, match="tokens=True"):
        unitscope.dissect(model, ["block"], ds, progress=False)
    d = unitscope.dissect(model, ["block"], ds, tokens=True, batch_size=8, progress=False)["block"]
    e = unitscope.dissect(model, ["embed"], ds, batch_size=8, progress=False)["embed"]
    assert np.array_equal(d.iou, e.iou) and np.array_equal(d.thresholds, e.thresholds)


def test_eval_mode_and_training_flag_restored(ds):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Dropout(0.9))
    model.train()
    a = unitscope.dissect(model, ["1"], ds, batch_size=8, progress=False)["1"]
    b = unitscope.dissect(model, ["1"], ds, batch_size=8, progress=False)["1"]
    assert model.training and np.array_equal(a.iou, b.iou)  # dropout off during dissection


# ---- checkpoints -----------------------------------------------------------------------------
class Flaky(BrodenDataset):
    """Raises when an item >= fail_at is read in a pass that loads `fail_field`."""
    fail_at = None
    fail_field = "image"

    def __getitem__(self, i):
        if self.fail_at is not None and i >= self.fail_at and self.fail_field in self.fields:
            raise RuntimeError("simulated interruption")
        return super().__getitem__(i)


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_cnn()
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize("fail_field, cache", [("image", "auto"), ("labels", "auto"), ("labels", False)])
def test_resume_after_interruption_gives_the_same_result(concept_root, tmp_path, fail_field, cache):
    model = Counting()
    full = unitscope.dissect(model, ["net.1", "net.3"], BrodenDataset(concept_root), batch_size=4, progress=False)
    flaky = Flaky(concept_root)
    flaky.fail_at, flaky.fail_field = 13, fail_field
    model.images = 0
    with pytest.raises(RuntimeError, match="simulated interruption"):
        unitscope.dissect(model, ["net.1", "net.3"], flaky, batch_size=4, checkpoint_dir=tmp_path,
                          checkpoint_every=1, cache_activations=cache, progress=False)
    first = model.images
    flaky.fail_at = None
    model.images = 0
    again = unitscope.dissect(model, ["net.1", "net.3"], flaky, batch_size=4, checkpoint_dir=tmp_path,
                              checkpoint_every=1, cache_activations=cache, progress=False)
    P = PROBE_IMAGES            # a checkpointed run first runs the model on the probe images
    if fail_field == "image":   # pass 1 stopped at image 12: resumes there
        assert first == P + 12 and model.images == P + 24 - 12 + 24
    else:                       # pass 2 stopped: pass 1 not repeated, pass 2 resumes at image 12
        assert model.images == P + 12
    for layer in ("net.1", "net.3"):
        a, b = full[layer], again[layer]
        for name in ("thresholds", "iou", "intersection", "activation", "label_count", "topk_index", "topk_maps"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # a finished checkpoint returns the result running the model on the probe images only
    model.images = 0
    done = unitscope.dissect(model, ["net.1", "net.3"], flaky, batch_size=4, checkpoint_dir=tmp_path, progress=False)
    assert model.images == P and np.array_equal(done["net.3"].iou, full["net.3"].iou)
    assert not list(tmp_path.glob("*.tmp*"))


def test_checkpoint_of_another_run_is_refused(concept_root, tmp_path):
    ds = BrodenDataset(concept_root)
    unitscope.dissect(tiny_cnn(), ["1"], ds, batch_size=8, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"belongs to another dissection \(quantile: checkpoint has 0.995, this run has 0.99\)"):
        unitscope.dissect(tiny_cnn(), ["1"], ds, quantile=0.99, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"model: checkpoint has"):
        unitscope.dissect(tiny_cnn(seed=5), ["1"], ds, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"layers: checkpoint has \['1'\], this run has \['3'\]"):
        unitscope.dissect(tiny_cnn(), ["3"], ds, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"dataset: checkpoint has"):
        unitscope.dissect(tiny_cnn(), ["1"], BrodenDataset(concept_root, categories=["object"]),
                          checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"threshold_op: .*union: "):
        unitscope.dissect(tiny_cnn(), ["1"], ds, threshold_op=">=", union="dataset", checkpoint_dir=tmp_path,
                          progress=False)


# ---- results ---------------------------------------------------------------------------------
def test_exports_and_report(ds, tmp_path):
    d = unitscope.dissect(tiny_cnn(), ["1", "3"], ds, batch_size=8, progress=False, iou_threshold=0.03)  # some detectors, not all
    ld = d["3"]
    text = ld.to_csv()
    lines = text.splitlines()
    head = lines[0].split(",")
    assert head[:4] == ["unit", "category", "label", "score"]
    assert head[4:9] == ["color-label", "color-truth", "color-activation", "color-intersect", "color-iou"]
    assert len(lines) == 1 + ld.num_units
    scores = [float(l.split(",")[3]) for l in lines[1:]]
    assert scores == sorted(scores, reverse=True)
    first = lines[1].split(",")
    k = int(first[0]) - 1
    assert first[2] == ld.label_names[ld.best_label[k]] and abs(float(first[3]) - ld.best_iou[k]) < 1e-6
    data = json.loads(d.to_json())
    assert [l["layer"] for l in data["layers"]] == ["1", "3"]
    assert data["layers"][1]["units"][0]["iou"] == pytest.approx(ld.best_iou.max())
    # detectors and unique detectors follow their definitions
    dets = ld.detectors()
    assert all(x["iou"] > 0.03 for x in dets)
    assert len(dets) == int((ld.best_iou > 0.03).sum())
    labels, ious = ld.best_in_category()
    for ci, cat in enumerate(ld.categories):
        assert ld.unique_detectors(rule="category")[cat] == len({int(l) for l, v in zip(labels[ci], ious[ci])
                                                                 if v > 0.03})
    # the default is the paper's and NetDissect-Lite's count: one best concept per detector unit
    assert ld.unique_detectors() == ld.unique_detectors(rule="best")
    assert sum(ld.unique_detectors(rule="best").values()) == len({x["label"] for x in dets})
    assert ld.unique_detectors(rule="best") != ld.unique_detectors(rule="category")
    index = d.save_report(tmp_path / "report")
    page = (tmp_path / "report" / "3.html").read_text()
    assert index.is_file() and "unit_0000.jpg" in page and (tmp_path / "report" / "3_unique.png").stat().st_size > 1000
    assert len(list((tmp_path / "report" / "3").glob("unit_*.jpg"))) == ld.num_units
    # detectors first, the other units collapsed below them
    shown, rest = page.split("<details>")
    det = {x["unit"] for x in ld.detectors()}
    assert 0 < len(det) < ld.num_units and "</details>" in rest
    assert all(f"<td>{k}</td>" in shown for k in det)
    assert all(f"<tr class=\"{'dead' if ld.dead[k] else ''}\"><td>{k}</td>" in rest
               for k in range(ld.num_units) if k not in det)
    # CSV: units from 1 (NetDissect-Lite), unit_0based from 0
    assert head[-1] == "unit_0based" and all(int(l.split(",")[0]) == int(l.split(",")[-1]) + 1 for l in lines[1:])
    paths = d.to_csv(tmp_path / "csv")
    assert [p.name for p in paths] == ["tally_1.csv", "tally_3.csv"]
    cmp = unitscope.compare(d, d, names=["a", "b"])
    assert len(cmp.rows) == 4 and "unique color" in cmp.table()
    assert cmp.save(tmp_path / "cmp").is_file()


def test_categories_path_and_autocast(concept_root):
    model = tiny_cnn()
    d = unitscope.dissect(model, ["3"], str(concept_root), categories=["object", "part"], batch_size=8,
                          progress=False)["3"]
    assert d.categories == ["object", "part"] and d.activation.shape == (12, 2)
    assert set(d.label_category[d.label_category >= 0]) == {0, 1}
    full = unitscope.dissect(model, ["3"], BrodenDataset(concept_root), batch_size=8, progress=False)["3"]
    obj = full.label_category == 1  # object labels: same counts whichever other categories are dissected
    assert np.array_equal(d.intersection[:, obj], full.intersection[:, obj])
    low = unitscope.dissect(model, ["3"], BrodenDataset(concept_root), batch_size=8, autocast=torch.bfloat16,
                            progress=False)["3"]
    np.testing.assert_allclose(low.thresholds, full.thresholds, rtol=0.05, atol=0.05)


def test_corrupt_checkpoint_and_topk_zero(concept_root, tmp_path):
    (tmp_path / "dissect.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint .*dissect.pt is unreadable .*delete it"):
        unitscope.dissect(tiny_cnn(), ["1"], BrodenDataset(concept_root), checkpoint_dir=tmp_path, progress=False)
    d = unitscope.dissect(tiny_cnn(), ["1"], BrodenDataset(concept_root), topk=0, batch_size=8, progress=False)
    assert d["1"].topk_index.shape == (8, 0)
    d.save_report(tmp_path / "r")
    assert (tmp_path / "r" / "1.html").is_file()


def test_tallies_larger_than_free_memory_refused_before_work(ds, monkeypatch):
    import importlib
    run_module = importlib.import_module("unitscope.dissect.forward")  # unitscope.dissect is also the function
    monkeypatch.setattr(run_module, "free_memory_bytes", lambda: 8 * 12 * ds.num_labels - 1)
    with pytest.raises(ValueError, match=r"the IoU tallies need .* \(12 units x \d+ label numbers x 8 bytes\), more than"):
        unitscope.dissect(tiny_cnn(), ["3"], ds, progress=False)
    monkeypatch.setattr(run_module, "free_memory_bytes", lambda: 8 * 12 * ds.num_labels)
    assert unitscope.dissect(tiny_cnn(), ["3"], ds, batch_size=24, cache_activations=False, progress=False)["3"].images == 24
