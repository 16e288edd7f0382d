"""unitscope.kernels.gradcam: every backend against the plain PyTorch reference, hand-made edge
cases, and the errors for bad arguments."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscope
from conftest import device_of
from unitscope.kernels import gradcam
from unitscope.reference.gradcam import gradcam as reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _tol(dtype):
    # inputs are rounded to dtype before both computations, so only float32 accumulation order differs
    return dict(rtol=2e-5, atol=2e-5)


@st.composite
def cases(draw):
    B = draw(st.integers(0, 3))
    K = draw(st.integers(1, 9))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    T = draw(st.one_of(st.none(), st.integers(1, 4)))  # None: gradients
    out = draw(st.one_of(st.none(), st.tuples(st.integers(1, 40), st.integers(1, 40))))
    return dict(B=B, K=K, h=h, w=w, T=T, out=out, align=draw(st.booleans()), relu=draw(st.booleans()),
                normalize=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
                contiguous=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


def _make(c, device):
    g = torch.Generator().manual_seed(c["seed"])
    shape = (c["B"], c["K"], c["h"], c["w"])
    if c["contiguous"]:
        A = torch.randn(shape, generator=g)
        G = torch.randn(shape, generator=g)
    else:  # transposed storage: same values, non-contiguous strides
        A = torch.randn((c["B"], c["K"], c["w"], c["h"]), generator=g).transpose(2, 3)
        G = torch.randn((c["B"], c["K"], c["w"], c["h"]), generator=g).transpose(2, 3)
    A, G = A.to(c["dtype"]).to(device), G.to(c["dtype"]).to(device)
    W = None
    if c["T"] is not None:
        W = torch.randn((c["B"], c["T"], c["K"]), generator=g).to(device)
        G = None
    return A, G, W


@settings(max_examples=60, deadline=None)
@given(c=cases())
def test_matches_reference(backend, c):
    device = device_of(backend)
    A, G, W = _make(c, device)
    kw = dict(weights=W, relu=c["relu"], out_size=c["out"], align_corners=c["align"], normalize=c["normalize"])
    got = gradcam(A, G, backend=backend, **kw)
    want = reference(A.cpu(), None if G is None else G.cpu(), **{**kw, "weights": None if W is None else W.cpu()})
    assert got.dtype == torch.float32 and got.device == device
    assert got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want, **_tol(c["dtype"]))


def test_torch_backend_is_the_reference():
    A, G = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(gradcam(A, G, out_size=(11, 9), backend="torch"), reference(A, G, out_size=(11, 9)),
                               rtol=0, atol=0)


def test_hand_computed_map():
    # two channels, weights from gradients: mean(G0) = 1, mean(G1) = -2
    A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [0.0, 2.0]]]])
    G = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), -2.0)])[None]
    want = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])  # relu(A0 - 2 A1) = relu([[-1, 0], [3, 0]])
    for backend in unitscope.backends():
        if backend == "cuda":
            continue
        torch.testing.assert_close(gradcam(A, G, backend=backend), want, rtol=0, atol=0)
        torch.testing.assert_close(gradcam(A, G, backend=backend, relu=False), A[:, 0] - 2 * A[:, 1], rtol=0, atol=0)


@pytest.mark.parametrize("normalize", [False, True])
def test_all_negative_map_is_zero(backend, normalize):
    A = torch.rand(2, 4, 3, 3) + 0.1
    W = -torch.rand(2, 4) - 0.1
    out = gradcam(A.to(device_of(backend)), weights=W.to(device_of(backend)), out_size=7, normalize=normalize,
                  backend=backend)
    assert torch.equal(out.cpu(), torch.zeros(2, 7, 7))


def test_constant_map_normalizes_to_zero_not_nan(backend):
    A = torch.ones(1, 3, 4, 4)
    W = torch.tensor([[0.5, 0.25, 0.25]])
    d = device_of(backend)
    out = gradcam(A.to(d), weights=W.to(d), out_size=(9, 5), normalize=True, backend=backend).cpu()
    assert torch.equal(out, torch.zeros(1, 9, 5))
    raw = gradcam(A.to(d), weights=W.to(d), out_size=(9, 5), backend=backend).cpu()
    torch.testing.assert_close(raw, torch.ones(1, 9, 5), rtol=0, atol=1e-6)


def test_k1_and_1x1(backend):
    d = device_of(backend)
    A = torch.tensor([[[[2.0]]]], device=d)
    out = gradcam(A, weights=torch.tensor([[3.0]], device=d), out_size=(3, 2), backend=backend)
    torch.testing.assert_close(out.cpu(), torch.full((1, 3, 2), 6.0))


def test_normalized_range(backend):
    d = device_of(backend)
    out = gradcam(torch.randn(3, 8, 7, 7, device=d), torch.randn(3, 8, 7, 7, device=d), out_size=50,
                  normalize=True, backend=backend).cpu()
    for m in out:
        if m.max() > 0:
            assert m.min() == 0 and abs(float(m.max()) - 1.0) < 1e-6


def test_many_targets_equal_single_targets(backend):
    d = device_of(backend)
    A = torch.randn(2, 6, 5, 5, device=d)
    W = torch.randn(2, 3, 6, device=d)
    many = gradcam(A, weights=W, out_size=13, backend=backend)
    for t in range(3):
        torch.testing.assert_close(many[:, t], gradcam(A, weights=W[:, t], out_size=13, backend=backend),
                                   rtol=0, atol=0)


def test_resize_close_to_f_interpolate(backend):
    # the bilinear value is defined with separately rounded float32 ops; F.interpolate may fuse
    # multiply-adds, so the two agree to float32 rounding, not bit for bit
    d = device_of(backend)
    A = torch.randn(2, 5, 7, 7, device=d)
    W = torch.randn(2, 5, device=d)
    for align in (False, True):
        small = gradcam(A, weights=W, relu=False, backend=backend)
        big = gradcam(A, weights=W, relu=False, out_size=(224, 150), align_corners=align, backend=backend)
        want = F.interpolate(small[:, None], size=(224, 150), mode="bilinear", align_corners=align)[:, 0]
        torch.testing.assert_close(big, want, rtol=1e-5, atol=1e-5)


def test_numpy_in_numpy_out(backend):
    if backend == "cuda":
        pytest.skip("NumPy arrays live on the CPU")
    A = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    G = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    out = gradcam(A, G, out_size=6, backend=backend)
    assert isinstance(out, np.ndarray) and out.shape == (2, 6, 6)
    np.testing.assert_allclose(out, reference(torch.from_numpy(A), torch.from_numpy(G), out_size=(6, 6)).numpy(),
                               rtol=2e-5, atol=2e-5)


# ---- bad arguments: one message per mistake, naming the argument and what it got


def test_errors():
    A = torch.randn(2, 3, 4, 4)
    G = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"activations must have 4 dimensions .*got shape \(3, 4, 4\)"):
        gradcam(A[0], G[0])
    with pytest.raises(TypeError, match="activations must be a floating tensor.*got int64"):
        gradcam(A.long(), G)
    with pytest.raises(TypeError, match="activations must be a torch.Tensor or numpy.ndarray, got list"):
        gradcam([[1.0]], G)
    with pytest.raises(ValueError, match="exactly one of gradients .* got both"):
        gradcam(A, G, weights=torch.randn(2, 3))
    with pytest.raises(ValueError, match="exactly one of gradients .* got neither"):
        gradcam(A)
    with pytest.raises(ValueError, match=r"gradients must have shape \(B, K, h, w\) = \(2, 3, 4, 4\), got \(2, 3, 4, 5\)"):
        gradcam(A, torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="gradients must have the dtype of activations"):
        gradcam(A, G.half())
    with pytest.raises(ValueError, match=r"weights must have shape \(B, K\) = \(2, 3\), got \(2, 4\)"):
        gradcam(A, weights=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"weights must have shape \(B, T, K\) = \(2, T, 3\), got \(2, 5, 4\)"):
        gradcam(A, weights=torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="out_size must be positive integers"):
        gradcam(A, G, out_size=(0, 5))
    with pytest.raises(TypeError, match="out_size must be an int or a pair"):
        gradcam(A, G, out_size="big")
    with pytest.raises(ValueError, match="backend must be one of"):
        gradcam(A, G, backend="tpu")
    with pytest.raises((ValueError, RuntimeError), match="backend 'cuda' needs CUDA tensors|backend 'cuda' is not available"):
        gradcam(A, G, backend="cuda")
    with pytest.raises(ValueError, match="activations must have K, h, w >= 1"):
        gradcam(torch.randn(2, 0, 4, 4), weights=torch.randn(2, 0))


def test_device_mismatch_error():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device (CUDA) to mismatch with")
    with pytest.raises(ValueError, match="gradients must be on the same device as activations"):
        gradcam(torch.randn(1, 2, 3, 3, device="cuda"), torch.randn(1, 2, 3, 3))


def test_env_override(monkeypatch):
    monkeypatch.setenv("UNITSCOPE_BACKEND", "no-such")
    with pytest.raises(ValueError, match="backend must be one of"):
        gradcam(torch.randn(1, 1, 2, 2), weights=torch.ones(1, 1))
    monkeypatch.setenv("UNITSCOPE_BACKEND", "torch")
    out = gradcam(torch.randn(1, 1, 2, 2), weights=torch.ones(1, 1))
    assert out.shape == (1, 2, 2)


@pytest.mark.cuda
def test_cuda_runs_on_current_stream():
    A = torch.randn(4, 16, 7, 7, device="cuda")
    G = torch.randn(4, 16, 7, 7, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())  # A and G were written on the default stream
    with torch.cuda.stream(s):
        out = gradcam(A, G, out_size=32, normalize=True, backend="cuda")
    s.synchronize()
    torch.testing.assert_close(out.cpu(), reference(A.cpu(), G.cpu(), out_size=(32, 32), normalize=True),
                               rtol=2e-5, atol=2e-5)
