"""union='mask' (NetDissect-Lite's per-category union) against a NumPy re-creation of NetDissect-Lite's
loop, on planted and drawn cases; and the CUDA tally's bitset algorithm run on the host
(unitscope._C.tally_bits_host, csrc/cpu/tally_bits_host.cpp) against the reference, all unions."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from test_tally import UNIONS, assert_counts_equal, problems, reference

import unitscope
from unitscope import _backend
from unitscope import _tensors as T
from unitscope.kernels import _state
from unitscope.kernels.tally import LABEL_CODE, UNION_MODES, check_label_category
from unitscope.reference.bilinear import bilinear_resize

HAVE_CPP = "cpp" in unitscope.backends()


def netdissect_lite_union(p) -> np.ndarray:
    """activation (K, NC) as NetDissect-Lite's tally accumulates tally_units_cat: per image and unit,
    the mask's pixels (resized as the reference does; that part is not under test), a bincount of
    every map's labels under the mask with label 0 dropped, its categories through a label x
    category indicator, plus each nonzero image label's category; the mask's size is added to every
    category whose indicator sum is > 0."""
    A, thr = p["A"], p["thr"]
    B, K = A.shape[:2]
    Sh, Sw = p["S"]
    C, NC = p["C"], p["NC"]
    labelcat = np.zeros((C, NC), np.int64)
    labelcat[np.arange(1, C), p["cat"].numpy()[1:]] = 1
    pix = np.zeros((B, 0, Sh, Sw), np.int64) if p["pix"] is None else p["pix"].to(torch.int64).numpy()
    img = np.zeros((B, 0), np.int64) if p["img"] is None else p["img"].to(torch.int64).numpy()
    out = np.zeros((K, NC), np.int64)
    for b in range(B):
        up = bilinear_resize(A[b].float(), (Sh, Sw), p["align"]).double().numpy()
        for unit in range(K):
            t = float(thr[unit])
            idx = np.argwhere(up[unit] > t if p["op"] == ">" else up[unit] >= t)
            if len(idx) == 0:
                continue
            bt = np.bincount(pix[b][:, idx[:, 0], idx[:, 1]].ravel(), minlength=C)
            bt[0] = 0
            tally_cat = bt @ labelcat
            for scalar in img[b]:
                if scalar != 0:
                    tally_cat = tally_cat + labelcat[scalar]
            out[unit] += len(idx) * (tally_cat > 0)
    return out


def planted():
    # one unit, map [[0, 1]] resized to 1 x 4 (align_corners=True): [0, 1/3, 2/3, 1] > 0.5 -> pixels 2, 3.
    # Labels: 1, 2 object (category 0); 3 part (category 1); 4 scene (category 2), an image label.
    A = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 0.0]]]])  # image 1's mask: pixels 0, 1
    pix = torch.tensor([[[[1, 1, 2, 0]], [[3, 0, 0, 0]]],     # image 0: the part (3) lies outside the mask
                        [[[0, 1, 0, 0]], [[0, 3, 0, 3]]]])    # image 1: object 1 and part 3 at pixel 1
    img = torch.tensor([[0], [4]])
    return dict(A=A, thr=torch.tensor([0.5]), pix=pix, img=img, annotated=None, cat=torch.tensor([0, 0, 0, 1, 2]),
                C=5, NC=3, S=(1, 4), align=True, op=">", union="mask")


def test_planted_mask_union():
    p = planted()
    want = torch.tensor([[2 + 2, 2, 2]])  # object: both images; part: image 1 only; scene: image 1 only
    assert torch.equal(reference(p)["activation"], want)
    assert torch.equal(torch.from_numpy(netdissect_lite_union(p)), want)
    # the original union counts image 0's mask for parts too (a part is annotated in image 0)
    assert torch.equal(reference({**p, "union": "category"})["activation"], torch.tensor([[4, 4, 2]]))
    assert torch.equal(reference({**p, "union": "dataset"})["activation"], torch.tensor([[4, 4, 4]]))


@settings(max_examples=80, deadline=None)
@given(p=problems())
def test_reference_mask_union_is_netdissect_lites(p):
    p = {**p, "union": "mask"}
    got = reference(p)
    assert torch.equal(got["activation"], torch.from_numpy(netdissect_lite_union(p)))
    # the other counts do not depend on the union
    assert_counts_equal(got, reference({**p, "union": "category"}) | {"activation": got["activation"]})


@settings(max_examples=40, deadline=None)
@given(p=problems())
def test_mask_union_bounds(p):
    # dataset >= category and dataset >= mask; with no annotated override, category >= mask
    # (a category inside a mask is present in the image)
    by = {u: reference({**p, "union": u})["activation"] for u in UNIONS}
    assert bool((by["mask"] <= by["dataset"]).all()) and bool((by["category"] <= by["dataset"]).all())
    if p["annotated"] is None:
        assert bool((by["mask"] <= by["category"]).all())


def bits_host(p, mode=None):
    """The counts of _C.tally_bits_host (the CUDA algorithm, serially on the host) for problem p
    (union_mode `mode` instead of p's union when given)."""
    A = p["A"].contiguous()
    B, K, h, w = A.shape
    Sh, Sw = p["S"]
    pix = None if p["pix"] is None or p["pix"].shape[1] == 0 else p["pix"].contiguous()
    img = None if p["img"] is None or p["img"].shape[1] == 0 else p["img"].contiguous()
    ann = None if p["annotated"] is None else p["annotated"].contiguous()
    ge = p["op"] == ">="
    thr32 = unitscope.kernels.tally.float32_thresholds(p["thr"], ge)
    cat = p["cat"].to(torch.int64).contiguous()
    C, NC = p["C"], p["NC"]
    z = lambda *s: torch.zeros(s, dtype=torch.int64)  # noqa: E731
    out = {"intersection": z(K, C), "activation": z(K, NC), "label": z(C), "activation_total": z(K)}
    if B > 0:
        _backend.compiled_module().tally_bits_host(
            T.ptr(A), T.ptr(thr32), T.ptr(pix), T.ptr(img), T.ptr(ann), T.ptr(cat), T.ptr(out["intersection"]),
            T.ptr(out["activation"]), T.ptr(out["label"]), T.ptr(out["activation_total"]), T.DTYPE_CODE[A.dtype],
            LABEL_CODE[pix.dtype] if pix is not None else 0, LABEL_CODE[img.dtype] if img is not None else 0,
            B, K, h, w, Sh, Sw, 0 if pix is None else pix.shape[1], 0 if img is None else img.shape[1], C, NC,
            p["align"], ge, UNION_MODES[p["union"]] if mode is None else mode)
    return out | {"images": B}


@pytest.mark.skipif(not HAVE_CPP, reason="the compiled module is not built")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems())
def test_cuda_algorithm_on_the_host_matches_reference(p):
    assert_counts_equal(bits_host(p), reference(p))


@pytest.mark.skipif(not HAVE_CPP, reason="the compiled module is not built")
@pytest.mark.parametrize("union", UNIONS)
def test_cuda_algorithm_on_the_host_planted(union):
    p = {**planted(), "union": union}
    assert_counts_equal(bits_host(p), reference(p))


@pytest.mark.skipif(not HAVE_CPP, reason="the compiled module is not built")
def test_bad_union_mode_is_refused_by_the_operator_and_the_binding():
    t = unitscope.IoUTally(1, 2, label_category=torch.zeros(2, dtype=torch.int64), num_categories=1, out_size=1, backend="cpp")
    args = (torch.ones(1, 1, 1, 1), torch.zeros(1), None, None, None, t.label_category, t.intersection, t.activation,
            t.label, t.activation_total, 1, 1, False, False)
    with pytest.raises(ValueError, match=r"union_mode must be 0 \(category\), 1 \(dataset\) or 2 \(mask\), got 3"):
        torch.ops.unitscope.tally_(*args, 3, "cpp", None)
    p = {**planted(), "union": "mask"}
    with pytest.raises(ValueError, match="union_mode must be 0 .category., 1 .dataset. or 2 .mask., got -1"):
        bits_host(p, mode=-1)
    assert int(t.activation_total.sum()) == 0


def test_mask_state_dict_round_trip_and_invariant():
    p = planted()
    t = unitscope.IoUTally(1, 5, label_category=p["cat"], num_categories=3, out_size=(1, 4), align_corners=True,
                           union="mask", backend="torch")
    t.update(p["A"], p["thr"], p["pix"], p["img"])
    assert torch.equal(t.activation, torch.tensor([[4, 2, 2]]))
    sd = t.state_dict()
    fresh = unitscope.IoUTally(1, 5, label_category=p["cat"], num_categories=3, out_size=(1, 4), align_corners=True,
                               union="mask", backend="torch")
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.activation, t.activation) and fresh.config()["union"] == "mask"
    # a part count (label 3) above the mask pixels counted for parts cannot come from a tally
    bad = dict(sd, activation=torch.tensor([[4, 0, 2]]))
    with pytest.raises(ValueError, match=r"intersection.*<= activation\[k, category of c\] \(union='mask'\)"):
        fresh.load_state_dict(_state.with_digest(bad))
    with pytest.raises(ValueError, match="union is 'mask', this tally has 'category'"):
        unitscope.IoUTally(1, 5, label_category=p["cat"], num_categories=3, out_size=(1, 4),
                           align_corners=True).load_state_dict(sd)


def test_label_category_checked_before_the_cuda_kernel():
    check_label_category(torch.tensor([-7, 0, 1]), 2)  # entry 0 is unused
    with pytest.raises(ValueError, match=r"label_category must hold categories in \[0, num_categories\) = "
                                         r"\[0, 2\), got 3 for label 2"):
        check_label_category(torch.tensor([0, 1, 3, -1]), 2)
