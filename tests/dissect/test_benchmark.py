"""`unitscope benchmark`: a TOML spec of models x transforms dissected entry by entry into runs/<entry>/,
the comparison page written, a finished entry never recomputed, a changed spec refused, bad specs one
line with exit 2; the rotation path passes transform= to dissect() (run for real where dissect has it)."""

import cli_models  # tests/dissect is on sys.path (conftest), so MODULE:FACTORY finds it too
import numpy as np
import pytest
import torch

import unitscope
from unitscope import cli
from unitscope.data import BrodenDataset
from unitscope.dissect import Dissection
from unitscope.dissect import benchmark as bench
from unitscope.dissect.result import file_stems
from unitscope.dissect.rotation import random_rotation

SPEC = """
[dataset]
generate = {{ images = 9, size = 32, seed = 2 }}

[settings]
batch_size = 4
iou_threshold = 0.02
num_workers = 0
compile = false

[[models]]
name = "tiny"
model = "cli_models:tiny"
layers = ["0", "2"]
{extra}
"""


def _write(tmp_path, extra="", text=None):
    p = tmp_path / "spec.toml"
    p.write_text(text if text is not None else SPEC.format(extra=extra))
    return str(p)


def test_runs_every_entry_writes_the_page_and_never_recomputes(tmp_path, capsys, monkeypatch):
    spec, out = _write(tmp_path), tmp_path / "out"
    assert cli.main(["benchmark", spec, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] tiny: dissecting 0, 2" in printed and "compare.html" in printed
    run = out / "runs" / "tiny"
    saved = Dissection.load(run)
    # the same numbers as dissect() on the same model and the generated dataset
    d = unitscope.dissect(cli_models.tiny(), ["0", "2"], BrodenDataset(out / "dataset"), batch_size=4,
                          iou_threshold=0.02, progress=False)
    for layer in ("0", "2"):
        np.testing.assert_array_equal(saved[layer].best_iou, d[layer].best_iou)
    assert saved.name == "tiny" and (out / "compare.html").is_file() and (out / "compare.csv").is_file()
    page = (out / "compare.html").read_text()
    assert "<td>tiny</td><td>0</td>" in page and "<td>tiny</td><td>2</td>" in page
    # a rerun: finished, loaded, never dissected again
    monkeypatch.setattr(bench, "run_entry", lambda *a, **k: pytest.fail("a finished entry was recomputed"))
    assert cli.main(["benchmark", spec, "--out", str(out), "--quiet"]) == 0
    assert "tiny: finished before, not recomputed" in capsys.readouterr().out
    # the same folder with another spec for that entry is refused, not mixed
    changed = _write(tmp_path, text=SPEC.format(extra="").replace("iou_threshold = 0.02", "iou_threshold = 0.03"))
    assert cli.main(["benchmark", changed, "--out", str(out), "--quiet"]) == 2
    assert "holds a finished entry 'tiny' of another spec" in capsys.readouterr().err


def test_entries_are_models_times_transforms_and_rotations_reach_dissect(tmp_path, monkeypatch):
    extra = ('\n[[models]]\nmodel = "efficientnet_lite0"\npretrained = false\nseed = 4\nlayers = ["_swish@1"]\n'
             '\n[[transforms]]\nname = "half"\nrotation = 0.5\nseed = 1\n')
    spec = bench.read_spec(_write(tmp_path, extra))
    assert [e["name"] for e in spec["entries"]] == ["tiny", "tiny+half", "efficientnet_lite0-random4",
                                                    "efficientnet_lite0-random4+half"]
    calls = []

    def fake_dissect(model, layers, ds, **kw):
        calls.append((layers, kw.get("transform")))
        raise RuntimeError("stop")

    monkeypatch.setattr(unitscope, "dissect", fake_dissect)
    entries = spec["entries"]
    for entry in (entries[0], entries[1]):
        with pytest.raises(RuntimeError, match="stop"):
            bench.run_entry(entry, None, spec["settings"], tmp_path / "x", False)
    (_, t0), (layers1, t1) = calls
    assert t0 is None  # no transform= without a rotation: dissect() without that argument still serves
    assert layers1 == ["0", "2"] and set(t1) == {"0", "2"}
    x = torch.randn(2, 8, 3, 3)
    y = t1["0"](x)  # K taken from the activations: random_rotation(8, 0.5, seed=1)
    assert torch.equal(y, random_rotation(8, 0.5, seed=1)(x))
    assert repr(t1["0"]) == "random_rotation(alpha=0.5, seed=1)"


def test_rotation_entry_runs_for_real(tmp_path):
    extra = '\n[[transforms]]\nname = "full"\nrotation = 1.0\nlayers = ["2"]\n'
    out = tmp_path / "out"
    assert cli.main(["benchmark", _write(tmp_path, extra), "--out", str(out), "--quiet"]) == 0
    plain = Dissection.load(out / "runs" / "tiny")
    rotated = Dissection.load(out / "runs" / file_stems(["tiny+full"])["tiny+full"])
    assert rotated.name == "tiny+full"
    assert plain["0"].units() == rotated["0"].units()  # layer 0 is not rotated
    assert not np.array_equal(plain["2"].thresholds, rotated["2"].thresholds)  # layer 2 is
    assert "tiny+full" in (out / "compare.html").read_text()


def test_bad_specs_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "out")

    def fails(text, message):
        assert cli.main(["benchmark", _write(tmp_path, text=text), "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("unitscope benchmark: error: ") and message in err, err

    good = SPEC.format(extra="")
    fails("[dataset\n", "not valid TOML")
    fails(good.replace("[settings]", "[setings]"), "unknown key(s) ['setings']")
    fails(good.replace("batch_size = 4", "batch_size = 0"), "[settings].batch_size is not valid, got 0")
    fails(good.replace("batch_size = 4", "bach_size = 4"), "[settings]: unknown key(s) ['bach_size']")
    fails(good.replace("batch_size = 4", "batch_size = 4\nties = 'some'"), "[settings].ties is not valid, got 'some'")
    fails(good.replace("batch_size = 4", "batch_size = 4\ntie_seed = -2"), "[settings].tie_seed is not valid, got -2")
    fails(good.replace('layers = ["0", "2"]', "layers = []"), "layers must be a non-empty list of strings")
    fails(good.split("[[models]]")[0], "at least one [[models]] entry")
    fails(good.replace("generate =", "path = 'x'\ngenerate ="), "exactly one of path")
    fails(good + '\n[[transforms]]\nrotation = 2\n', "rotation must be a number in [0, 1]")
    fails(good + '\n[[transforms]]\nrotation = 0.5\nlayers = ["9"]\n', "rotates layers ['9'] that are not among")
    fails(good + '\n[[models]]\nname = "tiny"\nmodel = "cli_models:tiny"\nlayers = ["0"]\n', "entry names must be distinct")
    fails(good.replace('model = "cli_models:tiny"', 'model = "cli_models:tiny"\npretrained = false'),
          "pretrained = false needs a registry model")
    fails(good.replace('model = "cli_models:tiny"', 'model = "cli_models:tiny"\nweights = "nope.pt"'),
          "weights must name an existing file")
    fails(good.replace('model = "cli_models:tiny"', 'model = "resnet9000"'), "not a registered model")


def test_tie_rule_in_the_spec_reaches_dissect(tmp_path):
    text = SPEC.format(extra="").replace("batch_size = 4", "batch_size = 4\nties = \"random\"\ntie_seed = 5")
    out = tmp_path / "out"
    assert cli.main(["benchmark", _write(tmp_path, text=text), "--out", str(out), "--quiet"]) == 0
    saved = Dissection.load(out / "runs" / "tiny")
    d = unitscope.dissect(cli_models.tiny(), ["0", "2"], BrodenDataset(out / "dataset"), batch_size=4,
                          iou_threshold=0.02, progress=False, ties="random", tie_seed=5)
    assert saved.settings["ties"] == "random" and saved.settings["tie_seed"] == 5
    for layer in ("0", "2"):
        assert saved[layer].activation_total.tobytes() == d[layer].activation_total.tobytes()
