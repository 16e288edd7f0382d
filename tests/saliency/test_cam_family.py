"""XGrad-CAM, LayerCAM, Eigen-CAM, Ablation-CAM and FullGrad: by hand on GapNet, and the same maps as
pytorch-grad-cam (`grad-cam`, imported through the torchvision stand-in of peers.py, see its docstring)
on a VGG-style and a ResNet-style network, same layer and targets. The peer's gradient hooks sit on
output tensors that an in-place ReLU would overwrite, so the networks compared here use
ReLU(inplace=False). Also: the CAM maps' default normalize=True (pytorch-grad-cam's [0, 1] maps)."""
import numpy as np
import peers
import pytest
import torch
from tiny_models import GapNet, TinyResNet, VGGish
from torch import nn

from unitscope.saliency import AblationCAM, EigenCAM, FullGrad, GradCAM, HiResCAM, LayerCAM, XGradCAM
from unitscope.saliency.eigencam import first_component


def resnet():
    m = TinyResNet(width=4)
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
        if isinstance(mod, nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
    return m.eval()


ARCHS = {"vgg": (lambda: VGGish(inplace=False), "features.8"), "resnet": (resnet, "layer3")}


def images(n=2, size=32, seed=3):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def peer_map(cls_name, model, layer, x, targets, **kw):
    peers.install_torchvision_standin()
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    cam = getattr(gc, cls_name)(model=model, target_layers=[module] if layer else [], **kw)
    with torch.enable_grad():
        out = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    cam.activations_and_grads.release()
    return torch.from_numpy(np.asarray(out))


OURS = {"XGradCAM": lambda m, l, **k: XGradCAM(m, l, **k), "LayerCAM": lambda m, l, **k: LayerCAM(m, l, **k),
        "EigenCAM": lambda m, l, **k: EigenCAM(m, l, **k),
        "AblationCAM": lambda m, l, **k: AblationCAM(m, l, batch_size=7, **k)}


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_same_maps_as_pytorch_grad_cam(name, arch, monkeypatch):
    build, layer = ARCHS[arch]
    m = build()
    x = images()
    # untrained networks: for many classes the weighted sums are < 0 everywhere (an all-zero map after
    # the ReLU); per image, the class whose raw map has the largest positive value
    raw = OURS[name](m, layer, relu=False, normalize=False)(x, torch.arange(10).expand(2, 10))
    c = raw.flatten(2).amax(2).argmax(1)
    got = OURS[name](m, layer)(x, c)
    kw = {"batch_size": 5} if name == "AblationCAM" else {}
    if name == "EigenCAM":
        # the sign of a principal component is the SVD's choice (numpy float32 there, torch float64 here):
        # compared with the peer's own sign-corrected projection (its Seg-Eigen-CAM's eq. 13, our default)
        peers.install_torchvision_standin()
        import pytorch_grad_cam.eigen_cam as ec
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction
        monkeypatch.setattr(ec, "get_2d_projection", get_2d_projection_with_sign_correction)
    ref = peer_map(name, m, layer, x, c, **kw)
    assert got.shape == ref.shape == (2, 32, 32)
    assert got.amin() >= 0 and ref.amin() >= 0
    assert (ref.flatten(1).amax(1) > 0.99).all()  # a map to compare, not all zeros
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eigencam_projection_is_pytorch_grad_cams_up_to_sign(arch):
    peers.install_torchvision_standin()
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from unitscope.saliency import LayerCapture

    build, layer = ARCHS[arch]
    m = build()
    with torch.no_grad(), LayerCapture(m, layer) as cap:
        m(images())
    A = cap.check()
    ours = first_component(A).float()
    ref = torch.from_numpy(get_2d_projection(A.numpy()))
    for b in range(2):
        sign = torch.sign((ours[b] * ref[b]).sum())
        torch.testing.assert_close(sign * ours[b], ref[b], rtol=1e-3, atol=1e-4 * ref[b].abs().max().item())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_fullgrad_same_as_pytorch_grad_cam(arch):
    m = ARCHS[arch][0]()
    x = images()
    c = torch.tensor([1, 9])
    got = FullGrad(m)(x, c)
    ref = peer_map("FullGrad", m, "", x, c)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=2e-4)
    assert all(not mod._forward_hooks for mod in m.modules())


# ---- by hand on GapNet: conv -> relu ("act") -> mean -> fc -------------------------------------------
@pytest.fixture
def gap():
    return GapNet().eval()


def test_xgradcam_layercam_ablation_by_hand(gap):
    x = images(2, 10)
    c = torch.tensor([1, 3])
    with torch.no_grad():
        A = gap.act(gap.conv(x))
        y = gap(x).gather(1, c[:, None])
    h, w = A.shape[-2:]
    Wc = gap.fc.weight.detach()[c]                                     # (B, K); dS/dA = Wc / (h w)
    xg = torch.einsum("bk,bkhw->bhw", (Wc / (h * w)) * A.sum((2, 3)) / (A.sum((2, 3)) + 1e-7), A)
    torch.testing.assert_close(XGradCAM(gap, "act", upsample=False, relu=False, normalize=False)(x, c), xg,
                               rtol=1e-5, atol=1e-7)
    lc = torch.einsum("bk,bkhw->bhw", (Wc / (h * w)).clamp(min=0), A)
    torch.testing.assert_close(LayerCAM(gap, "act", upsample=False, normalize=False)(x, c), lc, rtol=1e-5, atol=1e-7)
    # ablating channel k removes Wc_k mean(A_k) from the logit
    wk = Wc * A.mean((2, 3)) / y
    ab = torch.relu(torch.einsum("bk,bkhw->bhw", wk, A))
    torch.testing.assert_close(AblationCAM(gap, "act", upsample=False, normalize=False, batch_size=3)(x, c), ab,
                               rtol=1e-4, atol=1e-6)


def test_eigencam_sign(gap):
    x = images(3, 10)
    with torch.no_grad():
        A = gap.act(gap.conv(x))
    p = first_component(A)
    M = A.double().flatten(2).transpose(1, 2)
    M = M - M.mean(1, keepdim=True)
    # the projection is on the top principal direction: its variance is the top eigenvalue
    top = torch.linalg.eigvalsh(M.transpose(1, 2) @ M)[:, -1]
    torch.testing.assert_close((p.flatten(1) ** 2).sum(1), top, rtol=1e-8, atol=1e-10)
    got = EigenCAM(gap, "act", upsample=False, relu=False, normalize=False)(x, 0).double()
    for b in range(3):
        expect = p[b] if p[b].max().abs() >= p[b].min().abs() else -p[b]
        torch.testing.assert_close(got[b], expect, rtol=1e-5, atol=1e-6)
        assert got[b].max().abs() >= got[b].min().abs()
    two = EigenCAM(gap, "act")(x, torch.tensor([[0, 1]] * 3))
    torch.testing.assert_close(two[:, 0], two[:, 1])  # no class in Eigen-CAM


def test_fullgrad_by_hand_on_a_linear_conv():
    # one conv with bias, then the mean and fc: dS/dz = Wc / (h w) everywhere
    m = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()
    x = images(1, 6)
    c = 2
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(xg)[0, c], xg)

    def norm(t):
        t = t - t.amin(dim=(-2, -1), keepdim=True)
        return t / (1e-7 + t.amax(dim=(-2, -1), keepdim=True))
    total = norm((g * x).abs()).sum(1)
    bias_grad = (m[0].bias.detach()[:, None, None] * m[3].weight.detach()[c][:, None, None] / 36).expand(2, 6, 6)
    total = total + norm(bias_grad.abs()[None]).sum(1)  # constant maps: 0 after min-max
    torch.testing.assert_close(FullGrad(m, normalize=False)(x, c), total[0][None], rtol=1e-5, atol=1e-6)
    assert FullGrad(m)(x, c).amax() == pytest.approx(1.0, abs=1e-6)


# ---- the normalize default -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GradCAM, HiResCAM, XGradCAM, LayerCAM])
def test_maps_are_normalized_by_default(gap, cls):
    x = images(2, 10)
    raw = cls(gap, "act", normalize=False)(x, [1, 2])
    norm = cls(gap, "act")(x, [1, 2])
    lo = raw.flatten(1).amin(1)[:, None, None]
    hi = raw.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(norm, (raw - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_bad_arguments(gap):
    with pytest.raises(ValueError, match="sign must be one of 'max', 'svd'; got 'abs'"):
        EigenCAM(gap, "act", sign="abs")
    with pytest.raises(ValueError, match="eps must be a number >= 0, got -1"):
        XGradCAM(gap, "act", eps=-1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        AblationCAM(gap, "act", batch_size=0)
    with pytest.raises(ValueError, match="FullGrad needs Conv2d or BatchNorm2d layers with a bias"):
        FullGrad(nn.Sequential(nn.Conv2d(3, 2, 3, bias=False), nn.Flatten()))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 5\)"):
        AblationCAM(gap, "act")(images(1, 10), 5)
