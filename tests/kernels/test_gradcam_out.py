"""kernels.gradcam(out=...) and the operator torch.ops.unitscope.gradcam_out: the caller's buffer gets
the same bits as a fresh result on every backend, bad buffers are refused by name, and out= is not
differentiable (a clear error, as torch's own out= functions)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscope
from conftest import device_of
from unitscope.kernels import gradcam

ALL = ["torch"]  # the reference too: its out= path copies in


@settings(max_examples=25, deadline=None)
@given(B=st.integers(0, 3), K=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6),
       T=st.one_of(st.none(), st.integers(1, 3)), size=st.one_of(st.none(), st.tuples(st.integers(1, 20), st.integers(1, 20))),
       relu=st.booleans(), normalize=st.booleans(), align=st.booleans(), half=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_out_bits_equal_fresh_result(backend, B, K, h, w, T, size, relu, normalize, align, half, seed):
    device = device_of(backend)
    g = torch.Generator().manual_seed(seed)
    dt = torch.float16 if half else torch.float32
    A = torch.randn(B, K, h, w, generator=g).to(dt).to(device)
    G = None if T else torch.randn(B, K, h, w, generator=g).to(dt).to(device)
    W = torch.randn(B, T, K, generator=g).to(device) if T else None
    kw = dict(weights=W, relu=relu, out_size=size, normalize=normalize, align_corners=align, backend=backend)
    want = gradcam(A, G, **kw)
    buf = torch.full(want.shape, float("nan"), device=device)  # every element must be written
    got = gradcam(A, G, out=buf, **kw)
    assert got is buf
    assert torch.equal(torch.nan_to_num(got, 7.0), torch.nan_to_num(want, 7.0))
    assert torch.equal(got.isnan(), want.isnan())


@pytest.mark.parametrize("name", ALL)
def test_out_reference_backend(name):
    A, G = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    want = gradcam(A, G, out_size=9, normalize=True, backend=name)
    buf = torch.empty(2, 9, 9)
    assert gradcam(A, G, out_size=9, normalize=True, backend=name, out=buf) is buf
    assert torch.equal(buf, want)


def test_out_reused_across_calls(backend):
    """A warm buffer: the second call overwrites the first call's maps completely."""
    device = device_of(backend)
    buf = torch.empty(4, 2, 11, 13, device=device)
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        A, W = torch.randn(4, 5, 3, 3, generator=g).to(device), torch.randn(4, 2, 5, generator=g).to(device)
        gradcam(A, weights=W, out_size=(11, 13), out=buf, backend=backend)
        assert torch.equal(buf, gradcam(A, weights=W, out_size=(11, 13), backend=backend))


def test_bad_out_is_refused_by_name():
    A, G = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"out must have the result's shape \(2, 8, 8\), got \(2, 1, 8, 8\)"):
        gradcam(A, G, out_size=8, out=torch.empty(2, 1, 8, 8))
    with pytest.raises(TypeError, match="out must be float32, got float64"):
        gradcam(A, G, out_size=8, out=torch.empty(2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"out must be contiguous, got strides"):
        gradcam(A, G, out_size=8, out=torch.empty(8, 8, 2).permute(2, 0, 1))
    with pytest.raises(ValueError, match="out must be on the device of activations"):
        gradcam(A, G, out_size=8, out=torch.empty(2, 8, 8, device="meta"))
    with pytest.raises(TypeError, match="out must be a torch.Tensor or None, got ndarray"):
        gradcam(A, G, out_size=8, out=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(TypeError, match="out is for tensor inputs"):
        gradcam(A.numpy(), G.numpy(), out_size=8, out=torch.empty(2, 8, 8))
    with pytest.raises(ValueError, match=r"out must have the result's shape \(2, 3, 4, 4\)"):
        gradcam(A, weights=torch.randn(2, 3, 3), out=torch.empty(2, 4, 4))


def test_out_with_requires_grad_raises_like_torch():
    A = torch.randn(2, 3, 4, 4, requires_grad=True)
    G = torch.randn(2, 3, 4, 4)
    buf = torch.empty(2, 4, 4)
    with pytest.raises(RuntimeError, match="does not support automatic differentiation"):
        gradcam(A, G, out=buf)
    with pytest.raises(RuntimeError, match="don't support automatic differentiation"):  # the operator itself
        torch.ops.unitscope.gradcam_out(A, G, None, True, False, False, None, None, buf.view(2, 1, 4, 4))
    with torch.no_grad():  # no graph to record: allowed, and equal to the differentiable result
        gradcam(A, G, out=buf)
    assert torch.equal(buf, gradcam(A, G).detach())
    assert not buf.requires_grad


def test_out_through_compile_fullgraph():
    """The operator mutates `out` as declared: a compiled function writes the caller's buffer."""
    A, G = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)

    def f(A, G, buf):
        gradcam(A, G, out_size=(6, 5), normalize=True, out=buf)
        return buf.sum()

    buf = torch.zeros(2, 6, 5)
    total = torch.compile(f, fullgraph=True, backend="aot_eager")(A, G, buf)
    want = gradcam(A, G, out_size=(6, 5), normalize=True)
    assert torch.equal(buf, want) and torch.equal(total, want.sum())


def test_operator_checks_out_itself():
    """torch.ops.unitscope.gradcam_out called directly (no front end): a buffer the kernel would
    overrun or misread is refused before any write."""
    A, G = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    op = torch.ops.unitscope.gradcam_out
    for bad, match in ((torch.empty(2, 1, 8, 8, dtype=torch.float16), "out must be float32"),
                       (torch.empty(2, 8, 8), r"out must be a \(B, T, H, W\) tensor"),
                       (torch.empty(1, 1, 8, 8), r"out must have the result's shape \(2, 1, 8, 8\)"),
                       (torch.empty(2, 1, 8, 16)[..., ::2], "out must be contiguous")):
        with pytest.raises((TypeError, ValueError), match=match):
            op(A, G, None, True, False, False, "cpp" if "cpp" in unitscope.backends() else None, None, bad)
