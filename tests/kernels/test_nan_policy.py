"""The NaN policy (unitscope.kernels' docstring, issue 9.3): a table of NaN/inf cases run through every
backend and compared with the reference: bit for bit for quantiles and tally counts, the same NaN
pixels (and values to float32 summation order) for Grad-CAM."""
import math

import pytest
import torch

import unitscope
from unitscope.kernels import gradcam
from unitscope.reference.gradcam import gradcam as reference_gradcam
from unitscope.reference.quantile import exact_quantile
from unitscope.reference.tally import tally_counts

BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba")] + ["torch"]
NAN, INF = math.nan, math.inf


def same_bits(a, b):
    return a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b)) and \
        torch.equal(torch.nan_to_num(a, 0.0, INF, -INF), torch.nan_to_num(b, 0.0, INF, -INF))


# ------------------------------------------------------------------ Grad-CAM
def _cam_inputs(case):
    """(A (1, 3, 3, 3), W (1, 3)) with one special value planted per case."""
    g = torch.Generator().manual_seed(0)
    A = torch.rand(1, 3, 3, 3, generator=g) + 0.5
    W = torch.tensor([[0.7, 0.4, 0.3]])
    if case == "nan pixel":
        A[0, 1, 1, 1] = NAN
    elif case == "nan pixel, weight 0":
        A[0, 2, 0, 2] = NAN
        W[0, 2] = 0.0
    elif case == "inf pixel, weight 0":
        A[0, 2, 2, 0] = INF
        W[0, 2] = 0.0
    elif case == "inf pixel":
        A[0, 0, 0, 0] = INF
    elif case == "-inf pixel":
        A[0, 0, 1, 2] = -INF
    elif case == "inf and -inf":
        A[0, 0, 1, 1], A[0, 1, 1, 1] = INF, -INF
    elif case == "nan weight":
        W[0, 1] = NAN
    elif case == "all nan":
        A[:] = NAN
    elif case == "nan channel, weight 0":
        A[0, 1] = NAN
        W[0, 1] = 0.0
    return A, W


CAM_CASES = ["nan pixel", "nan pixel, weight 0", "inf pixel, weight 0", "inf pixel", "-inf pixel", "inf and -inf",
             "nan weight", "all nan", "nan channel, weight 0"]


@pytest.mark.parametrize("case", CAM_CASES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("out_size", [None, (7, 5)])
def test_gradcam_nan_table(case, normalize, relu, out_size):
    A, W = _cam_inputs(case)
    kw = dict(weights=W, relu=relu, out_size=out_size, normalize=normalize)
    want = reference_gradcam(A, **kw)
    for be in BACKENDS:
        got = gradcam(A, backend=be, **kw)
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{be}: NaN pixels differ from the reference"
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5, equal_nan=True, msg=f"{be} differs")


def test_gradcam_policy_by_hand():
    A, W = _cam_inputs("nan channel, weight 0")  # 0 * NaN = NaN: the whole map is NaN
    assert bool(torch.isnan(reference_gradcam(A, weights=W)).all())
    A, W = _cam_inputs("nan pixel")  # one NaN pixel: normalize ignores it, keeps it NaN, maps the rest to [0, 1]
    out = reference_gradcam(A, weights=W, normalize=True)
    nan = torch.isnan(out)
    assert nan.sum() == 1 and bool(nan[0, 1, 1])
    assert float(out[~nan].min()) == 0.0 and float(out[~nan].max()) == 1.0
    A, W = _cam_inputs("inf pixel")  # an infinite range: the finite pixels become 0, as for a constant map
    out = reference_gradcam(A, weights=W, normalize=True)
    assert bool((out[~torch.isnan(out)] == 0).all())
    A, W = _cam_inputs("all nan")
    assert bool(torch.isnan(reference_gradcam(A, weights=W, normalize=True)).all())


@pytest.mark.parametrize("case", ["nan pixel", "nan channel"])
def test_gradcam_nan_in_gradients(case):
    A = torch.rand(2, 3, 4, 4) + 0.5
    G = torch.randn(2, 3, 4, 4)
    if case == "nan pixel":
        G[0, 1, 2, 2] = NAN
    else:
        G[1, 0] = NAN
    want = reference_gradcam(A, G, out_size=(9, 9), normalize=True)
    for be in BACKENDS:
        got = gradcam(A, G, out_size=9, normalize=True, backend=be)
        assert torch.equal(torch.isnan(got), torch.isnan(want)), be
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5, equal_nan=True)


# ------------------------------------------------------------------ quantiles
QUANTILE_ROWS = [[NAN], [NAN, 1.0, NAN], [INF, NAN, -INF], [NAN, NAN, 0.0, -0.0], [INF] * 3 + [NAN],
                 [1.0, 2.0, 3.0, NAN, INF, -INF, 4.0], [-1e-45, NAN, 1e-45], [3.4e38, NAN, -3.4e38, 5.0]]


@pytest.mark.parametrize("row", QUANTILE_ROWS)
def test_quantiles_ignore_and_count_nan(row):
    x = torch.tensor(row)[:, None].repeat(1, 2)  # (N, K = 2)
    x[0, 1] = 2.0  # channel 1 differs
    nans = torch.isnan(x).sum(0)
    sketches = []
    for be in BACKENDS:
        for q in (0.0, 0.5, 0.9, 1.0):
            e = unitscope.ExactQuantile(2, q, len(row), backend=be).update(x)
            assert same_bits(e.result(), exact_quantile(x, q, 1)), (be, q)
            assert torch.equal(e.nan_count, nans)
        s = unitscope.QuantileSketch(2, backend=be).update(x)
        assert torch.equal(s.nan_count, nans) and torch.equal(s.count, len(row) - nans)
        sketches.append(s.state_dict())
    for sd in sketches[1:]:  # the sketch's state is bitwise the same on every backend
        assert all(torch.equal(sd[k], sketches[0][k]) for k in sd if isinstance(sd[k], torch.Tensor))


# ------------------------------------------------------------------ tally
TALLY_CASES = ["nan cell", "nan row", "all nan", "inf cell", "-inf cell", "inf and nan", "threshold inf"]


@pytest.mark.parametrize("case", TALLY_CASES)
@pytest.mark.parametrize("op", [">", ">="])
@pytest.mark.parametrize("align", [False, True])
def test_tally_nan_table(case, op, align):
    g = torch.Generator().manual_seed(5)
    K, C, NC, S = 3, 5, 2, (7, 6)
    A = torch.randn(2, K, 3, 4, generator=g)
    thr = torch.tensor([0.0, -0.3, 0.4])
    if case == "nan cell":
        A[0, 0, 1, 1] = NAN
    elif case == "nan row":
        A[1, 1, 2] = NAN
    elif case == "all nan":
        A[0, 2] = NAN
    elif case == "inf cell":
        A[0, 0, 0, 3] = INF
    elif case == "-inf cell":
        A[1, 0, 2, 0] = -INF
    elif case == "inf and nan":
        A[0, 1, 0, 0], A[0, 1, 2, 3], A[1, 1, 1, 1] = INF, NAN, -INF
    else:
        A[0, 0, 1, 2] = INF
        thr[0] = INF
    cat = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.randint(0, C, (2, 2, *S), generator=g).to(torch.int16)
    want = tally_counts(A, thr, labels, num_labels=C, label_category=cat, num_categories=NC, out_size=S,
                        align_corners=align, threshold_op=op)
    for be in BACKENDS:
        t = unitscope.IoUTally(K, C, label_category=cat, num_categories=NC, out_size=S, align_corners=align,
                               threshold_op=op, backend=be).update(A, thr, labels)
        for k in ("intersection", "activation", "label", "activation_total"):
            assert torch.equal(getattr(t, k), want[k]), (be, k)
    if case == "all nan":  # a NaN never passes: the all-NaN map of unit 2 in image 0 adds nothing
        only1 = tally_counts(A[1:], thr, labels[1:], num_labels=C, label_category=cat, num_categories=NC,
                             out_size=S, align_corners=align, threshold_op=op)
        assert torch.equal(want["activation_total"][2], only1["activation_total"][2])


def test_tally_refuses_nan_thresholds():
    t = unitscope.IoUTally(2, 3, label_category=torch.tensor([0, 0, 0]), num_categories=1, out_size=4)
    with pytest.raises(ValueError, match="thresholds must not be NaN"):
        t.update(torch.randn(1, 2, 2, 2), torch.tensor([0.0, NAN]))
