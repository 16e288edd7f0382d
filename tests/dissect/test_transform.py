"""dissect(transform={layer: fn}): fn applied to the captured activations before thresholds and tally,
checked (a callable returning the shape it was given), and part of a checkpoint's key."""
import numpy as np
import pytest
import torch

import unitscope
from dissect.test_planted import Planted, Units, identity, make_planted_dataset
from unitscope.data import BrodenDataset
from unitscope.dissect import CheckpointError


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return BrodenDataset(make_planted_dataset(tmp_path_factory.mktemp("transform") / "ds"))


class Flipped(torch.nn.Module):
    """The planted units with their order reversed and doubled: what the transform below computes."""

    def __init__(self):
        super().__init__()
        self.inner = Units()
        self.units = torch.nn.Identity()

    def forward(self, x):
        return self.units(self.inner(x).flip(1) * 2).mean((2, 3))


def flip_double(a):
    return a.flip(1) * 2


def test_transform_equals_a_model_that_computes_it(planted):
    kw = dict(batch_size=8, preprocess=identity, progress=False, compile=False)
    got = unitscope.dissect(Planted(), ["units"], planted, transform={"units": flip_double}, **kw)["units"]
    want = unitscope.dissect(Flipped(), ["units"], planted, **kw)["units"]
    for name in ("thresholds", "iou", "intersection", "topk_values", "topk_maps", "ties"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert got.label_names[got.best_label[3]] == "spot"           # unit 0 moved to unit 3


@pytest.mark.parametrize("transform, error, match", [
    ({"units": lambda a: a[:, :2]}, ValueError, r"transform\['units'\] must return a floating tensor of the shape"),
    ({"units": lambda a: a.long()}, ValueError, "must return a floating tensor"),
    ({"units": lambda a: a.numpy()}, ValueError, "got ndarray"),
    ({"units": "flip"}, TypeError, "transform must map layer names to callables"),
    ({"other": flip_double}, ValueError, r"transform names layers \['other'\] that are not dissected"),
    ([flip_double], TypeError, "transform must be a dict"),
])
def test_bad_transforms_refused(planted, transform, error, match):
    with pytest.raises(error, match=match):
        unitscope.dissect(Planted(), ["units"], planted, preprocess=identity, progress=False, transform=transform)


def test_a_checkpoint_records_the_transform(planted, tmp_path):
    kw = dict(batch_size=8, preprocess=identity, progress=False, compile=False, checkpoint_dir=tmp_path)
    unitscope.dissect(Planted(), ["units"], planted, transform={"units": flip_double}, **kw)
    with pytest.raises(CheckpointError, match="transform: checkpoint has"):
        unitscope.dissect(Planted(), ["units"], planted, transform={"units": lambda a: a * 3}, **kw)
    with pytest.raises(CheckpointError, match="transform: checkpoint has"):
        unitscope.dissect(Planted(), ["units"], planted, **kw)
