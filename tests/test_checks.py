"""The shared vocabulary (unitscope._checks, unitscope._html): one home for the validators (saliency
keeps its old names), the settings written once, and preprocess=None meaning no preprocessing in
dissect as everywhere, said once where the behaviour changed."""
import warnings

import pytest
import torch

import unitscope
from unitscope import _checks, _html
from unitscope.data import BrodenDataset, make_concept_dataset


def test_saliency_keeps_the_old_names_of_the_validators():
    from unitscope.saliency import base
    for name in ("check_input", "check_choice", "check_positive_int", "warn_if_training"):
        assert getattr(base, name) is getattr(_checks, name)


@pytest.mark.parametrize("check, bad, match", [
    (_checks.check_threshold_op, "=>", r"threshold_op must be '>' or '>=', got '=>'"),
    (_checks.check_union, "all", r"union must be 'category', 'dataset' or 'mask', got 'all'"),
    (_checks.check_upsample, "nearest", r"upsample must be one of \['bilinear', 'bilinear-align-corners'\]"),
])
def test_setting_checks_name_the_argument(check, bad, match):
    with pytest.raises(ValueError, match=match):
        check(bad)


def test_one_iou_threshold_default_and_one_align_corners_mapping():
    import inspect
    assert inspect.signature(unitscope.dissect).parameters["iou_threshold"].default == _checks.IOU_THRESHOLD
    assert [_checks.align_corners(u) for u in ("bilinear", "bilinear-align-corners", None, 3)] == [
        False, True, False, False]


def test_html_page_escapes_the_title_and_names():
    text = _html.page("<b>x</b>", f"<p>{_html.esc('<img src=x onerror=1>')}</p>")
    assert "<title>&lt;b&gt;x&lt;/b&gt;</title>" in text and "&lt;img src=x onerror=1&gt;" in text


class Records(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.lowest = float("inf")

    def forward(self, x):
        self.lowest = min(self.lowest, float(x.min()))
        return self.conv(x)


def test_dissect_preprocess_none_is_no_preprocessing_said_once(tmp_path, monkeypatch):
    from unitscope.dissect import run
    monkeypatch.setattr(run, "_said", [])
    ds = BrodenDataset(make_concept_dataset(tmp_path / "ds", 4, size=32, seed=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model = Records()
            unitscope.dissect(model, ["conv"], ds, progress=False, compile=False)
            assert model.lowest >= 0.0            # the [0, 1] images, not ImageNet-normalized ones
    said = [str(w.message) for w in caught if "preprocess=None" in str(w.message)]
    assert len(said) == 1 and "imagenet_preprocess" in said[0]
    model = Records()
    unitscope.dissect(model, ["conv"], ds, progress=False, compile=False,
                      preprocess=run.imagenet_preprocess)
    assert model.lowest < 0.0                      # normalized on request
