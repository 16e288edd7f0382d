"""Every method on the real ImageNet-trained EfficientNet-Lite0 (kept small: few steps, small images),
IG completeness with 64 Gauss-Legendre nodes, Grad-CAM top-5 at once, and a planted localization."""
import pytest
import torch

from unitscope import models
from unitscope import saliency as S

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def lm():
    return models.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def cat():
    return models.load_image(skdata.chelsea(), 224)


def test_ig_completeness_gauss_legendre_64(lm, cat):
    ig = S.IntegratedGradients(lm.model, steps=64, method="gauss_legendre", batch_size=64, preprocess=lm.preprocess)
    attr, gap = ig(cat, 285, return_gap=True)
    with torch.no_grad():
        d = (lm.predict(cat) - lm.predict(torch.zeros_like(cat)))[0, 285].double()
    assert attr.shape == cat.shape
    assert abs(gap.item()) < 0.01 * abs(d.item()), (gap.item(), d.item())


def test_gradcam_top5_one_call_equals_five(lm, cat):
    x = torch.cat([cat, cat.flip(-1)])
    top5 = lm.predict(x).topk(5, dim=1).indices
    cam = S.GradCAM(lm.model, lm.cam_layer, preprocess=lm.preprocess, normalize=False)
    many = cam(x, top5)
    assert many.shape == (2, 5, 224, 224)
    for t in (0, 4):
        torch.testing.assert_close(many[:, t], cam(x, top5[:, t]), rtol=1e-4, atol=1e-5)


def test_gradcam_finds_the_planted_cat(lm):
    # the cat in the top-left quarter of a gray canvas: most of its Grad-CAM mass lies there
    canvas = torch.full((1, 3, 224, 224), 0.5)
    canvas[:, :, :112, :112] = models.load_image(skdata.chelsea(), 112)
    m = S.GradCAM(lm.model, lm.cam_layer, preprocess=lm.preprocess, normalize=False)(canvas, 285)
    assert m[0, :112, :112].sum() > 0.6 * m.sum()


def test_swish_reused_error(lm, cat):
    with pytest.raises(ValueError, match=r"'_swish' \(ReLU6\) is called 2 times.*_conv_head, _bn1, _blocks.15"):
        S.GradCAM(lm.model, "_swish", preprocess=lm.preprocess, normalize=False)(cat, 285)
    assert not lm.model._swish._forward_hooks


@pytest.mark.parametrize("name", ["gradient", "gxi", "smoothgrad", "guided", "gradcam++", "hirescam", "scorecam",
                                  "guided_gradcam", "occlusion", "lime", "kernelshap"])
def test_every_method_runs(lm, name):
    x = models.load_image(skdata.chelsea(), 128)
    kw = dict(preprocess=lm.preprocess)
    layer = lm.cam_layer
    method = {
        "gradient": lambda: S.VanillaGradient(lm.model, **kw),
        "gxi": lambda: S.GradientTimesInput(lm.model, **kw),
        "smoothgrad": lambda: S.SmoothGrad(S.VanillaGradient(lm.model, **kw), n_samples=2, batch_size=2),
        "guided": lambda: S.GuidedBackprop(lm.model, **kw),
        "gradcam++": lambda: S.GradCAMPlusPlus(lm.model, layer, **kw, normalize=False),
        "hirescam": lambda: S.HiResCAM(lm.model, layer, **kw, normalize=False),
        "scorecam": lambda: S.ScoreCAM(lm.model, layer, max_channels=8, batch_size=8, **kw, normalize=False),
        "guided_gradcam": lambda: S.GuidedGradCAM(lm.model, layer, **kw),
        "occlusion": lambda: S.Occlusion(lm.model, 64, 64, batch_size=4, **kw),
        "lime": lambda: S.LIME(lm.model, segments="slic", n_segments=10, n_samples=8, batch_size=8, **kw),
        "kernelshap": lambda: S.KernelSHAP(lm.model, segments="grid", n_segments=4, n_samples=14, batch_size=14, **kw),
    }[name]()
    m = method(x, 285)
    assert m.shape[0] == 1 and m.shape[-2:] == (128, 128)
    assert torch.isfinite(m).all() and m.abs().sum() > 0
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in lm.model.modules())
