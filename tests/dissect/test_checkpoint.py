"""Dissection checkpoints: what they fingerprint (a stale resume is refused: model code, behaviour,
preprocess, re-encoded images), what they tolerate (float noise, lazy modules), the folder checked
before work, temporary files cleaned, the content digest."""
import importlib
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import unitscope
from unitscope.data import BrodenDataset, make_concept_dataset
from unitscope.dissect import CheckpointError
from unitscope.dissect.run import PROBE_IMAGES


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_concept_dataset(tmp_path_factory.mktemp("ck") / "ds", 8, size=32, seed=2)


class Net(torch.nn.Module):
    """conv -> act -> leaky_relu(negative) -> tap -> out. `negative` and `gain` are plain attributes:
    in neither the state_dict nor the repr, so only the model's behaviour shows them."""

    def __init__(self, act=None, negative=0.0, gain=1.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.act = act if act is not None else torch.nn.Identity()
        self.tap = torch.nn.Identity()
        self.out = torch.nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.negative, self.gain, self.calls = negative, gain, 0

    def forward(self, x):
        self.calls += x.shape[0]
        h = self.tap(torch.nn.functional.leaky_relu(self.act(self.conv(x)), self.negative) * self.gain)
        return self.out(h)


def run(model, root, ckpt, **kw):
    kw.setdefault("batch_size", 4)
    return unitscope.dissect(model, ["tap", "out"], BrodenDataset(root), checkpoint_dir=ckpt, progress=False, **kw)


def test_same_run_resumes_and_checkpoint_error_is_a_value_error(small, tmp_path):
    a = run(Net(), small, tmp_path)
    model = Net()
    b = run(model, small, tmp_path)
    assert model.calls == PROBE_IMAGES            # finished: only the probe ran
    assert np.array_equal(a["out"].iou, b["out"].iou) and np.array_equal(a["tap"].thresholds, b["tap"].thresholds)
    assert issubclass(CheckpointError, ValueError)


def test_relu_to_leaky_relu_with_same_weights_is_refused(small, tmp_path):
    run(Net(act=torch.nn.ReLU()), small, tmp_path)
    with pytest.raises(CheckpointError, match=r"belongs to another dissection \(model_code: checkpoint has"):
        run(Net(act=torch.nn.LeakyReLU(0.01)), small, tmp_path)
    with pytest.raises(CheckpointError, match="model_code"):
        run(Net(act=torch.nn.LeakyReLU(0.2)), small, tmp_path)


def test_behaviour_change_invisible_to_weights_and_code_is_refused(small, tmp_path):
    run(Net(), small, tmp_path)
    with pytest.raises(CheckpointError, match=r"the model's outputs at \['tap', 'out'\] on the probe images differ"):
        run(Net(negative=0.01), small, tmp_path)       # ReLU -> LeakyReLU(0.01) through a plain attribute
    with pytest.raises(CheckpointError, match=r"outputs at \['tap', 'out'\]"):
        run(Net(gain=1.01), small, tmp_path)


def test_float_noise_below_the_tolerance_resumes(small, tmp_path):
    a = run(Net(), small, tmp_path)
    model = Net(gain=1 + 1e-6)                     # last-bits differences (threads, kernels) are not a new run
    b = run(model, small, tmp_path)
    assert model.calls == PROBE_IMAGES and np.array_equal(a["out"].iou, b["out"].iou)


def _scaled(s):
    return lambda x: x * s


def test_preprocess_code_and_captured_values_are_fingerprinted(small, tmp_path):
    run(Net(), small, tmp_path / "a", preprocess=lambda x: x * 1.0)
    with pytest.raises(CheckpointError, match="preprocess: checkpoint has"):
        run(Net(), small, tmp_path / "a", preprocess=lambda x: x * 0.5)
    run(Net(), small, tmp_path / "b", preprocess=_scaled(1.0))
    model = Net()
    run(model, small, tmp_path / "b", preprocess=_scaled(1.0))        # an equal closure: resumes
    assert model.calls == PROBE_IMAGES
    with pytest.raises(CheckpointError, match="preprocess: checkpoint has"):
        run(Net(), small, tmp_path / "b", preprocess=_scaled(0.99))
    norm = unitscope.models.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    run(Net(), small, tmp_path / "c", preprocess=norm)
    model = Net()
    run(model, small, tmp_path / "c", preprocess=unitscope.models.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert model.calls == PROBE_IMAGES
    with pytest.raises(CheckpointError, match="preprocess: checkpoint has"):
        run(Net(), small, tmp_path / "c", preprocess=unitscope.models.Normalize((0.5, 0.5, 0.5), (0.2, 0.25, 0.25)))


def test_reencoded_image_with_unchanged_csvs_is_refused(small, tmp_path):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(small, root)
    run(Net(), root, tmp_path / "ck")
    path = BrodenDataset(root).image_path(5)
    with Image.open(path) as im:
        im.convert("RGB").save(path, quality=50)
    with pytest.raises(CheckpointError, match="dataset: checkpoint has"):
        run(Net(), root, tmp_path / "ck")


def test_lazy_modules_fingerprint_and_resume(small, tmp_path):
    def lazy():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.LazyConv2d(5, 3, stride=2), torch.nn.ReLU())
    a = unitscope.dissect(lazy(), ["1"], BrodenDataset(small), checkpoint_dir=tmp_path, progress=False)
    b = unitscope.dissect(lazy(), ["1"], BrodenDataset(small), checkpoint_dir=tmp_path, progress=False)
    assert np.array_equal(a["1"].iou, b["1"].iou)


def test_checkpoint_dir_that_is_a_file_fails_before_work(small, tmp_path):
    (tmp_path / "file").write_text("x")
    model = Net()
    with pytest.raises(CheckpointError, match=r"checkpoint_dir '.*file' is a file, not a folder"):
        run(model, small, tmp_path / "file")
    with pytest.raises(CheckpointError, match="cannot be created"):
        run(model, small, tmp_path / "file" / "sub")
    assert model.calls == 0


def test_stale_temporary_files_removed_and_failed_save_leaves_none(small, tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])             # a process that has ended: its pid is free
    dead.wait()
    stale = [tmp_path / f"dissect.pt.tmp{dead.pid}", tmp_path / f"dissect.pt.tmp{os.getpid()}"]
    other = tmp_path / "notes.pt.tmp1"
    for f in stale + [other]:
        f.write_bytes(b"partial")
    run(Net(), small, tmp_path)
    assert not any(f.exists() for f in stale) and other.exists()
    ck = importlib.import_module("unitscope.dissect.checkpoint")

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        run(Net(), small, tmp_path / "again")
    assert not list((tmp_path / "again").glob("*.tmp*"))


def test_digest_format_and_version_checked(small, tmp_path):
    run(Net(), small, tmp_path)
    path = tmp_path / "dissect.pt"
    state = torch.load(path, weights_only=True)
    edited = dict(state, done=state["done"] + 0)
    edited["layers"]["tap"]["thresholds"] = edited["layers"]["tap"]["thresholds"] + 1
    torch.save(edited, path)
    with pytest.raises(CheckpointError, match="does not match its digest"):
        run(Net(), small, tmp_path)
    torch.save({k: v for k, v in state.items() if k not in ("format", "version", "digest")}, path)
    with pytest.raises(CheckpointError, match="not a unitscope dissection checkpoint"):
        run(Net(), small, tmp_path)
    torch.save(dict(state, version=1), path)
    with pytest.raises(CheckpointError, match="format version 1, this unitscope reads 2, 3, 4 and 5"):
        run(Net(), small, tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="is unreadable"):
        run(Net(), small, tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(CheckpointError, match="is not a file"):
        run(Net(), small, tmp_path)


class ShowsAddress(Net):
    def __init__(self):
        super().__init__()
        self.hook = lambda x: x

    def extra_repr(self):
        return f"hook={self.hook}"      # '<function ... at 0x7f...>': another address in every process


def test_memory_addresses_in_a_repr_do_not_prevent_resuming(small, tmp_path):
    assert repr(ShowsAddress()) != repr(ShowsAddress())
    run(ShowsAddress(), small, tmp_path)
    model = ShowsAddress()
    run(model, small, tmp_path)
    assert model.calls == PROBE_IMAGES


class FormatNet(torch.nn.Module):
    """A conv net that records the memory format of every batch it sees, runs slower on contiguous
    input (so that compile='auto' keeps channels_last) and fails once it has seen `stop` batches."""

    def __init__(self, stop=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.tap = torch.nn.Identity()
        self.seen, self.stop = [], stop

    def forward(self, x):
        import time
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        self.seen.append("cl" if cl else "contiguous")
        if self.stop is not None and len(self.seen) > self.stop:
            raise RuntimeError("interrupted")
        if not cl:
            time.sleep(0.02)
        return self.tap(self.conv(x))


def test_the_input_format_auto_kept_is_recorded_and_kept_on_resume(small, tmp_path):
    """compile='auto' runs its channels_last trial on the first batch before any counted batch (the
    trial's outputs are discarded), and a resumed run does not redo it: it keeps the format the
    checkpoint records, so one result never mixes the two (they differ in the last float bits)."""
    ds = BrodenDataset(small)
    # the probe, the 4-call trial, the check of the kept format, then 6 counted batches of 1
    first = FormatNet(stop=1 + 4 + 1 + 6)
    with pytest.raises(RuntimeError, match="interrupted"):
        unitscope.dissect(first, ["tap"], ds, batch_size=1, checkpoint_dir=tmp_path, checkpoint_every=1,
                          progress=False, compile="auto", cache_activations=False)
    assert first.seen[0] == "contiguous"                                       # the probe
    assert first.seen[1:5] == ["contiguous", "cl", "contiguous", "cl"]         # the trial, not counted
    assert first.seen[5:] == ["cl"] * 8          # the check, 6 counted batches, the interrupted one
    state = torch.load(tmp_path / "dissect.pt", weights_only=True)
    assert state["channels_last"] is True and state["compiled"] is False
    assert state["done"] == 6 and state["version"] == 5  # 5: tie_share (ties="random") added
    second = FormatNet()
    unitscope.dissect(second, ["tap"], ds, batch_size=1, checkpoint_dir=tmp_path, progress=False,
                      compile="auto", cache_activations=False)
    assert second.seen[0] == "contiguous"                # the probe: the eager model as it is
    assert set(second.seen[1:]) == {"cl"} and len(second.seen) == 1 + 1 + 2 + 8  # check, 2 left, the tally pass


def test_channels_last_field_checked_and_version_2_files_read(small, tmp_path):
    from unitscope.dissect.checkpoint import content_digest
    run(Net(), small, tmp_path)
    path = tmp_path / "dissect.pt"
    state = torch.load(path, weights_only=True)
    forged = {k: v for k, v in state.items() if k != "digest"}
    torch.save(dict(forged, channels_last="yes", digest=content_digest(dict(forged, channels_last="yes"))), path)
    with pytest.raises(CheckpointError, match="channels_last must be a bool or None"):
        run(Net(), small, tmp_path)
    v2 = {k: v for k, v in forged.items() if k != "channels_last"}
    v2["version"] = 2
    torch.save(dict(v2, digest=content_digest(v2)), path)
    model = Net()
    run(model, small, tmp_path)                           # a finished version-2 run resumes as finished
    assert model.calls == PROBE_IMAGES
