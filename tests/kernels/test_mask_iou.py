"""unitscope.kernels.mask_iou, the generic segmentation IoU (issue 23): class 0 is a class, ignore_index,
scalar or per-class thresholds, (B, S, S) labels; equal to a plain PyTorch computation on drawn cases
(every backend) and to torchmetrics' JaccardIndex on hard masks."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscope
from unitscope.kernels import mask_iou
from unitscope.reference.bilinear import bilinear_resize

BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba", "torch")]


def plain_iou(scores, labels, thresholds, ignore_index, ge, align_corners):
    """Per class, with masks made one at a time: (intersection, union) int64 (K,)."""
    K = scores.shape[1]
    up = bilinear_resize(scores.float(), tuple(labels.shape[1:]), align_corners).double()
    thr = torch.as_tensor(thresholds, dtype=torch.float64).expand(K)
    keep = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    inter, union = [], []
    for k in range(K):
        mask = (up[:, k] >= thr[k] if ge else up[:, k] > thr[k]) & keep
        lab = (labels == k) & keep
        inter.append(int((mask & lab).sum()))
        union.append(int((mask | lab).sum()))
    return torch.tensor(inter), torch.tensor(union)


@st.composite
def cases(draw):
    B, K = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    S = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    scores = torch.randn(B, K, h, w, generator=g).to(dtype)
    ignore = draw(st.sampled_from([None, 255, -1, K, 0]))  # 0: a class left out
    labels = torch.randint(0, K, (B, *S), generator=g)
    if ignore is not None:
        labels[torch.rand(labels.shape, generator=g) < 0.2] = ignore
    scalar = draw(st.booleans())
    thresholds = (draw(st.floats(-1.5, 1.5)) if scalar
                  else torch.randn(K, generator=g, dtype=torch.float64))
    if draw(st.booleans()):  # thresholds on values the maps take: ties decide
        thresholds = float(scores.flatten()[0]) if scalar else scores[0, :, 0, 0].double()
    ldtype = torch.int64 if ignore == -1 else torch.uint8
    return scores, labels.to(ldtype), thresholds, ignore, \
        draw(st.booleans()), draw(st.booleans())


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_equals_plain_pytorch(backend, case):
    scores, labels, thresholds, ignore, ge, align_corners = case
    got = mask_iou(scores, labels, thresholds, ignore_index=ignore, threshold_op=">=" if ge else ">",
                   align_corners=align_corners, backend=backend)
    inter, union = plain_iou(scores, labels.long(), thresholds, ignore, ge, align_corners)
    assert torch.equal(got.intersection, inter) and torch.equal(got.union, union)
    want = inter.double() / union.double()
    assert torch.equal(torch.isnan(got.iou), union == 0)
    assert torch.equal(got.iou[union > 0], want[union > 0])


@settings(max_examples=40, deadline=None)
@given(K=st.integers(2, 6), S=st.integers(1, 10), seed=st.integers(0, 2 ** 16), ignore=st.sampled_from([None, 255]))
def test_equals_torchmetrics_jaccard_on_hard_masks(K, S, seed, ignore):
    tm = pytest.importorskip("torchmetrics.classification")
    g = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, K, (2, S, S), generator=g)
    target = torch.randint(0, K, (2, S, S), generator=g)
    if ignore is not None:
        target[torch.rand(target.shape, generator=g) < 0.3] = ignore
    hard = torch.nn.functional.one_hot(pred, K).permute(0, 3, 1, 2).float()  # (B, K, S, S) 0/1 masks
    got = mask_iou(hard, target, 0.5, ignore_index=ignore)
    metric = tm.MulticlassJaccardIndex(num_classes=K, average="none", ignore_index=ignore)
    want = metric(pred, target).double()
    present = got.union > 0  # torchmetrics gives 0 to a class in neither mask nor labels; we give NaN
    torch.testing.assert_close(got.iou[present], want[present], rtol=1e-6, atol=1e-7)


def test_class_zero_counts_and_batches_add():
    scores = torch.zeros(1, 2, 2, 2)
    scores[0, 0] = 1.0  # class 0 everywhere
    labels = torch.tensor([[[0, 0], [1, 0]]])
    r = mask_iou(scores, labels, 0.5)
    assert r.intersection.tolist() == [3, 0] and r.union.tolist() == [4, 1]
    assert r.iou[0] == 0.75 and r.iou[1] == 0.0


@pytest.mark.parametrize("bad, kw, match", [
    (lambda s, lab: (s, lab.clone().fill_(2)), {}, r"labels must hold classes in \[0, K\) = \[0, 2\), got 2"),
    (lambda s, lab: (s, lab.clone().fill_(7)), {"ignore_index": 255}, "or ignore_index = 255, got 7"),
    (lambda s, lab: (s, lab[:, None]), {}, r"labels must have 3 dimensions"),
    (lambda s, lab: (s, lab.float()), {}, "labels must be an integer tensor"),
    (lambda s, lab: (s[:1], lab), {}, "labels must have B = 1 rows"),
    (lambda s, lab: (s, lab), {"thresholds": torch.zeros(3)}, r"thresholds must have shape \(K,\)"),
    (lambda s, lab: (s, lab), {"thresholds": float("nan")}, "thresholds must not be NaN"),
    (lambda s, lab: (s, lab), {"thresholds": "0.5"}, "thresholds must be a float"),
    (lambda s, lab: (s, lab), {"ignore_index": 1.5}, "ignore_index must be an int"),
    (lambda s, lab: (s, lab), {"threshold_op": "<"}, "threshold_op must be"),
])
def test_bad_arguments(bad, kw, match):
    scores, labels = torch.zeros(2, 2, 3, 3), torch.zeros(2, 4, 4, dtype=torch.int64)
    s, lab = bad(scores, labels)
    thr = kw.pop("thresholds", 0.5)
    with pytest.raises((ValueError, TypeError), match=match):
        mask_iou(s, lab, thr, **kw)
