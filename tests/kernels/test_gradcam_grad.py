"""Grad-CAM is differentiable with respect to activations and gradients (or weights) on every backend
(issue 23): gradcheck in float64 of the registered backward against a float64 torch reference, and
every backend's gradients equal to autograd through that reference. float64 inputs are accepted by
every backend (issue 19: the kernel used to refuse them) and read as float32, like every kernel."""
import pytest
import torch

import unitscope
from unitscope.kernels import _gradcam_grad, gradcam
from unitscope.reference.bilinear import bilinear_taps

BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba", "torch")]
FLAGS = [(True, (7, 9), False, True), (False, (4, 5), False, False), (True, (9, 6), True, False),
         (False, (11, 3), True, True)]  # relu, out_size, align_corners, normalize


def resize64(x, out_size, align_corners):
    """reference/bilinear.py's resize in float64: its taps and (float32) weights, float64 arithmetic."""
    (H, W), (h, w) = out_size, x.shape[-2:]
    yi0, yi1, yl0, yl1 = (t.double() if t.is_floating_point() else t for t in bilinear_taps(h, H, align_corners))
    xi0, xi1, xl0, xl1 = (t.double() if t.is_floating_point() else t for t in bilinear_taps(w, W, align_corners))
    top, bottom = x.index_select(-2, yi0), x.index_select(-2, yi1)
    row0 = xl0 * top.index_select(-1, xi0) + xl1 * top.index_select(-1, xi1)
    row1 = xl0 * bottom.index_select(-1, xi0) + xl1 * bottom.index_select(-1, xi1)
    return yl0[:, None] * row0 + yl1[:, None] * row1


def reference64(A, G, W, relu, out_size, align_corners, normalize):
    """reference/gradcam.py's math in float64 with autograd."""
    w = G.mean(dim=(2, 3))[:, None, :] if G is not None else W
    cam = torch.einsum("btk,bkhw->bthw", w, A)
    if relu:
        cam = torch.clamp(cam, min=0.0)
    if tuple(out_size) != tuple(cam.shape[-2:]):
        cam = resize64(cam, out_size, align_corners)
    if normalize:
        lo = cam.amin(dim=(2, 3), keepdim=True)
        hi = cam.amax(dim=(2, 3), keepdim=True)
        cam = (cam - lo) / (hi - lo)
    return cam


class _RegisteredBackward(torch.autograd.Function):
    """The float64 reference forward with the backward registered for torch.ops.unitscope.gradcam."""

    @staticmethod
    def forward(ctx, A, G, W, flags):
        ctx.save_for_backward(A, G, W)
        ctx.flags = flags
        return reference64(A, G, W, *flags)

    @staticmethod
    def backward(ctx, grad):
        A, G, W = ctx.saved_tensors
        relu, (H, Wd), align_corners, normalize = ctx.flags
        return (*_gradcam_grad.backward(A, G, W, grad, relu, H, Wd, align_corners, normalize), None)


def _inputs(seed, weights=False):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    second = (torch.randn(2, 2, 3, generator=g, dtype=torch.float64) if weights
              else torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    return A, second


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("weights", [False, True])
def test_gradcheck_float64_registered_backward(flags, weights):
    A, X = _inputs(0, weights)
    assert torch.autograd.gradcheck(lambda a, x: _RegisteredBackward.apply(a, None if weights else x,
                                                                          x if weights else None, flags),
                                    (A, X), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("weights", [False, True])
def test_every_backend_differentiable_like_the_reference(backend, flags, weights):
    relu, out_size, align_corners, normalize = flags
    A, X = _inputs(1, weights)
    kw = {"weights": X} if weights else {"gradients": X}
    out = gradcam(A, **kw, relu=relu, out_size=out_size, align_corners=align_corners, normalize=normalize,
                  backend=backend)
    assert out.dtype == torch.float32 and out.requires_grad
    # the output is float32, so the gradient reaching the operator is too: seed exact in float32
    seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).double()
    got = torch.autograd.grad((out.double() * seed).sum(), (A, X))
    ref = reference64(A, None if weights else X, X if weights else None, relu, out_size, align_corners, normalize)
    want = torch.autograd.grad((ref.reshape(out.shape) * seed).sum(), (A, X))
    torch.testing.assert_close(out.double(), ref.reshape(out.shape).detach(), rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_and_requires_grad_accepted_alike(backend):
    """float64 is read as float32 by every backend (bitwise the same maps as float32 input); inputs
    that require grad are accepted by every backend (Numba used to raise)."""
    g = torch.Generator().manual_seed(3)
    A, G = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, 3, 3, generator=g)
    A32 = A.float()
    want = gradcam(A32, G, out_size=5, backend=backend)
    got = gradcam(A.float().requires_grad_(), G.requires_grad_(), out_size=5, backend=backend)
    assert torch.equal(got.detach(), want)
    got64 = gradcam(A, G.double(), out_size=5, backend=backend)
    assert torch.equal(got64, gradcam(A32, G.double().float(), out_size=5, backend=backend))


def test_gradcam_on_a_float64_model():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2)).double()
    cam = unitscope.saliency.GradCAM(net, net[1])(torch.rand(1, 3, 8, 8, dtype=torch.float64), 1)
    assert torch.isfinite(cam).all()
