"""ties="random": a planted saturated unit (a plateau at its maximum, ReLU6-like) gets a mask of the
quantile's mass, exactly the tied cells the seeded hash draws; the same result across batch sizes,
the activation cache, a resumed run and threshold_op; units without tied cells unchanged bit for bit;
bad values refused; the rule recorded in the checkpoint's key and the saved JSON."""
import numpy as np
import pytest
import torch

import unitscope
from dissect.test_load import _net
from dissect.test_planted import N, S, identity, make_planted_dataset
from unitscope.data import BrodenDataset
from unitscope.dissect import CheckpointError, Dissection
from unitscope.dissect.ties import cell_uniform

Q, SEED = 0.995, 7


class Plateau(torch.nn.Module):
    """Unit 0: ReLU6 of 8 x the image's smooth field, 6.0 on ~20% of cells (saturated: its 0.995
    quantile is its maximum); unit 1: the field itself plus a little noise (no plateau). Output at
    the label resolution (32 x 32), so the mask is the raw cells. Fails after `stop` calls."""

    def __init__(self, stop=None):
        super().__init__()
        self.tap = torch.nn.Identity()
        self.calls, self.stop = 0, stop

    def forward(self, x):
        self.calls += 1
        if self.stop is not None and self.calls > self.stop:
            raise RuntimeError("interrupted")
        field, noise = x[:, 1, ::2, ::2], x[:, 2, ::2, ::2]
        return self.tap(torch.stack([torch.nn.functional.relu6(8 * field), field + 0.01 * noise], 1))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return BrodenDataset(make_planted_dataset(tmp_path_factory.mktemp("ties") / "ds"))


def run(ds, ties="random", **kw):
    kw = dict(dict(batch_size=8, preprocess=identity, progress=False, quantile=Q, ties=ties, tie_seed=SEED,
                   compile=False), **kw)
    return unitscope.dissect(kw.pop("model", None) or Plateau(), ["tap"], ds, **kw)["tap"]


def _reference_count(ds, threshold):
    """The cells of unit 0 the rule draws, recomputed here from the images: tied cells whose hash is
    below ((1 - q) x cells - above) / tied."""
    images = torch.stack([ds.with_fields("image")[i]["image"] for i in range(len(ds))])
    a = Plateau()(images)[:, 0]                       # (N, 32, 32)
    tied, above = a == threshold, int((a > threshold).sum())
    share = ((1 - Q) * a.numel() - above) / int(tied.sum())
    img, y, x = tied.nonzero(as_tuple=True)
    u = cell_uniform(SEED, img, torch.zeros_like(img), y * S + x)
    return int((u < share).sum()), int(tied.sum()), share


def test_saturated_unit_gets_the_quantiles_mass(planted):
    paper = run(planted, ties="op")
    assert paper.saturated[0] and paper.thresholds[0] == 6.0 and paper.activation_total[0] == 0  # never fires
    d = run(planted)
    drawn, tied, share = _reference_count(planted, 6.0)
    mass = (1 - Q) * N * S * S                       # 122.88 cells
    assert tied > 0.1 * N * S * S and 0 < share < 1
    assert d.activation_total[0] == drawn             # exactly the cells the hash draws ...
    assert abs(drawn - mass) < 4 * np.sqrt(tied * share * (1 - share))  # ... the quantile's mass in expectation
    assert d.ties[0] == tied and d.saturated[0]       # the raw ties and the flag are about the raw values
    assert d.settings["ties"] == "random" and d.settings["tie_seed"] == SEED
    # unit 1 has no plateau: bit for bit the paper's rule
    assert d.ties[1] <= 1
    for name in ("intersection", "activation", "activation_total", "iou"):
        np.testing.assert_array_equal(getattr(d, name)[1], getattr(paper, name)[1])
    # '>=' takes the whole plateau under the paper's rule, the same draw under the random rule
    ge = run(planted, ties="op", threshold_op=">=")
    assert ge.activation_total[0] == tied
    same = run(planted, threshold_op=">=")
    for name in ("intersection", "activation", "activation_total"):
        np.testing.assert_array_equal(getattr(same, name)[0], getattr(d, name)[0])
    other = run(planted, tie_seed=SEED + 1)           # another seed: another draw
    assert not np.array_equal(other.intersection[0], d.intersection[0]) or \
        other.activation_total[0] != d.activation_total[0]


def _arrays(ld):
    return [ld.thresholds, ld.intersection, ld.activation, ld.activation_total, ld.label_count, ld.iou, ld.ties]


def _equal(a, b):
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.tobytes() == y.tobytes()


def test_same_result_across_batch_sizes_cache_and_resume(planted, tmp_path):
    base = run(planted)
    _equal(base, run(planted, batch_size=5))
    _equal(base, run(planted, batch_size=24, cache_activations=False))
    # calls without the cache: the probe, 3 batches of pass 1, 3 of the tie sweep, 3 of the tally
    for stop, where in ((1 + 3 + 1, "the tie sweep"), (1 + 3 + 3 + 2, "the tally")):
        folder = tmp_path / f"stop{stop}"
        with pytest.raises(RuntimeError, match="interrupted"):
            run(planted, model=Plateau(stop=stop), checkpoint_dir=folder, checkpoint_every=1, cache_activations=False)
        again = Plateau()
        _equal(base, run(planted, model=again, checkpoint_dir=folder, cache_activations=False))
        assert again.calls == 1 + (3 if where == "the tie sweep" else 0) + (3 if stop == 5 else 1), where


def test_units_without_ties_unchanged_bit_for_bit(concept_root):
    ds = BrodenDataset(concept_root)
    kw = dict(batch_size=8, progress=False, preprocess=identity)
    paper = unitscope.dissect(_net(), ["1", "3"], ds, **kw)
    rand = unitscope.dissect(_net(), ["1", "3"], ds, ties="random", **kw)
    untied = 0
    for a, b in zip(paper, rand):
        np.testing.assert_array_equal(a.thresholds, b.thresholds)
        for k in np.flatnonzero(a.ties == 0):
            untied += 1
            for name in ("intersection", "activation", "activation_total", "iou"):
                assert getattr(a, name)[k].tobytes() == getattr(b, name)[k].tobytes(), (a.layer, k, name)
        changed = np.flatnonzero(a.activation_total != b.activation_total)
        assert set(changed) <= set(np.flatnonzero(a.ties > 0))
    assert untied >= 10


@pytest.mark.parametrize("kw, match", [
    ({"ties": "maybe"}, "ties must be one of"), ({"ties": None}, "ties must be one of"),
    ({"tie_seed": -1}, "tie_seed must be an int"), ({"tie_seed": True}, "tie_seed must be an int"),
    ({"tie_seed": 1.5}, "tie_seed must be an int"), ({"tie_seed": 2 ** 63}, "tie_seed must be an int"),
])
def test_bad_values_refused(planted, kw, match):
    with pytest.raises(ValueError, match=match):
        run(planted, **kw)


def test_recorded_in_checkpoint_and_json(planted, tmp_path):
    run(planted, ties="op", checkpoint_dir=tmp_path / "c")
    with pytest.raises(CheckpointError, match="ties"):
        run(planted, checkpoint_dir=tmp_path / "c")
    run(planted, checkpoint_dir=tmp_path / "r")
    with pytest.raises(CheckpointError, match="tie_seed"):
        run(planted, tie_seed=SEED + 1, checkpoint_dir=tmp_path / "r")
    d = Dissection({"tap": run(planted)})
    d.to_json(tmp_path / "d.json")
    loaded = Dissection.load(tmp_path / "d.json")["tap"]
    assert loaded.settings["ties"] == "random" and loaded.settings["tie_seed"] == SEED


def test_tampered_tie_shares_refused(planted, tmp_path):
    from unitscope.dissect.checkpoint import content_digest
    run(planted, checkpoint_dir=tmp_path)
    path = tmp_path / "dissect.pt"
    state = torch.load(path, weights_only=True)
    assert state["layers"]["tap"]["tie_share"].dtype == torch.float64
    for bad in (torch.full((2,), 2.0, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), torch.zeros(2)):
        forged = {k: v for k, v in state.items() if k != "digest"}
        forged["layers"] = {"tap": dict(state["layers"]["tap"], tie_share=bad)}
        torch.save(dict(forged, digest=content_digest(forged)), path)
        with pytest.raises(CheckpointError, match="tie_share"):
            run(planted, checkpoint_dir=tmp_path)
    forged = {k: v for k, v in state.items() if k != "digest"}
    forged["layers"] = {"tap": {k: v for k, v in state["layers"]["tap"].items() if k != "tie_share"}}
    torch.save(dict(forged, digest=content_digest(forged)), path)
    with pytest.raises(CheckpointError, match="no tie shares were saved"):
        run(planted, checkpoint_dir=tmp_path)


def _splitmix(z):
    """splitmix64's finalizer on Python ints modulo 2^64 (the definition the tensors must follow)."""
    m = 2 ** 64
    z = (z + 0x9E3779B97F4A7C15) % m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return z ^ (z >> 31)


def test_cell_hash_follows_its_definition_and_is_uniform():
    g = torch.Generator().manual_seed(0)
    image, unit, cell = (torch.randint(0, 2 ** 31, (200,), generator=g) for _ in range(3))
    for seed in (0, 7, 2 ** 63 - 1):
        got = cell_uniform(seed, image, unit, cell)
        for i in range(0, 200, 7):
            z = _splitmix(seed)
            for part in (image[i], unit[i], cell[i]):
                z = _splitmix(z ^ int(part))
            assert got[i].item() == (z >> 11) / 2 ** 53
    n = torch.arange(100_000)
    u = cell_uniform(3, n // 1000, n % 7, n % 1000)
    assert u.dtype == torch.float64 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs((u < 0.1).double().mean().item() - 0.1) < 0.005
