"""The cpp tally called through its binding (unitscope._C.tally_cpu): union mode 2 ("mask",
NetDissect-Lite's: a unit's pixels count toward the categories met inside its mask) against a NumPy
re-creation of NetDissect-Lite's loop, a planted example of the three union modes, and the copy built
for any x86-64 CPU (UNITSCOPE_TALLY_ISA=generic) against the default one."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unitscope
from unitscope._tensors import DTYPE_CODE, ptr
from unitscope.kernels.tally import LABEL_CODE
from unitscope.reference.bilinear import bilinear_resize
from unitscope.reference.tally import tally_counts

pytestmark = pytest.mark.skipif("cpp" not in unitscope.backends(), reason="compiled module not built")


def cpp_tally(A, thr, pix, img, cat, NC, S, *, union_mode, ge=False, align=False, annotated=None, threads=1):
    """Counts of one batch from the binding: dict of int64 tensors as in reference.tally_counts."""
    from unitscope import _backend

    B, K, h, w = A.shape
    C = len(cat)
    L = 0 if pix is None else pix.shape[1]
    L2 = 0 if img is None else img.shape[1]
    out = {"intersection": torch.zeros(K, C, dtype=torch.int64), "activation": torch.zeros(K, NC, dtype=torch.int64),
           "label": torch.zeros(C, dtype=torch.int64), "activation_total": torch.zeros(K, dtype=torch.int64)}
    A, thr32 = A.contiguous(), thr.to(torch.float32).contiguous()
    _backend.compiled_module().tally_cpu(
        ptr(A), ptr(thr32), ptr(pix), ptr(img), ptr(annotated), ptr(cat), ptr(out["intersection"]),
        ptr(out["activation"]), ptr(out["label"]), ptr(out["activation_total"]), DTYPE_CODE[A.dtype],
        LABEL_CODE[pix.dtype] if pix is not None else 0, LABEL_CODE[img.dtype] if img is not None else 0,
        B, K, h, w, S[0], S[1], L, L2, C, NC, align, ge, union_mode, threads)
    return out


def ndl_mask_union(A, thr, pix, img, cat, NC, S, *, ge=False, align=False):
    """activation (K, NC) as NetDissect-Lite's loop counts it, on unitscope's resize: per image and
    unit, the mask's labels bincounted (every map, image labels added), then the unit's area added
    to each category whose label x category product is > 0."""
    B, K = A.shape[:2]
    C = len(cat)
    labelcat = np.zeros((C, NC), np.int64)
    labelcat[np.arange(1, C), cat.numpy()[1:]] = 1
    act = np.zeros((K, NC), np.int64)
    up = bilinear_resize(A.float(), S, align).numpy()
    for b in range(B):
        for k in range(K):
            mask = up[b, k] >= thr[k].item() if ge else up[b, k] > thr[k].item()
            M = int(mask.sum())
            if M == 0:
                continue
            bt = np.zeros(C, np.int64)
            if pix is not None:
                bt = np.bincount(pix[b][:, torch.from_numpy(mask)].numpy().astype(np.int64).ravel(), minlength=C)
            bt[0] = 0
            tally_cat = bt @ labelcat
            if img is not None:
                for scalar in img[b].tolist():
                    if scalar != 0:
                        tally_cat = tally_cat + labelcat[scalar]
            act[k] += M * (tally_cat > 0)
    return torch.from_numpy(act)


@st.composite
def problems(draw):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    B, K = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))  # maps wider than 8 lanes, down- and upsampled
    S = (draw(st.integers(1, 70)), draw(st.integers(1, 140)))  # rows of one, two and three 64-pixel words
    C, NC = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    L, L2 = draw(st.integers(0, 3)), draw(st.integers(0, 2))
    A = torch.randint(0, 5, (B, K, h, w), generator=g).float() / 4 if draw(st.booleans()) else \
        torch.randn(B, K, h, w, generator=g)
    thr = torch.quantile(A.transpose(0, 1).reshape(K, -1), draw(st.sampled_from([0.0, 0.5, 0.8, 1.0])), dim=1)
    # piecewise-constant label maps (nearest-upsampled grids), some cells 0, repeats across maps
    grid = draw(st.integers(1, 8))
    pix = None
    if L > 0:
        lab = torch.randint(0, C, (B, L, grid, grid), generator=g).float()
        pix = torch.nn.functional.interpolate(lab, size=S, mode="nearest").to(torch.int16)
        if L > 1:
            pix[:, 1] = torch.where(torch.rand(B, *S, generator=g) < 0.5, pix[:, 0], pix[:, 1])
    img = torch.randint(0, C, (B, L2), generator=g).to(torch.int32) if L2 > 0 else None
    cat = torch.randint(0, NC, (C,), generator=g)
    return dict(A=A, thr=thr, pix=pix, img=img, cat=cat, NC=NC, S=S, ge=draw(st.booleans()), align=draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), threads=st.sampled_from([1, 2]))
def test_mask_union_matches_netdissect_lite_loop(p, threads):
    kw = dict(ge=p["ge"], align=p["align"])
    got = cpp_tally(p["A"], p["thr"], p["pix"], p["img"], p["cat"], p["NC"], p["S"], union_mode=2, threads=threads, **kw)
    want = ndl_mask_union(p["A"], p["thr"], p["pix"], p["img"], p["cat"], p["NC"], p["S"], **kw)
    assert torch.equal(got["activation"], want), f"{got['activation']}\nvs\n{want}"
    # the other counts do not depend on the union mode
    ref = tally_counts(p["A"], p["thr"], p["pix"], p["img"], num_labels=len(p["cat"]), label_category=p["cat"],
                       num_categories=p["NC"], out_size=p["S"], align_corners=p["align"],
                       threshold_op=">=" if p["ge"] else ">")
    for key in ("intersection", "label", "activation_total"):
        assert torch.equal(got[key], ref[key]), key


def test_planted_union_modes():
    """One unit whose mask is the top-left 2x2 of a 4x4 image (a 4x4 map resized to itself is
    itself): category 0 has a label inside the mask, category 1 only outside, category 2 inside
    through the second map only where the first repeats it, category 3 an image label."""
    A = torch.zeros(1, 1, 4, 4)
    A[0, 0, :2, :2] = 1.0
    thr = torch.tensor([0.5])
    pix = torch.zeros(1, 2, 4, 4, dtype=torch.int32)
    pix[0, 0, 0, 0] = 1          # category 0, inside
    pix[0, 0, 3, 3] = 2          # category 1, outside only
    pix[0, 0, 1, 1] = 3          # category 2, inside, carried by both maps at one pixel
    pix[0, 1, 1, 1] = 3
    img = torch.tensor([[4]], dtype=torch.int32)  # category 3
    cat = torch.tensor([0, 0, 1, 2, 3])
    run = lambda mode: cpp_tally(A, thr, pix, img, cat, 4, (4, 4), union_mode=mode)  # noqa: E731
    assert run(2)["activation"].tolist() == [[4, 0, 4, 4]]
    assert run(0)["activation"].tolist() == [[4, 4, 4, 4]]  # every category is present in the image
    assert run(1)["activation"].tolist() == [[4, 4, 4, 4]]
    got = run(2)
    assert got["intersection"].tolist() == [[0, 1, 0, 1, 4]]  # label 3 once at its pixel
    assert got["label"].tolist() == [0, 1, 1, 1, 16]
    assert got["activation_total"].tolist() == [4]
    # without the image label, category 3 is met nowhere
    assert cpp_tally(A, thr, pix, None, cat, 4, (4, 4), union_mode=2)["activation"].tolist() == [[4, 0, 4, 0]]


@pytest.mark.parametrize("mode", [-1, 3])
def test_bad_union_mode_is_refused(mode):
    A, thr = torch.ones(1, 1, 2, 2), torch.zeros(1)
    cat = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="union_mode"):
        cpp_tally(A, thr, None, None, cat, 1, (2, 2), union_mode=mode)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(p=problems(), mode=st.sampled_from([0, 1, 2]))
def test_generic_copy_counts_the_same(monkeypatch, p, mode):
    """The body compiled for any x86-64 CPU counts exactly as the one this CPU runs by default."""
    args = (p["A"], p["thr"], p["pix"], p["img"], p["cat"], p["NC"], p["S"])
    kw = dict(union_mode=mode, ge=p["ge"], align=p["align"])
    default = cpp_tally(*args, **kw)
    with monkeypatch.context() as m:
        m.setenv("UNITSCOPE_TALLY_ISA", "generic")
        generic = cpp_tally(*args, **kw)
    for key in default:
        assert torch.equal(default[key], generic[key]), key


def test_bad_isa_variable_is_refused(monkeypatch):
    monkeypatch.setenv("UNITSCOPE_TALLY_ISA", "avx9")
    with pytest.raises(ValueError, match="UNITSCOPE_TALLY_ISA"):
        cpp_tally(torch.ones(1, 1, 2, 2), torch.zeros(1), None, None, torch.zeros(2, dtype=torch.int64), 1, (2, 2),
                  union_mode=0)
