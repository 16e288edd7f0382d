"""The saliency conventions table (docs/guide-saliency.md, "Conventions"), line by line: with the peer's
convention selected, each method reproduces the peer's published formula, written out here on a tiny model (no peer imported)."""
import math

import numpy as np
import pytest
import torch
from tiny_models import GapNet, Linear, MixedActs
from torch import nn

from unitscope.saliency import GuidedBackprop, GuidedGradCAM, IntegratedGradients, Occlusion, ScoreCAM
from unitscope.saliency.integrated_gradients import path_nodes
from unitscope.saliency.occlusion import window_starts


@pytest.fixture
def net():
    return GapNet().eval()


@pytest.fixture
def x():
    return torch.rand(2, 3, 10, 9, generator=torch.Generator().manual_seed(5))


def bilinear_align_corners(a, H, W):
    """(h, w) -> (H, W), float64 numpy: src = dst (in - 1) / (out - 1), as nn.UpsamplingBilinear2d."""
    h, w = a.shape

    def axis(n_in, n_out):
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, fy = axis(h, H)
    x0, x1, fx = axis(w, W)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


# ---- Score-CAM: pytorch-grad-cam's softmax over channels and align_corners=True masks ---------------
def test_scorecam_pytorch_grad_cam_convention(net, x):
    with torch.no_grad():
        A = net.act(net.conv(x)).double()
    c = [1, 4]
    expect = []
    for b in range(2):
        logits = []
        for k in range(A.shape[1]):
            m = bilinear_align_corners(A[b, k].numpy(), 10, 9)
            m = (m - m.min()) / (m.max() - m.min() + 1e-8)  # pytorch-grad-cam's normalization
            with torch.no_grad():
                logits.append(float(net(x[b:b + 1] * torch.from_numpy(m).float())[0, c[b]]))
        w = np.exp(np.array(logits) - max(logits))
        w /= w.sum()  # softmax over the channels of the class logits
        expect.append(np.maximum(np.einsum("k,khw->hw", w, A[b].numpy()), 0))
    got = ScoreCAM(net, "act", softmax="channels", mask_align_corners=True, upsample=False, batch_size=3, normalize=False)(x, c)
    torch.testing.assert_close(got.double(), torch.from_numpy(np.stack(expect)), rtol=1e-5, atol=1e-6)
    # the authors' convention (the default) is a different map here
    assert not torch.allclose(got, ScoreCAM(net, "act", upsample=False, normalize=False)(x, c), rtol=1e-3, atol=1e-4)


def test_scorecam_channel_softmax_over_the_used_channels(net, x):
    full = ScoreCAM(net, "act", softmax="channels", upsample=False, relu=False, normalize=False)
    few = ScoreCAM(net, "act", softmax="channels", upsample=False, relu=False, max_channels=2, normalize=False)
    with torch.no_grad():
        A = net.act(net.conv(x))
    keep = A.mean(dim=(2, 3)).topk(2, dim=1).indices
    # with 2 of 4 channels the softmax runs over those 2: recompute it from the full method's logits
    w_full = torch.zeros(2, 4)
    for b in range(2):
        for k in range(4):
            m = torch.nn.functional.interpolate(A[b:b + 1, k:k + 1], size=(10, 9), mode="bilinear", align_corners=False)
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else m * 0
            with torch.no_grad():
                w_full[b, k] = net(x[b:b + 1] * m)[0, 3]
    for b in range(2):
        w = torch.zeros(4)
        w[keep[b]] = torch.softmax(w_full[b, keep[b]], 0)
        torch.testing.assert_close(few(x, 3)[b], torch.einsum("k,khw->hw", w, A[b]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(full(x, 3)[b], torch.einsum("k,khw->hw", torch.softmax(w_full[b], 0), A[b]),
                                   rtol=1e-5, atol=1e-6)


def test_scorecam_bad_options(net):
    with pytest.raises(ValueError, match="softmax must be one of 'classes', 'channels'; got 'class'"):
        ScoreCAM(net, "act", softmax="class", normalize=False)
    with pytest.raises(TypeError, match="mask_align_corners must be a bool, got 1"):
        ScoreCAM(net, "act", mask_align_corners=1, normalize=False)


# ---- Integrated gradients: Captum's Riemann rules ---------------------------------------------------
class Cubic(nn.Module):
    """scores = (x^3).flatten() @ V.T: the gradient 3 x^2 V_c is known in closed form."""

    def __init__(self, n=12, classes=3):
        super().__init__()
        self.V = nn.Parameter(torch.randn(classes, n, generator=torch.Generator().manual_seed(7), dtype=torch.float64))

    def forward(self, x):
        return (x.flatten(1) ** 3) @ self.V.T


CAPTUM_RULES = {  # Captum's published nodes and step sizes for n steps
    "riemann_left": (lambda n: np.linspace(0, 1 - 1 / n, n), lambda n: np.full(n, 1 / n)),
    "riemann_right": (lambda n: np.linspace(1 / n, 1, n), lambda n: np.full(n, 1 / n)),
    "riemann_middle": (lambda n: np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n), lambda n: np.full(n, 1 / n)),
    "captum_trapezoid": (lambda n: np.linspace(0, 1, n),
                         lambda n: np.r_[1 / (2 * n), np.full(n - 2, 1 / n), 1 / (2 * n)]),
}


@pytest.mark.parametrize("method", list(CAPTUM_RULES))
@pytest.mark.parametrize("steps", [2, 5])
def test_integrated_gradients_captum_rules(method, steps):
    model = Cubic().eval()
    x = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    base = torch.full_like(x, 0.25)
    alphas, dt = (f(steps) for f in CAPTUM_RULES[method])
    V = model.V.detach()
    c = [0, 2]
    expect = torch.zeros_like(x)
    for b in range(2):
        for a, w in zip(alphas, dt):
            p = base[b] + a * (x[b] - base[b])
            expect[b] += w * 3 * p ** 2 * V[c[b]].view_as(p)
        expect[b] *= x[b] - base[b]
    got = IntegratedGradients(model, baseline=0.25, steps=steps, method=method, batch_size=3)(x, c)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-9)


def test_captum_trapezoid_is_n_minus_1_over_n_of_the_trapezoid_rule():
    for n in (2, 3, 10):
        a, w = path_nodes(n, "captum_trapezoid")
        a0, w0 = path_nodes(n, "riemann_trapezoid")
        np.testing.assert_array_equal(a, a0)
        np.testing.assert_allclose(w, w0 * (n - 1) / n, rtol=1e-15)
        assert abs(w0.sum() - 1) < 1e-15
    with pytest.raises(ValueError, match="steps must be an int >= 2, got 1"):
        path_nodes(1, "captum_trapezoid")
    with pytest.raises(ValueError, match="method must be one of .*'riemann_left'.*; got 'left'"):
        IntegratedGradients(Cubic(), method="left")


# ---- Occlusion: Captum's cropped last window --------------------------------------------------------
def captum_starts(size, window, stride):
    """Captum's Occlusion: ceil((size - window) / stride) + 1 windows at k * stride, cropped at the border."""
    return [k * stride for k in range(math.ceil((size - window) / stride) + 1)]


def test_window_starts_crop():
    assert window_starts(5, 2, 2, "crop") == [0, 2, 4] == captum_starts(5, 2, 2)
    assert window_starts(6, 4, 3, "crop") == [0, 3] == captum_starts(6, 4, 3)
    assert window_starts(6, 2, 2, "crop") == window_starts(6, 2, 2, "shift") == [0, 2, 4]
    assert window_starts(4, 8, 2, "crop") == [0]


@pytest.mark.parametrize("window,stride", [(4, 3), ((3, 2), (2, 2)), (2, 1)])
def test_occlusion_captum_crop_convention(window, stride):
    lin = Linear(shape=(3, 6, 5)).double().eval()
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    expect = np.zeros((2, 6, 5))
    for b, c in enumerate([1, 2]):
        with torch.no_grad():
            s0 = float(lin(x[b:b + 1])[0, c])
        total, count = np.zeros((6, 5)), np.zeros((6, 5))
        for t in captum_starts(6, wh, sh):
            for l in captum_starts(5, ww, sw):
                xo = x[b:b + 1].clone()
                xo[..., t:t + wh, l:l + ww] = 0.0  # numpy/torch slices crop the overhang
                with torch.no_grad():
                    drop = s0 - float(lin(xo)[0, c])
                total[t:t + wh, l:l + ww] += drop
                count[t:t + wh, l:l + ww] += 1
        expect[b] = total / count
    got = Occlusion(lin, window, stride, baseline="black", last_window="crop", batch_size=5)(x, [1, 2])
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-9, atol=1e-12)
    if window == 4:  # 6 rows, window 4, stride 3: the shifted last window (rows 2..5) gives another map
        shifted = Occlusion(lin, window, stride, baseline="black")(x, [1, 2])
        assert not np.allclose(shifted.numpy(), expect)


def test_occlusion_bad_last_window():
    with pytest.raises(ValueError, match="last_window must be one of 'shift', 'crop'; got 'cropped'"):
        Occlusion(Linear(), last_window="cropped")


# ---- Guided Grad-CAM: Captum's nearest upsampling ---------------------------------------------------
def test_guided_gradcam_captum_nearest(net, x):
    c = torch.tensor([1, 3])
    # Captum's LayerGradCam: relu(sum_k mean_ij(dS/dA_k) A_k); GapNet's dS/dA = fc row / (h w)
    with torch.no_grad():
        z = net.conv(x)
        A = net.act(z)
    h, w = A.shape[-2:]
    Wc = net.fc.weight.detach()[c] / (h * w)  # (B, K)
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", Wc, A))
    # nearest: output pixel i takes input pixel floor(i * in / out)
    rows = [min(int(math.floor(i * h / 10)), h - 1) for i in range(10)]
    cols = [min(int(math.floor(j * w / 9)), w - 1) for j in range(9)]
    cam_up = cam[:, rows][:, :, cols]
    # guided backprop through conv -> ReLU: relu'(z) * max(dS/dA, 0), then back through the conv
    xg = x.clone().requires_grad_(True)
    gout = (z > 0).float() * Wc.clamp(min=0)[:, :, None, None].expand_as(z)
    (guided,) = torch.autograd.grad(net.conv(xg), xg, gout)
    got = GuidedGradCAM(net, "act", upsample="nearest")(x, c)
    torch.testing.assert_close(got, guided * cam_up[:, None], rtol=1e-5, atol=1e-7)
    bilinear = GuidedGradCAM(net, "act")(x, c)
    assert not torch.allclose(got, bilinear, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="upsample must be one of 'bilinear', 'nearest'; got 'bicubic'"):
        GuidedGradCAM(net, "act", upsample="bicubic")


# ---- Guided backprop: Captum guides nn.ReLU modules only --------------------------------------------
def test_guided_backprop_captum_relu_only():
    m = MixedActs().eval()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    W = {k: getattr(m, k).weight.detach().double() for k in ("l1", "l2", "l3", "l4")}
    with torch.no_grad():
        h1 = m.l1(x.flatten(1)).double()
        h2 = m.l2(m.relu(m.l1(x.flatten(1)))).double()
        h3 = m.l3(m.elu(m.l2(m.relu(m.l1(x.flatten(1)))))).double()
    phi = torch.exp(-h3 ** 2 / 2) / math.sqrt(2 * math.pi)
    gelu_d = 0.5 * (1 + torch.erf(h3 / math.sqrt(2))) + h3 * phi  # exact GELU's derivative
    elu_d = torch.where(h2 > 0, torch.ones_like(h2), torch.exp(h2))
    c = 2
    g3 = gelu_d * W["l4"][c]                 # ordinary gradient through GELU
    g2 = elu_d * (g3 @ W["l3"])              # ordinary gradient through ELU (Captum leaves it alone)
    g1 = torch.relu((h1 > 0).double() * (g2 @ W["l2"]))  # Captum's ReLU override: relu(grad_in)
    expect = (g1 @ W["l1"]).view_as(x)
    got = GuidedBackprop(m, activations="relu")(x, c)
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-6)
    # unitscope's default refuses the GELU; listing the types guides each of them, another map here
    with pytest.raises(ValueError, match=r"non-monotone ones: gelu \(GELU\)"):
        GuidedBackprop(m)
    assert GuidedBackprop(m, activations="relu").activations == (nn.ReLU,)
    g3 = gelu_d * W["l4"][c].clamp(min=0)
    g2 = elu_d * (g3 @ W["l3"]).clamp(min=0)
    g1 = (h1 > 0).double() * (g2 @ W["l2"]).clamp(min=0)
    every = GuidedBackprop(m, activations=(nn.ReLU, nn.ELU, nn.GELU))(x, c)
    torch.testing.assert_close(every.double(), (g1 @ W["l1"]).view_as(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(every, got, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("bad", ["Relu", "", (), [nn.ReLU, 3], 7])
def test_guided_backprop_bad_activations(bad):
    with pytest.raises(TypeError, match="activations must be 'monotone', 'relu' or a non-empty tuple"):
        GuidedBackprop(MixedActs(), activations=bad)
