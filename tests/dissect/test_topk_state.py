"""TopKImages (dissect/topk.py): the NaN policy (NaN positions ignored), order independence, and the
checks of load_state_dict against states a TopKImages can never produce (issue 9.1 and 9.3). Random
tampering of its state is tested with the kernels' states in tests/kernels/test_state_tampering.py."""
import math

import pytest
import torch

from unitscope.dissect.topk import TopKImages
from unitscope.kernels import _state

NAN, INF = math.nan, math.inf


def nan_ignoring_reference(acts, k):
    """(values, index) per unit by brute force: score = max of the non-NaN values, none -> not kept."""
    B, K = acts.shape[:2]
    values = torch.full((K, k), -INF)
    index = torch.full((K, k), -1, dtype=torch.int64)
    for u in range(K):
        scored = []
        for b in range(B):
            v = acts[b, u][~torch.isnan(acts[b, u])]
            if v.numel() and float(v.max()) > -INF:
                scored.append((-float(v.max()), b))
        for j, (s, b) in enumerate(sorted(scored)[:k]):
            values[u, j], index[u, j] = -s, b
    return values, index


def test_one_nan_pixel_does_not_kill_a_unit():
    acts = torch.rand(6, 2, 5, 5)
    acts[3, 0, 2, 2] = NAN  # the issue: aminmax gave NaN and every unit looked dead
    t = TopKImages(2, 3, (5, 5))
    t.update(acts, torch.arange(6))
    assert bool((t.minimum < t.maximum).all())
    finite = torch.where(torch.isnan(acts), 0.5, acts)
    assert torch.equal(t.maximum, finite.amax(dim=(0, 2, 3))) and torch.equal(t.minimum, finite.amin(dim=(0, 2, 3)))
    values, index = nan_ignoring_reference(acts, 3)
    assert torch.equal(t.values, values) and torch.equal(t.index, index)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_nan_inf_and_all_nan_maps_any_batching(batch):
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(7, 3, 4, 4, generator=g)
    acts[0, 0] = NAN                   # no score: never kept
    acts[1, 1, 0, 0] = INF             # the top score
    acts[2, 2] = -INF                  # no value above -inf: never kept
    acts[4, 2, 1, :] = NAN
    acts[5, :, 3, 3] = NAN
    values, index = nan_ignoring_reference(acts, 4)
    t = TopKImages(3, 4, (4, 4))
    for s in range(0, 7, batch):
        t.update(acts[s:s + batch], torch.arange(s, min(s + batch, 7)))
    assert torch.equal(t.values, values) and torch.equal(t.index, index)
    assert not bool(torch.isnan(t.minimum).any() or torch.isnan(t.maximum).any())
    assert 0 not in t.index[0].tolist() and 2 not in t.index[2].tolist()
    restored = TopKImages(3, 4, (4, 4))
    restored.load_state_dict(t.state_dict())
    assert torch.equal(restored.index, t.index)


def test_all_nan_unit_has_no_min_max_and_no_images():
    acts = torch.rand(3, 2, 2, 2)
    acts[:, 1] = NAN
    t = TopKImages(2, 2, (2, 2))
    t.update(acts, torch.arange(3))
    assert t.index[1].tolist() == [-1, -1]
    assert float(t.minimum[1]) == INF and float(t.maximum[1]) == -INF
    TopKImages(2, 2, (2, 2)).load_state_dict(t.state_dict())


def _state_of():
    g = torch.Generator().manual_seed(2)
    t = TopKImages(2, 3, (3, 3))
    t.update(torch.randn(5, 2, 3, 3, generator=g), torch.arange(5))
    return t.state_dict()


def _forge(edit):
    sd = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in _state_of().items()}
    edit(sd)
    sd[_state.DIGEST] = _state.digest(sd)  # a consistent digest: only the invariant checks can refuse it
    return sd


@pytest.mark.parametrize("edit,match", [
    (lambda s: s["index"].__setitem__((0, 1), s["index"][0, 0]), "repeats an image|out of order"),
    (lambda s: s["index"].__setitem__((0, 2), -2), r"index.*must be in \[-1"),
    (lambda s: s["index"].__setitem__((1, 0), -1), "must be -inf exactly where index is -1"),
    (lambda s: s["values"].__setitem__((0, 0), NAN), "is NaN"),
    (lambda s: s["values"].__setitem__((0, 1), s["values"][0, 0] + 1), "out of order|maximum"),
    (lambda s: s["maps"].__setitem__((0, 0, 0, 0), s["values"][0, 0] + 1), "its slot's value as its maximum"),
    (lambda s: s["minimum"].__setitem__(0, 1e9), "minimum"),
    (lambda s: s["maximum"].__setitem__(1, -1e9), "maximum"),
    (lambda s: s["maximum"].__setitem__(1, NAN), "maximum.*NaN"),
    (lambda s: s.__setitem__("maps", s["maps"].double()), "must be float32, got float64"),
    (lambda s: s.__setitem__("values", s["values"][:, :2]), r"shape \(2, 3\)"),
    (lambda s: s.__setitem__("index", s["index"].tolist()), "dense torch.Tensor"),
])
def test_load_refuses_states_no_topk_produces(edit, match):
    t = TopKImages(2, 3, (3, 3))
    with pytest.raises((ValueError, TypeError), match=match):
        t.load_state_dict(_forge(edit))
    assert t.index.tolist() == [[-1] * 3] * 2  # nothing changed


def test_load_refuses_an_edit_with_a_stale_digest():
    sd = _state_of()
    sd["minimum"][0] -= 1.0  # still below every kept map: consistent, so only the digest catches it
    with pytest.raises(ValueError, match="digest"):
        TopKImages(2, 3, (3, 3)).load_state_dict(sd)


def test_update_checks_its_arguments():
    t = TopKImages(2, 3, (3, 3))
    with pytest.raises(ValueError, match="acts must have shape"):
        t.update(torch.rand(1, 3, 3, 3), torch.arange(1))
    with pytest.raises(ValueError, match="image_index"):
        t.update(torch.rand(2, 2, 3, 3), torch.tensor([0, -1]))
