"""One arithmetic per run (issue 18 part 1): compile='auto' decides its forward variant (channels_last
or not, compiled or not) on warm-up calls before the first counted batch and keeps it to the end,
so its counts equal those of a run that used the kept variant from the first batch; the tie mass at
each unit's threshold and saturated units are counted and reported."""
import csv
import io
import time
import warnings

import numpy as np
import pytest
import torch

import unitscope
from dissect.test_planted import GROUND, SPOT, N, Planted, S, Units, identity, make_planted_dataset
from unitscope import _compile
from unitscope.data import BrodenDataset
from unitscope.dissect import Dissection


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return BrodenDataset(make_planted_dataset(tmp_path_factory.mktemp("variant") / "ds"))


def _arrays(d):
    u = d["units"]
    return {"thresholds": u.thresholds, "intersection": u.intersection, "activation": u.activation,
            "topk_values": u.topk_values, "maximum": u.maximum, "ties": u.ties}


def _assert_same(a, b):
    for name in a:
        assert np.array_equal(a[name], b[name]), name


class ShiftedCompile:
    """Stands in for torch.compile with a compiled function whose arithmetic differs visibly from
    eager (every captured activation + 0.25), so that a run mixing the two shows in its counts."""

    def __call__(self, fn, dynamic=None):
        return lambda *args: {k: v + 0.25 for k, v in fn(*args).items()}


def test_auto_compiles_before_the_first_counted_batch(planted, monkeypatch, tmp_path):
    monkeypatch.setattr(_compile.torch, "compile", ShiftedCompile())
    monkeypatch.setattr(_compile, "COMPILE_SECONDS", 0.0)  # any saving pays: 'auto' compiles after its trial
    kw = dict(batch_size=1, preprocess=identity, progress=False, cache_activations=False)
    auto = unitscope.dissect(Planted(), ["units"], planted, compile="auto", checkpoint_dir=tmp_path, **kw)
    kept = unitscope.dissect(Planted(), ["units"], planted, compile=True, **kw)   # compiled from batch 1
    eager = unitscope.dissect(Planted(), ["units"], planted, compile=False, **kw)
    assert auto.settings["compiled"] is True
    state = torch.load(tmp_path / "dissect.pt", weights_only=True)
    assert state["compiled"] is True and state["channels_last"] is False
    _assert_same(_arrays(auto), _arrays(kept))
    assert not np.array_equal(auto["units"].maximum, eager["units"].maximum)  # (the variants do differ)


class FormatUnits(Units):
    """The planted units, + 0.25 on channels_last input (a visible stand-in for last-bit rounding
    differences); contiguous input runs slower, so that the trial keeps channels_last. always_cl:
    the reference, which converts every input itself."""

    def __init__(self, always_cl=False):
        super().__init__()
        self.always_cl = always_cl

    def forward(self, x):
        if self.always_cl:
            x = x.contiguous(memory_format=torch.channels_last)
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if not cl:
            time.sleep(0.03)
        return super().forward(x) + (0.25 if cl else 0.0)


class FormatModel(torch.nn.Module):
    def __init__(self, always_cl=False):
        super().__init__()
        self.units = FormatUnits(always_cl)

    def forward(self, x):
        return self.units(x).mean((2, 3))


def test_auto_channels_last_trial_is_not_counted(planted, tmp_path):
    kw = dict(batch_size=1, preprocess=identity, progress=False, cache_activations=False)
    auto = unitscope.dissect(FormatModel(), ["units"], planted, compile="auto", checkpoint_dir=tmp_path, **kw)
    assert torch.load(tmp_path / "dissect.pt", weights_only=True)["channels_last"] is True
    kept = unitscope.dissect(FormatModel(always_cl=True), ["units"], planted, compile=False, **kw)
    _assert_same(_arrays(auto), _arrays(kept))


def test_a_short_auto_run_stays_eager_as_given(planted, monkeypatch):
    monkeypatch.setattr(_compile.torch, "compile", ShiftedCompile())
    monkeypatch.setattr(_compile, "COMPILE_SECONDS", 0.0)
    kw = dict(batch_size=8, preprocess=identity, progress=False)  # 3 batches: no trial, no compile
    auto = unitscope.dissect(FormatModel(), ["units"], planted, compile="auto", **kw)
    eager = unitscope.dissect(FormatModel(), ["units"], planted, compile=False, **kw)
    assert auto.settings["compiled"] is False
    _assert_same(_arrays(auto), _arrays(eager))


class TieUnits(torch.nn.Module):
    """Unit 0: SPOT x (1 + field), 0 elsewhere: its 0.995 quantile is 0, tied by every other pixel (a
    plateau); unit 1: the GROUND indicator, whose quantile is its maximum 1 (saturated: with '>' its
    mask is empty); unit 2: distinct values (no plateau)."""

    def forward(self, x):
        code = torch.round(x[:, 0, ::2, ::2] * 255 / 40)
        field, noise = x[:, 1, ::2, ::2], x[:, 2, ::2, ::2]
        pos = torch.arange(S * S, dtype=torch.float32).reshape(S, S) / (S * S)
        return torch.stack([(code == SPOT).float() * (1 + field), (code == GROUND).float(),
                            field + noise / 256 + pos / 256], 1)


class TieModel(torch.nn.Module):
    def __init__(self, stop=None):
        super().__init__()
        self.units = TieUnits()
        self.calls, self.stop = 0, stop

    def forward(self, x):
        self.calls += 1
        if self.stop is not None and self.calls > self.stop:
            raise RuntimeError("interrupted")
        return self.units(x).mean((2, 3))


def test_planted_ties_plateau_and_saturation(planted, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = unitscope.dissect(TieModel(), ["units"], planted, batch_size=5, preprocess=identity,
                              progress=False)["units"]
    spot, blob = 118, 117
    assert d.thresholds[0] == 0 and d.ties[0] == N * S * S - spot
    assert d.thresholds[1] == 1 and d.ties[1] == N * S * S - spot - blob
    # unit 2 by a reference: the unit's values over the dataset, compared with its threshold
    with torch.no_grad():
        acts = torch.cat([TieUnits()(planted[i]["image"][None]) for i in range(N)])
    assert d.ties[2] == int((acts[:, 2] == torch.tensor(d.thresholds[2])).sum()) and d.ties[2] < 5
    assert list(d.plateau) == [True, True, False] and list(d.saturated) == [False, True, False]
    assert d.activation_total[1] == 0                      # saturated with '>': an empty mask
    said = [str(w.message) for w in caught if "equal their threshold" in str(w.message)]
    assert len(said) == 1 and "'units': 2" in said[0]
    rows = list(csv.DictReader(io.StringIO(d.to_csv())))
    by_unit = {int(r["unit_0based"]): r for r in rows}
    assert [by_unit[k]["ties"] for k in range(3)] == [str(int(t)) for t in d.ties]
    assert [by_unit[k]["saturated"] for k in range(3)] == ["0", "1", "0"]
    page = Dissection({"units": d}).save_report(tmp_path / "report")
    text = (tmp_path / "report" / "units.html").read_text()
    assert text.count("(plateau)") == 2 and text.count("(saturated)") == 1 and page.exists()


def test_ties_survive_a_resume_in_the_second_pass(planted, tmp_path):
    whole = unitscope.dissect(TieModel(), ["units"], planted, batch_size=4, preprocess=identity, progress=False,
                              compile=False)["units"]
    # the probe, 6 batches of pass 1, then 3 of pass 2 before the interruption
    with pytest.raises(RuntimeError, match="interrupted"):
        unitscope.dissect(TieModel(stop=1 + 6 + 3), ["units"], planted, batch_size=4, preprocess=identity,
                          progress=False, compile=False, cache_activations=False, checkpoint_dir=tmp_path,
                          checkpoint_every=1)
    state = torch.load(tmp_path / "dissect.pt", weights_only=True)
    assert state["stage"] == "tally" and state["done"] == 12 and "ties" in state["layers"]["units"]
    resumed = unitscope.dissect(TieModel(), ["units"], planted, batch_size=4, preprocess=identity,
                                progress=False, compile=False, cache_activations=False,
                                checkpoint_dir=tmp_path)["units"]
    assert np.array_equal(resumed.ties, whole.ties) and np.array_equal(resumed.iou, whole.iou)
