"""IoUTally: every backend against the plain PyTorch reference (reference/tally.py), a hand-computed
example, merge/split/state_dict laws, and bad input that must leave every count unchanged."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitscope
from conftest import device_of
from unitscope.reference.bilinear import bilinear_resize
from unitscope.reference.tally import tally_counts

KEYS = ("intersection", "activation", "label", "activation_total")
LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
UNIONS = ("category", "dataset", "mask")


def make_tally(backend, K, C, cat, NC, S, **kw):
    return unitscope.IoUTally(K, C, label_category=cat, num_categories=NC, out_size=S, backend=backend,
                              device=device_of(backend) if backend != "torch" else None, **kw)


def counts_of(t):
    return {k: getattr(t, k).cpu() for k in KEYS} | {"images": t.images}


def assert_counts_equal(got, want):
    for k in KEYS:
        assert torch.equal(got[k], want[k].cpu()), f"{k} differs:\n{got[k]}\nvs\n{want[k]}"
    assert int(got["images"]) == int(want["images"])


def on(x, device):
    return None if x is None else x.to(device)


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    B, K = draw(st.integers(0, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    Sh, Sw = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    C, NC = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    L = draw(st.sampled_from([None, 0, 1, 2, 3]))
    L2 = draw(st.sampled_from([None, 0, 1, 2]))
    act_dtype = draw(st.sampled_from(ACT_DTYPES))
    lab_dtype = draw(st.sampled_from(LABEL_DTYPES))
    kind = draw(st.sampled_from(["coarse", "smooth", "signed"]))
    # coarse values (multiples of 1/4) make ties between cells, resized values and thresholds common
    if kind == "coarse":
        A = torch.randint(0, 5, (B, K, h, w), generator=g).float() / 4
    elif kind == "smooth":
        A = torch.relu(torch.randn(B, K, h, w, generator=g))
    else:
        A = torch.randn(B, K, h, w, generator=g) * 3
    A = A.to(act_dtype)
    pix = None if L is None else torch.randint(0, C, (B, L, Sh, Sw), generator=g)
    if pix is not None and L > 1:  # plant repeats of one label in two maps
        pix[:, 1] = torch.where(torch.rand(B, Sh, Sw, generator=g) < 0.5, pix[:, 0], pix[:, 1])
    img = None if L2 is None else torch.randint(0, C, (B, L2), generator=g)
    pix = None if pix is None else pix.to(lab_dtype)
    img = None if img is None else img.to(lab_dtype)
    annotated = torch.rand(B, NC, generator=g) < 0.5 if draw(st.booleans()) else None
    cat = torch.randint(0, NC, (C,), generator=g)
    align = draw(st.booleans())
    thr_mode = draw(st.sampled_from(["on_values", "quantile", "zero", "below_all", "above_all", "near"]))
    up = bilinear_resize(A.float(), (Sh, Sw), align).reshape(B, K, Sh * Sw).transpose(0, 1).reshape(K, B * Sh * Sw)
    if thr_mode == "on_values" and up.numel() > 0:  # exactly on resized values
        idx = torch.randint(0, up.shape[1], (K,), generator=g)
        thr = up[torch.arange(K), idx].clone()
        thr[torch.isnan(thr)] = 0.0
    elif thr_mode == "quantile" and up.numel() > 0:
        thr = torch.quantile(A.float().transpose(0, 1).reshape(K, -1), 0.8, dim=1) if B > 0 else torch.zeros(K)
    elif thr_mode == "near" and up.numel() > 0:  # float64 thresholds a hair off resized values
        idx = torch.randint(0, up.shape[1], (K,), generator=g)
        v = up[torch.arange(K), idx].double()
        thr = v + torch.where(torch.rand(K, generator=g) < 0.5, -1.0, 1.0).double() * v.abs() * 1e-9
    elif thr_mode == "below_all":
        thr = torch.full((K,), -100.0)
    elif thr_mode == "above_all":
        thr = torch.full((K,), 1e9)
    else:
        thr = torch.zeros(K)
    return dict(A=A, thr=thr, pix=pix, img=img, annotated=annotated, cat=cat, C=C, NC=NC, S=(Sh, Sw),
                align=align, op=draw(st.sampled_from([">", ">="])), union=draw(st.sampled_from(UNIONS)))


def reference(p):
    return tally_counts(p["A"], p["thr"], p["pix"], p["img"], p["annotated"], num_labels=p["C"],
                        label_category=p["cat"], num_categories=p["NC"], out_size=p["S"],
                        align_corners=p["align"], threshold_op=p["op"], union=p["union"])


def run(backend, p, splits=None):
    dev = device_of(backend) if backend != "torch" else torch.device("cpu")
    t = make_tally(backend, p["A"].shape[1], p["C"], p["cat"], p["NC"], p["S"], align_corners=p["align"],
                   threshold_op=p["op"], union=p["union"])
    B = p["A"].shape[0]
    bounds = [0, B] if splits is None else [0, *splits, B]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sl = lambda x: None if x is None else x[lo:hi].to(dev)  # noqa: E731, B023 (used in this iteration)
        t.update(sl(p["A"]), p["thr"].to(dev), sl(p["pix"]), sl(p["img"]), sl(p["annotated"]))
    return t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(p=problems())
def test_every_backend_matches_reference(backend, p):
    want = reference(p)
    assert_counts_equal(counts_of(run(backend, p)), want)


@settings(max_examples=15, deadline=None)
@given(p=problems())
def test_torch_backend_is_the_reference(p):
    assert_counts_equal(counts_of(run("torch", p)), reference(p))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(p=problems(), data=st.data())
def test_batch_split_and_merge_equal_one_pass(backend, p, data):
    B = p["A"].shape[0]
    splits = sorted(data.draw(st.lists(st.integers(0, B), max_size=3)))
    whole = run(backend, p)
    assert_counts_equal(counts_of(run(backend, p, splits)), counts_of(whole))
    cut = splits[0] if splits else B // 2
    first = run(backend, {**p, **{k: (p[k][:cut] if p[k] is not None else None) for k in ("A", "pix", "img", "annotated")}})
    second = run(backend, {**p, **{k: (p[k][cut:] if p[k] is not None else None) for k in ("A", "pix", "img", "annotated")}})
    assert_counts_equal(counts_of(first.merge(second)), counts_of(whole))


def test_hand_computed_example(backend):
    # one unit, a 1x2 map [0, 1] resized to 1x3 with align_corners=True -> [0, 0.5, 1]
    dev = device_of(backend)
    A = torch.tensor([[[[0.0, 1.0]]]], device=dev)
    pix = torch.tensor([[[[1, 2, 2]], [[2, 0, 2]]]], dtype=torch.int16, device=dev)  # label 2 twice at pixel 2
    cat = torch.tensor([0, 0, 0, 1])  # labels 1, 2 -> category 0; label 3 -> category 1
    thr = torch.tensor([0.5], device=dev)

    t = make_tally(backend, 1, 4, cat, 2, (1, 3), align_corners=True)
    t.update(A, thr, pix)  # mask [F, F, T]: value 0.5 is not > 0.5
    assert t.intersection.cpu().tolist() == [[0, 0, 1, 0]]
    assert t.label.cpu().tolist() == [0, 1, 3, 0]
    assert t.activation.cpu().tolist() == [[1, 0]]  # category 1 not annotated in this image
    assert t.activation_total.cpu().tolist() == [1]
    iou = t.iou().cpu()
    assert iou[0].tolist() == pytest.approx([0.0, 0.0, 1 / 3, 0.0])

    t = make_tally(backend, 1, 4, cat, 2, (1, 3), align_corners=True, threshold_op=">=")
    t.update(A, thr, pix, image_labels=torch.tensor([[3, 3]], dtype=torch.int16, device=dev))  # mask [F, T, T]
    assert t.intersection.cpu().tolist() == [[0, 0, 2, 2]]  # the image label covers every masked pixel once
    assert t.label.cpu().tolist() == [0, 1, 3, 3]
    assert t.activation.cpu().tolist() == [[2, 2]]
    assert t.iou().cpu()[0].tolist() == pytest.approx([0.0, 0.0, 2 / 3, 2 / 3])

    t = make_tally(backend, 1, 4, cat, 2, (1, 3), align_corners=True, union="dataset")
    t.update(A, thr, pix, annotated=torch.tensor([[False, False]], device=dev))
    assert t.activation.cpu().tolist() == [[1, 1]]
    t = make_tally(backend, 1, 4, cat, 2, (1, 3), align_corners=True)
    t.update(A, thr, pix, annotated=torch.tensor([[False, True]], device=dev))
    assert t.activation.cpu().tolist() == [[0, 1]]
    assert t.images == 1


@pytest.mark.parametrize("special", ["nan", "inf", "-inf", "huge"])
def test_nonfinite_and_huge_activations(backend, special):
    g = torch.Generator().manual_seed(3)
    A = torch.relu(torch.randn(2, 4, 5, 3, generator=g))
    value = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 3.3e38}[special]
    A[0, 1, 2, 1] = value
    A[1, 2, 0, :] = value
    A[1, 3] = value
    pix = torch.randint(0, 6, (2, 2, 9, 7), generator=g)
    for thr in (torch.tensor([0.5, float("inf"), float("-inf"), 3.0e38]), torch.zeros(4)):
        for op in (">", ">="):
            p = dict(A=A, thr=thr, pix=pix, img=None, annotated=None, cat=torch.tensor([0, 0, 1, 1, 2, 2]), C=6,
                     NC=3, S=(9, 7), align=False, op=op, union="category")
            assert_counts_equal(counts_of(run(backend, p)), reference(p))


@pytest.mark.parametrize("op", [">", ">="])
@pytest.mark.parametrize("align", [False, True])
def test_thresholds_at_the_largest_resized_value(backend, op, align):
    """Thresholds on (and one float32 step under) each unit's largest resized value: the pixels at
    the maximum, found only by exact evaluation next to the pruning bound, must match."""
    g = torch.Generator().manual_seed(17)
    A = torch.relu(torch.randn(3, 6, 5, 4, generator=g))
    A[0, 0] = 0.0  # an all-zero map
    A[1, 1] = torch.randn(5, 4, generator=g) - 4.0  # an all-negative map
    S = (13, 9)
    up = bilinear_resize(A, S, align).transpose(0, 1).reshape(6, -1)
    top = up.max(dim=1).values
    pix = torch.randint(0, 7, (3, 2, *S), generator=g)
    below = torch.nextafter(top, torch.full_like(top, -float("inf")))
    for thr in (top, below):
        p = dict(A=A, thr=thr, pix=pix, img=None, annotated=None, cat=torch.arange(7) % 3, C=7, NC=3, S=S,
                 align=align, op=op, union="category")
        got = counts_of(run(backend, p))
        assert_counts_equal(got, reference(p))
        if op == ">=" or thr is below:  # the maxima pass
            assert bool((got["activation_total"] > 0).all())


def test_non_contiguous_and_numpy_inputs(backend):
    g = torch.Generator().manual_seed(5)
    A = torch.relu(torch.randn(3, 4, 6, 5, generator=g)).transpose(2, 3)  # (3, 4, 5, 6), not contiguous
    pix = torch.randint(0, 9, (3, 10, 11, 2), generator=g).permute(0, 3, 1, 2)
    thr = torch.full((4,), 0.7)
    p = dict(A=A, thr=thr, pix=pix, img=None, annotated=None, cat=torch.arange(9) % 2, C=9, NC=2, S=(10, 11),
             align=True, op=">", union="category")
    assert_counts_equal(counts_of(run(backend, p)), reference(p))
    if backend != "cuda":
        t = make_tally(backend, 4, 9, np.arange(9) % 2, 2, (10, 11), align_corners=True)
        t.update(A.numpy(), thr.numpy(), pix.numpy())
        assert_counts_equal(counts_of(t), reference(p))


def test_state_dict_round_trip_and_config_checks(backend):
    g = torch.Generator().manual_seed(7)
    dev = device_of(backend)
    cat = torch.tensor([0, 0, 1, 1, 2])
    t = make_tally(backend, 3, 5, cat, 3, 8)
    t.update(torch.rand(2, 3, 4, 4, generator=g).to(dev), torch.full((3,), 0.5, device=dev),
             torch.randint(0, 5, (2, 2, 8, 8), generator=g).to(dev))
    sd = t.state_dict()
    assert all(isinstance(sd[k], torch.Tensor) for k in (*KEYS, "images"))
    fresh = make_tally(backend, 3, 5, cat, 3, 8)
    fresh.load_state_dict(sd)
    assert_counts_equal(counts_of(fresh), counts_of(t))
    assert torch.equal(fresh.iou(), t.iou())
    sd["intersection"] += 1  # the state is a copy
    assert not torch.equal(t.intersection, sd["intersection"])
    for other in (make_tally(backend, 3, 5, cat, 3, 8, threshold_op=">="),
                  make_tally(backend, 3, 5, cat, 3, 8, union="dataset"),
                  make_tally(backend, 3, 5, torch.tensor([0, 1, 1, 1, 2]), 3, 8),
                  make_tally(backend, 3, 5, cat, 3, (8, 9)),
                  make_tally(backend, 4, 5, torch.tensor([0, 0, 1, 1, 2]), 3, 8)):
        before = counts_of(t)
        with pytest.raises(ValueError, match="merge"):
            t.merge(other)
        with pytest.raises(ValueError, match="load_state_dict"):
            other.load_state_dict(sd)
        assert_counts_equal(counts_of(t), before)
    with pytest.raises(TypeError, match="IoUTally"):
        t.merge(sd)


def test_iou_zero_denominator_and_formula():
    t = unitscope.IoUTally(2, 3, label_category=torch.tensor([0, 0, 1]), num_categories=2, out_size=4, backend="torch")
    t.intersection = torch.tensor([[0, 2, 0], [0, 0, 0]])
    t.activation = torch.tensor([[5, 0], [0, 0]])
    t.label = torch.tensor([0, 3, 0])
    iou = t.iou()
    assert iou.dtype == torch.float64
    assert iou.tolist() == [[0.0, 2 / 6, 0.0], [0.0, 0.0, 0.0]]


def bad_batches():
    """(name, kwargs changes, error type, message fragment) for a (B=2, K=3, 4, 4) -> 8x8 batch, C=5."""
    return [
        ("K", dict(activations=torch.rand(2, 4, 4, 4)), ValueError, "activations"),
        ("act ndim", dict(activations=torch.rand(3, 4, 4)), ValueError, "activations"),
        ("act dtype", dict(activations=torch.ones(2, 3, 4, 4, dtype=torch.int32)), TypeError, "activations"),
        ("act device", dict(activations=torch.rand(2, 3, 4, 4, device="meta")), ValueError, "activations"),
        ("thr shape", dict(thresholds=torch.zeros(4)), ValueError, "thresholds"),
        ("thr nan", dict(thresholds=torch.tensor([0.1, float("nan"), 0.2])), ValueError, "thresholds"),
        ("thr dtype", dict(thresholds=torch.zeros(3, dtype=torch.int64)), TypeError, "thresholds"),
        ("label high", dict(pixel_labels=torch.full((2, 2, 8, 8), 5)), ValueError, "pixel_labels"),
        ("label negative", dict(pixel_labels=-torch.ones(2, 2, 8, 8, dtype=torch.int16)), ValueError, "pixel_labels"),
        ("label size", dict(pixel_labels=torch.zeros(2, 2, 8, 7, dtype=torch.int64)), ValueError, "pixel_labels"),
        ("label B", dict(pixel_labels=torch.zeros(3, 2, 8, 8, dtype=torch.int64)), ValueError, "pixel_labels"),
        ("label dtype", dict(pixel_labels=torch.zeros(2, 2, 8, 8)), TypeError, "pixel_labels"),
        ("image label high", dict(image_labels=torch.tensor([[1], [7]])), ValueError, "image_labels"),
        ("image label shape", dict(image_labels=torch.tensor([1, 2])), ValueError, "image_labels"),
        ("annotated shape", dict(annotated=torch.ones(2, 2, dtype=torch.bool)), ValueError, "annotated"),
        ("annotated dtype", dict(annotated=torch.ones(2, 3)), TypeError, "annotated"),
        ("list", dict(activations=[[1.0]]), TypeError, "activations"),
    ]


@pytest.mark.parametrize("case", bad_batches(), ids=lambda c: c[0])
def test_bad_batch_is_rejected_and_counts_nothing(backend, case):
    _, change, err, fragment = case
    dev = device_of(backend)
    g = torch.Generator().manual_seed(11)
    t = make_tally(backend, 3, 5, torch.tensor([0, 0, 1, 1, 2]), 3, 8)
    good = dict(activations=torch.rand(2, 3, 4, 4, generator=g), thresholds=torch.full((3,), 0.3),
                pixel_labels=torch.randint(0, 5, (2, 2, 8, 8), generator=g), image_labels=torch.tensor([[1], [4]]))
    t.update(**{k: v.to(dev) for k, v in good.items()})
    before = counts_of(t)
    bad = {**good, **change}
    bad = {k: (v.to(dev) if isinstance(v, torch.Tensor) and v.device.type != "meta" else v) for k, v in bad.items()}
    with pytest.raises(err, match=fragment):
        t.update(**bad)
    assert_counts_equal(counts_of(t), before)


def test_constructor_checks():
    cat = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="label_category"):
        unitscope.IoUTally(2, 3, label_category=torch.tensor([0, 0, 2]), num_categories=2, out_size=4)
    with pytest.raises(ValueError, match="label_category"):
        unitscope.IoUTally(2, 4, label_category=cat, num_categories=2, out_size=4)
    with pytest.raises(TypeError, match="label_category"):
        unitscope.IoUTally(2, 3, label_category=torch.tensor([0.0, 0, 1]), num_categories=2, out_size=4)
    with pytest.raises(ValueError, match="threshold_op"):
        unitscope.IoUTally(2, 3, label_category=cat, num_categories=2, out_size=4, threshold_op="<")
    with pytest.raises(ValueError, match="union"):
        unitscope.IoUTally(2, 3, label_category=cat, num_categories=2, out_size=4, union="image")
    with pytest.raises(ValueError, match="num_units"):
        unitscope.IoUTally(0, 3, label_category=cat, num_categories=2, out_size=4)
    with pytest.raises(ValueError, match="out_size"):
        unitscope.IoUTally(2, 3, label_category=cat, num_categories=2, out_size=(0, 4))


def test_compiled_kernel_checks_labels_itself():
    """The C++ entry point rejects out-of-range labels on its own and leaves the counters untouched."""
    if "cpp" not in unitscope.backends():
        pytest.skip("compiled module not built")
    from unitscope import _backend
    from unitscope._tensors import ptr

    C_mod = _backend.compiled_module()
    A = torch.ones(1, 1, 2, 2)
    thr = torch.zeros(1)
    pix = torch.tensor([[[[1, 2], [9, 0]]]], dtype=torch.int32)
    cat = torch.zeros(3, dtype=torch.int64)
    inter, act, lab, tot = torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 1, dtype=torch.int64), \
        torch.zeros(3, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="pixel_labels"):
        C_mod.tally_cpu(ptr(A), ptr(thr), ptr(pix), 0, 0, ptr(cat), ptr(inter), ptr(act), ptr(lab), ptr(tot),
                        0, 2, 0, 1, 1, 2, 2, 2, 2, 1, 0, 3, 1, False, False, 0, 2)
    assert inter.sum() == 0 and act.sum() == 0 and lab.sum() == 0 and tot.sum() == 0


@pytest.mark.cuda
def test_cuda_matches_cpp_on_a_dissection_sized_batch():
    g = torch.Generator().manual_seed(13)
    K, C, NC = 64, 300, 5
    A = torch.relu(torch.randn(8, K, 7, 7, generator=g))
    thr = torch.quantile(A.transpose(0, 1).reshape(K, -1), 0.9, dim=1)
    pix = torch.randint(0, C, (8, 3, 112, 112), generator=g, dtype=torch.int64).to(torch.int16)
    img = torch.randint(0, C, (8, 2), generator=g)
    cat = torch.randint(0, NC, (C,), generator=g)
    p = dict(A=A, thr=thr, pix=pix, img=img, annotated=None, cat=cat, C=C, NC=NC, S=(112, 112), align=False,
             op=">", union="category")
    assert_counts_equal(counts_of(run("cuda", p)), reference(p))


def _tally_data():
    g = torch.Generator().manual_seed(23)
    A = torch.relu(torch.randn(6, 5, 4, 4, generator=g))
    pix = torch.randint(0, 9, (6, 2, 10, 10), generator=g)
    img = torch.randint(0, 9, (6, 1), generator=g)
    return A, torch.full((5,), 0.6), pix, img


def _new_tally():
    return unitscope.IoUTally(5, 9, label_category=torch.arange(9) % 3, num_categories=3, out_size=10)


def _gloo_worker(rank, world, port, out_dir):
    import os
    import pickle

    import torch.distributed as dist

    from unitscope.distributed import all_merge

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        A, thr, pix, img = _tally_data()
        t = _new_tally().update(A[rank::world], thr, pix[rank::world], img[rank::world])
        all_merge(t)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(t.state_dict(), f)
    finally:
        dist.destroy_process_group()


def test_all_merge_across_two_gloo_processes(tmp_path):
    import pickle
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    A, thr, pix, img = _tally_data()
    want = counts_of(_new_tally().update(A, thr, pix, img))
    for r in range(2):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            got = _new_tally()
            got.load_state_dict(pickle.load(f))
        assert_counts_equal(counts_of(got), want)
