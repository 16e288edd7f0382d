"""Grad-CAM family against maps computed by hand on a conv -> ReLU -> GAP -> fc model, layer hooks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import Explodes, GapNet, ReusedConv, TinyResNet

from unitscope.saliency import GradCAM, GradCAMPlusPlus, GuidedBackprop, GuidedGradCAM, HiResCAM, LayerCapture, ScoreCAM


@pytest.fixture
def net():
    return GapNet().eval()


@pytest.fixture
def x():
    return torch.rand(2, 3, 10, 9, generator=torch.Generator().manual_seed(5))


def layer_out(net, x):
    with torch.no_grad():
        return net.act(net.conv(x))


def up(cam, size):
    return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def test_gradcam_by_hand(net, x):
    A = layer_out(net, x)  # (2, 4, 5, 5)
    h, w = A.shape[-2:]
    W = net.fc.weight.detach()
    c = torch.tensor([1, 3])
    expect = torch.relu(torch.einsum("bk,bkhw->bhw", W[c] / (h * w), A))
    got = GradCAM(net, "act", normalize=False)(x, c)
    torch.testing.assert_close(got, up(expect, (10, 9)), rtol=1e-5, atol=1e-6)
    small = GradCAM(net, "act", upsample=False, relu=False, normalize=False)(x, c)
    torch.testing.assert_close(small, torch.einsum("bk,bkhw->bhw", W[c] / (h * w), A), rtol=1e-5, atol=1e-6)
    norm = GradCAM(net, net.act, normalize=True)(x, c)
    e = up(expect, (10, 9))
    lo, hi = e.amin(dim=(1, 2), keepdim=True), e.amax(dim=(1, 2), keepdim=True)
    e = torch.where(hi > lo, (e - lo) / (hi - lo).clamp(min=1e-30), torch.zeros_like(e))  # constant map -> 0
    torch.testing.assert_close(norm, e, rtol=1e-5, atol=1e-5)


def test_hirescam_equals_gradcam_before_gap(net, x):
    # with global average pooling after the layer, HiResCAM and Grad-CAM coincide (Draelos & Carin)
    torch.testing.assert_close(HiResCAM(net, "act", normalize=False)(x, [0, 4]), GradCAM(net, "act", normalize=False)(x, [0, 4]), rtol=1e-5, atol=1e-6)
    A = layer_out(net, x)
    W = net.fc.weight.detach()
    hand = torch.relu(torch.einsum("bk,bkhw->bhw", W[[2, 2]] / 25, A))
    torch.testing.assert_close(HiResCAM(net, "act", upsample=False, normalize=False)(x, 2), hand, rtol=1e-5, atol=1e-6)


def test_gradcam_plus_plus_by_hand(net, x):
    A = layer_out(net, x).double().numpy()
    W = net.fc.weight.detach().double().numpy()
    c = [2, 0]
    expect = []
    for b in range(2):
        g = W[c[b]] / 25.0  # dS/dA is constant over space for GAP
        S = A[b].sum(axis=(1, 2))
        alpha = np.where(g != 0, g ** 2 / (2 * g ** 2 + S * g ** 3), 0.0)  # same at every location
        wk = 25 * alpha * np.maximum(g, 0)
        expect.append(np.maximum((wk[:, None, None] * A[b]).sum(0), 0))
    got = GradCAMPlusPlus(net, "act", upsample=False, normalize=False)(x, c)
    torch.testing.assert_close(got.double(), torch.tensor(np.stack(expect)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("max_channels", [None, 2])
def test_scorecam_by_hand(net, x, max_channels):
    A = layer_out(net, x)
    c = torch.tensor([1, 4])
    weights = torch.zeros(2, 4)
    keep = A.mean(dim=(2, 3)).topk(max_channels or 4, dim=1).indices
    for b in range(2):
        for k in keep[b].tolist():
            m = F.interpolate(A[b:b + 1, k:k + 1], size=(10, 9), mode="bilinear", align_corners=False)
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else m * 0
            with torch.no_grad():
                weights[b, k] = torch.softmax(net(x[b:b + 1] * m), 1)[0, c[b]]
    expect = up(torch.relu(torch.einsum("bk,bkhw->bhw", weights, A)), (10, 9))
    got = ScoreCAM(net, "act", batch_size=3, max_channels=max_channels, normalize=False)(x, c)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_guided_gradcam_is_product(net, x):
    cam = GradCAM(net, "act", normalize=False)(x, [1, 2])
    gb = GuidedBackprop(net)(x, [1, 2])
    torch.testing.assert_close(GuidedGradCAM(net, "act")(x, [1, 2]), gb * cam[:, None], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM])
def test_many_targets_one_forward(cls, net, x):
    targets = torch.tensor([[0, 3, 1], [4, 4, 2]])
    calls = []
    h = net.conv.register_forward_hook(lambda *a: calls.append(1))
    try:
        many = cls(net, "act")(x, targets)
    finally:
        h.remove()
    if cls is not ScoreCAM:
        assert len(calls) == 1  # one forward pass for all T targets
    assert many.shape == (2, 3, 10, 9)
    for t in range(3):
        torch.testing.assert_close(many[:, t], cls(net, "act")(x, targets[:, t]), rtol=1e-5, atol=1e-6)


def test_resnet_layer4(tmp_path):
    r = TinyResNet()
    x = torch.rand(2, 3, 64, 64)
    for cls in (GradCAM, GradCAMPlusPlus, HiResCAM):
        m = cls(r, "layer4")(x)
        assert m.shape == (2, 64, 64) and torch.isfinite(m).all() and (m >= 0).all()
    # layer4's block reuses its in-place ReLU, but layer4 itself runs once
    with pytest.raises(ValueError, match=r"'layer4.0.relu' \(ReLU\) is called 2 times"):
        GradCAM(r, "layer4.0.relu", normalize=False)(x)


def test_reused_layer_error_names_it_and_alternatives():
    m = ReusedConv().eval()
    with pytest.raises(ValueError, match=r"layer 'conv' \(Conv2d\) is called 2 times per forward pass.*pick one call "
                                         r"with 'conv@k' \(k = 0..1\) or a module that runs once"):
        GradCAM(m, "conv", normalize=False)(torch.rand(1, 3, 5, 5))
    assert not m.conv._forward_hooks


def test_call_number_picks_one_call_of_a_reused_module():
    m = ReusedConv().eval()
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        first = m.conv(x)
        second = m.conv(first)
    W = m.fc.weight.detach()
    # the second call feeds the average pool: Grad-CAM there is fc row / (h w) times the output
    expect = torch.einsum("k,bkhw->bhw", W[1] / 30, second)
    got = GradCAM(m, "conv@1", upsample=False, relu=False, normalize=False)(x, 1)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    # the first call: dS/d(first) through the second conv, checked with autograd on the hand-made graph
    a = first.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m.fc(m.conv(a).mean(dim=(2, 3)))[:, 1].sum(), a)
    expect0 = torch.einsum("bk,bkhw->bhw", g.mean(dim=(2, 3)), first)
    torch.testing.assert_close(GradCAM(m, "conv@0", upsample=False, relu=False, normalize=False)(x, 1), expect0, rtol=1e-5, atol=1e-6)
    assert GradCAM(m, "conv@1", normalize=False).layer_name == "conv@1"
    with pytest.raises(ValueError, match=r"layer 'conv@2': module 'conv' \(Conv2d\) ran only 2 time\(s\)"):
        GradCAM(m, "conv@2", normalize=False)(x, 1)
    with pytest.raises(ValueError, match=r"the part after '@' must be a call number, got 'last'"):
        GradCAM(m, "conv@last", normalize=False)
    with pytest.raises(ValueError, match="layer 'conf' is not a module of the model"):
        GradCAM(m, "conf@1", normalize=False)
    assert not m.conv._forward_hooks


def test_block_output_as_the_second_call_of_its_relu():
    r = TinyResNet().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    for cls in (GradCAM, GradCAMPlusPlus, HiResCAM):
        torch.testing.assert_close(cls(r, "layer4.0.relu@1")(x, [1, 7]), cls(r, "layer4")(x, [1, 7]), rtol=0, atol=0)


def test_layer_errors(net, x):
    with pytest.raises(ValueError, match="layer 'nope' is not a module of the model"):
        GradCAM(net, "nope", normalize=False)
    with pytest.raises(ValueError, match="is not a submodule"):
        GradCAM(net, torch.nn.ReLU(), normalize=False)
    with pytest.raises(TypeError, match="layer must be a module name"):
        GradCAM(net, 3, normalize=False)
    with pytest.raises(ValueError, match="must output a Tensor \\(B, K, h, w\\)"):
        GradCAM(net, "fc", normalize=False)(x)
    with pytest.raises(ValueError, match="target classes must lie in \\[0, 5\\)"):
        GradCAM(net, "act", normalize=False)(x, 5)


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM, GuidedGradCAM])
def test_hooks_removed_when_forward_raises(cls):
    m = Explodes().eval()
    with pytest.raises(RuntimeError, match="boom"):
        cls(m, "conv")(torch.rand(1, 3, 4, 4), 0)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert not torch._C._is_torch_function_mode_enabled()


def test_layer_capture_not_called(net):
    with LayerCapture(net, "fc") as cap:
        pass
    with pytest.raises(ValueError, match="was not called"):
        cap.check()
    assert not net.fc._forward_hooks


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM])
def test_every_kernel_backend_gives_the_reference_map(cls, net, x, backend):
    from conftest import device_of

    dev = device_of(backend)
    n, xx = GapNet().eval().to(dev), x.to(dev)
    got = cls(n, "act", backend=backend)(xx, torch.tensor([[1, 2], [0, 4]], device=dev))
    ref = cls(n, "act", backend="torch")(xx, torch.tensor([[1, 2], [0, 4]], device=dev))
    assert got.device == xx.device
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_methods_on_cuda_keep_device():
    from unitscope.saliency import IntegratedGradients, Occlusion, VanillaGradient

    net = TinyResNet().cuda()
    x = torch.rand(2, 3, 32, 32, device="cuda")
    for method in (GradCAM(net, "layer4", normalize=False), GuidedBackprop(net), VanillaGradient(net),
                   IntegratedGradients(net, steps=4), Occlusion(net, 8, 8)):
        m = method(x, [1, 2])
        assert m.device.type == "cuda" and torch.isfinite(m).all()
    cpu = GradCAM(net.cpu(), "layer4", normalize=False)(x.cpu(), [1, 2])
    # cuDNN convolutes in TF32 by default (10-bit mantissas): off, so that CUDA computes what the CPU does
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(GradCAM(net.cuda(), "layer4", normalize=False)(x, [1, 2]).cpu(), cpu,
                                   rtol=1e-3, atol=1e-4)
