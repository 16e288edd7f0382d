"""Properties every method must have: a batch of B gives the B single-image maps, (B, T) targets give
the T single-target maps, outputs stay on x's device; target and input checks."""
import pytest
import torch
from tiny_models import SmallCNN, TinyResNet

from unitscope import saliency as S


def make(name, model, layer):
    return {
        "gradient": lambda: S.VanillaGradient(model),
        "gxi": lambda: S.GradientTimesInput(model),
        "smoothgrad": lambda: S.SmoothGrad(S.VanillaGradient(model), n_samples=3, noise=0.0, batch_size=2),
        "ig": lambda: S.IntegratedGradients(model, steps=4, batch_size=5),
        "guided": lambda: S.GuidedBackprop(model),
        "gradcam": lambda: S.GradCAM(model, layer, normalize=False),
        "gradcam++": lambda: S.GradCAMPlusPlus(model, layer, normalize=False),
        "hirescam": lambda: S.HiResCAM(model, layer, normalize=False),
        "scorecam": lambda: S.ScoreCAM(model, layer, batch_size=7, normalize=False),
        "guided_gradcam": lambda: S.GuidedGradCAM(model, layer),
        "occlusion": lambda: S.Occlusion(model, 4, 3, batch_size=5),
        "lime": lambda: S.LIME(model, segments="grid", n_segments=9, n_samples=20, batch_size=8),
        "kernelshap": lambda: S.KernelSHAP(model, segments="grid", n_segments=9, n_samples=20, batch_size=8),
    }[name]()


NAMES = ["gradient", "gxi", "smoothgrad", "ig", "guided", "gradcam", "gradcam++", "hirescam", "scorecam",
         "guided_gradcam", "occlusion", "lime", "kernelshap"]


@pytest.fixture(scope="module")
def cnn():
    return SmallCNN(classes=6)


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_singles_and_targets_equal_columns(name, cnn):
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    method = make(name, cnn, "features.5")
    batch = method(x, [0, 5, 2])
    singles = torch.cat([method(x[i:i + 1], t) for i, t in enumerate([0, 5, 2])])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-6)
    assert batch.device == x.device and torch.isfinite(batch).all()
    many = method(x[:2], torch.tensor([[1, 3], [4, 0]]))
    assert many.shape[:2] == (2, 2)
    torch.testing.assert_close(many[:, 0], method(x[:2], [1, 4]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(many[:, 1], method(x[:2], [3, 0]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_resnet_style_model(name):
    r = TinyResNet(classes=10)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    m = make(name, r, "layer4")(x)  # target None: the top class
    assert m.shape[0] == 2 and m.shape[-2:] == (32, 32) and torch.isfinite(m).all()
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in r.modules())


def test_target_none_is_top_class(cnn):
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        top = cnn(x).argmax(1)
    g = S.VanillaGradient(cnn)
    torch.testing.assert_close(g(x), g(x, top))
    torch.testing.assert_close(g(x, int(top[0]))[0], g(x[:1])[0])


def test_target_and_input_errors(cnn):
    g = S.VanillaGradient(cnn)
    x = torch.rand(2, 3, 12, 12)
    with pytest.raises(ValueError, match="target must have B = 2 entries"):
        g(x, [1, 2, 3])
    with pytest.raises(TypeError, match="target must hold integers, got dtype torch.float32"):
        g(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="got bool"):
        g(x, True)
    with pytest.raises(ValueError, match=r"target must be None, an int, B = 2 ints or shape \(B, T\)"):
        g(x, torch.zeros(2, 1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 6\), got values in \[-1, 1\]"):
        g(x, [1, -1])
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\), got \(3, 12, 12\)"):
        g(x[0])
    with pytest.raises(TypeError, match="x must be floating point"):
        g(x.long())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        g(x.numpy())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        S.VanillaGradient(lambda t: t)
    with pytest.raises(ValueError, match="output must be 'logits', 'softmax', 'log_softmax' or a callable"):
        S.VanillaGradient(cnn, output="probs")
    with pytest.raises(ValueError, match="reduce must be one of 'abs', 'signed', 'positive', 'negative'"):
        S.VanillaGradient(cnn, reduce="square")
    with pytest.raises(ValueError, match=r"explained output must be a Tensor of shape \(B, N\)"):
        S.VanillaGradient(cnn, output=lambda o: o.sum(1))(x, 0)


def test_training_mode_warns():
    net = SmallCNN().train()
    with pytest.warns(UserWarning, match="training mode"):
        S.VanillaGradient(net)(torch.rand(2, 3, 8, 8), 0)
    net.eval()
