"""What dissect writes, it reads back (issue 19 part 3): strict JSON for every value (a dead unit's
+inf threshold included), dissection.json validated without tracebacks, a full disk said in one line,
report paths that never collide, temporary checkpoint files unique per writer."""
import dataclasses
import errno
import json
import threading

import numpy as np
import pytest
import torch

import unitscope
from dissect.test_planted import NaNUnit, identity, make_planted_dataset
from unitscope.dissect import Dissection
from unitscope.dissect import checkpoint as ck
from unitscope.explain.concepts import unit_concepts


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    ds = unitscope.data.BrodenDataset(make_planted_dataset(tmp_path_factory.mktemp("files") / "ds"))
    return unitscope.dissect(NaNUnit(), ["units"], ds, batch_size=8, preprocess=identity, progress=False)


def _strict(text):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_a_dead_units_inf_threshold_round_trips_as_json(nan_run, tmp_path):
    assert nan_run["units"].thresholds[3] == np.inf
    path = tmp_path / "dissection.json"
    doc = _strict(nan_run.to_json(path))
    units = {u["unit"]: u for u in doc["layers"][0]["units"]}
    assert units[3]["threshold"] == "inf" and isinstance(units[0]["threshold"], float)
    uc = unit_concepts(path, "units")                      # explain reads what dissect wrote
    assert uc.thresholds[3] == np.inf and uc.concept(3) == ("no concept", "")
    assert np.array_equal(uc.thresholds[:3], nan_run["units"].thresholds[:3])


def _doc(nan_run, tmp_path, edit):
    doc = _strict(nan_run.to_json())
    edit(doc["layers"][0])
    path = tmp_path / "d.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda l: l["units"][0].update(threshold=10 ** 400), r"unit \d+'s threshold must be a finite number"),
    (lambda l: l["units"][0].update(threshold=1e300), r"unit \d+'s threshold must be a finite number in \[-3.40"),
    (lambda l: l["units"][0].update(threshold="-inf"), r"threshold must be"),
    (lambda l: l["units"][0].update(threshold="nan"), r"threshold must be"),
    (lambda l: l["units"][0].update(iou=10 ** 400), r"unit \d+'s iou must be a finite number in \[0, 1\]"),
    (lambda l: l["units"][0].update(iou="inf"), r"iou must be a finite number"),
    (lambda l: l["settings"].update(iou_threshold=10 ** 400), r"settings.iou_threshold must be a finite number"),
])
def test_dissection_json_numbers_refused_clearly(nan_run, tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        unit_concepts(_doc(nan_run, tmp_path, edit), "units")


def test_deeply_nested_dissection_json_refused_clearly(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"layers": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        unit_concepts(path, "units")


class _FullDisk:
    """A file whose writes fail with ENOSPC after the first few bytes."""

    def __init__(self, f):
        self.f, self.left = f, 64

    def write(self, b):
        if len(b) > self.left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_is_said_in_one_line(tmp_path, monkeypatch):
    real = ck.os.fdopen
    monkeypatch.setattr(ck.os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode)))
    with pytest.raises(OSError, match="no space left") as e:
        ck.save_checkpoint(tmp_path / "dissect.pt", {"x": torch.zeros(1000)})
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert e.value.__suppress_context__ and list(tmp_path.iterdir()) == []   # no traceback chain, no leftovers


def test_a_full_disk_in_the_dissect_command_is_one_line(tmp_path, monkeypatch, capsys):
    from unitscope import cli
    root = make_planted_dataset(tmp_path / "ds")
    real = ck.os.fdopen
    monkeypatch.setattr(ck.os, "fdopen", lambda fd, mode: _FullDisk(real(fd, mode)))
    code = cli.main(["dissect", "--model", "cli_models:tiny", "--layers", "0", "--dataset", str(root),
                     "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("unitscope dissect: error: [Errno 28] no space left")


def test_other_write_errors_pass_unchanged(tmp_path, monkeypatch):
    def broken(obj, f):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(ck.torch, "save", broken)
    with pytest.raises(PermissionError, match="Permission denied"):
        ck.save_checkpoint(tmp_path / "dissect.pt", {"x": 1})


def test_two_writers_of_one_checkpoint_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    real, both = torch.save, threading.Barrier(2, timeout=20)

    def slow_save(obj, f):  # both writers hold their temporary file open at once
        real(obj, f)
        both.wait()
    monkeypatch.setattr(ck.torch, "save", slow_save)
    errors = []

    def write(n):
        try:
            ck.save_checkpoint(tmp_path / "dissect.pt", {"x": torch.full((1000,), n)})
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)
    threads = [threading.Thread(target=write, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = torch.load(tmp_path / "dissect.pt", weights_only=True)
    assert state["digest"] == ck.content_digest({k: v for k, v in state.items() if k != "digest"})
    assert [p.name for p in tmp_path.iterdir()] == ["dissect.pt"]


@pytest.mark.parametrize("names", [("blk", "blk.html"), ("x", "x_unique.png"), ("a", "tally_a.csv"),
                                   ("Blk", "blk.HTML")])
def test_report_paths_never_collide(nan_run, tmp_path, names):
    ld = nan_run["units"]
    d = Dissection({n: dataclasses.replace(ld, layer=n) for n in names})
    out = tmp_path / "out"
    d.to_csv(out)
    d.to_json(out / "dissection.json")
    index = d.save_report(out)
    pages = [p for p in out.iterdir() if p.suffix.lower() == ".html" and p != index]
    assert len(pages) == 2 and len({p.name.lower() for p in out.iterdir()}) == len(list(out.iterdir()))
    for n in names:
        uc = unit_concepts(out / "dissection.json", n)     # explain finds each layer's own strips
        assert uc.top_image(0) is not None and uc.top_image(0).shape[0] == 112
