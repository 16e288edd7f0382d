"""Feature visualization: planted answers on models built by hand, objective arithmetic,
parameterizations, transforms, errors, and a short run on the real EfficientNet-Lite0."""
import numpy as np
import pytest
import torch
from torch import nn

from unitscope import featviz
from unitscope.featviz import objectives as obj
from unitscope.featviz import transforms as T
from unitscope.featviz.objectives import Forward
from unitscope.hooks import LayerCapture


class ColorNet(nn.Module):
    """conv: channel 0 = red - green - blue, channel 1 = blue - red - green; head: class k = mean of channel k."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])[:, :, None, None])
        self.act = nn.LeakyReLU(0.1)  # not dead at a grey start, so logits have gradients

    def forward(self, x):
        return self.act(self.conv(x)).mean(dim=(2, 3))


def _colors(im):
    return im.mean(dim=(0, 2, 3))  # mean R, G, B


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_maximizing_a_red_channel_paints_red(param):
    r = featviz.render(ColorNet(), obj.channel("conv", 0), size=32, steps=60, lr=0.1, param=param,
                       decorrelate=False, preprocess=None, transforms=None)
    R, G, B = _colors(r.images)
    assert R > 0.7 and G < 0.3 and B < 0.3
    assert r.history[-1] > r.history[0]


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_decorrelated_colour_reaches_red_too(param):
    # the decorrelated basis has smaller steps per colour channel, so it moves more slowly
    r = featviz.render(ColorNet(), obj.channel("conv", 0), size=32, steps=60, lr=0.1, param=param,
                       preprocess=None, transforms=None)
    R, G, B = _colors(r.images)
    assert R - max(G, B) > 0.3


def test_minimizing_is_the_negated_objective():
    r = featviz.render(ColorNet(), -obj.channel("conv", 0), size=32, steps=60, lr=0.1, param="pixel",
                       decorrelate=False, preprocess=None, transforms=None)
    R, G, B = _colors(r.images)
    assert R < 0.3 and (G > 0.7 or B > 0.7)


def test_class_logit_and_transforms():
    r = featviz.render(ColorNet(), obj.class_logit(1), size=48, steps=60, lr=0.1, preprocess=None)
    R, G, B = _colors(r.images)
    assert B > R and B > G


def test_neuron_only_changes_its_receptive_field():
    # 1x1 convolution: the neuron at (x=5, y=3) sees exactly one pixel
    r = featviz.render(ColorNet(), obj.neuron("conv", 0, x=5, y=3), size=16, steps=30, lr=0.2, param="pixel",
                       decorrelate=False, preprocess=None, transforms=None)
    im = r.images[0]
    changed = (im - 0.5).abs().amax(dim=0) > 0.05
    assert changed[3, 5] and changed.sum() == 1


def test_objective_arithmetic():
    acts = {"a": torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)}
    f = Forward(acts, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.rand(2, 3, 8, 8))
    a, b = obj.channel("a", 1), obj.class_logit(1)
    torch.testing.assert_close((a + 2 * b - 3)(f), a(f) + 2 * b(f) - 3)
    torch.testing.assert_close((-a)(f), -a(f))
    torch.testing.assert_close((1 - a)(f), 1 - a(f))
    assert set((a + obj.layer("b")).layers) == {"a", "b"}
    torch.testing.assert_close(obj.channel("a", 1)(f), acts["a"][:, 1].mean(dim=(1, 2)))
    torch.testing.assert_close(obj.neuron("a", 2, x=0, y=1)(f), acts["a"][:, 2, 1, 0])
    torch.testing.assert_close(obj.layer("a")(f), (acts["a"] ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(obj.direction("a", [1.0, 0.0, 0.0])(f), acts["a"][:, 0].mean(dim=(1, 2)))
    flat = Forward(f.acts, f.logits, torch.full((2, 3, 8, 8), 0.5))
    assert torch.equal(obj.total_variation()(flat), torch.zeros(2))


def test_objective_errors():
    f = Forward({"a": torch.zeros(1, 3, 2, 2)}, torch.zeros(1, 5), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="channel 3 is out of range for layer 'a' with 3 channels"):
        obj.channel("a", 3)(f)
    with pytest.raises(ValueError, match="class 5 is out of range for a model with 5 outputs"):
        obj.class_logit(5)(f)
    with pytest.raises(ValueError, match=r"neuron position \(x=4, y=0\) is outside layer 'a' of size 2x2"):
        obj.neuron("a", 0, x=4, y=0)(f)
    with pytest.raises(TypeError, match="multiplied by a number"):
        obj.channel("a", 0) * obj.channel("a", 1)


def test_render_errors():
    m = ColorNet()
    with pytest.raises(ValueError, match="layer 'nope' is not a module of the model"):
        featviz.render(m, obj.channel("nope", 0), steps=1, size=16)
    with pytest.raises(ValueError, match="param must be one of"):
        featviz.render(m, obj.channel("conv", 0), steps=1, size=16, param="wavelet")
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        featviz.render(m, obj.channel("conv", 0), steps=0)
    with pytest.raises(TypeError, match="objective must be"):
        featviz.render(m, "conv:0")


def test_model_left_as_it_was():
    m = ColorNet().train()
    before = m.conv.weight.clone()
    featviz.render(m, obj.channel("conv", 0), size=16, steps=5, preprocess=None)
    assert m.training and m.conv.weight.requires_grad and torch.equal(m.conv.weight, before)


def test_same_seed_same_image():
    a = featviz.render(ColorNet(), obj.channel("conv", 1), size=24, steps=5, seed=3, preprocess=None)
    b = featviz.render(ColorNet(), obj.channel("conv", 1), size=24, steps=5, seed=3, preprocess=None)
    c = featviz.render(ColorNet(), obj.channel("conv", 1), size=24, steps=5, seed=4, preprocess=None)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_parameterizations_give_images_in_range(param):
    from unitscope.featviz.param import make_image

    im = make_image(param, 2, (20, 30), decorrelate=True, generator=torch.Generator().manual_seed(0))()
    assert im.shape == (2, 3, 20, 30) and im.min() >= 0 and im.max() <= 1


def test_transforms_keep_gradients_and_are_seeded():
    x = torch.rand(2, 3, 40, 40, requires_grad=True)
    t = T.standard()
    y1 = t(x, [torch.Generator().manual_seed(s) for s in (0, 1)])
    y2 = t(x, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert torch.equal(y1, y2) and y1.shape == (2, 3, 54, 54)  # 40 + 2*12 pad - 7 jitter(8) - 3 jitter(4)
    # image i's transform depends on its own generator only
    alone = t(x[1:], [torch.Generator().manual_seed(1)])
    torch.testing.assert_close(alone[0], y1[1])
    with pytest.raises(ValueError, match="one generator per image: 2 images, got 1"):
        t(x, [torch.Generator()])
    y1.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="jitter d must be >= 1"):
        T.jitter(0)


def test_layer_capture_rejects_a_module_run_twice_and_removes_hooks():
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), act, nn.Conv2d(3, 3, 1), act)
    cap = LayerCapture(model, ["1"])
    with pytest.raises(ValueError, match=r"layer '1' \(ReLU\) is called 2 times per forward pass.*1@0, 1@1"):
        with cap:
            model(torch.rand(1, 3, 4, 4))
            _ = cap.outputs
    assert not act._forward_hooks
    with pytest.raises(TypeError, match="layer must be a module name"):
        LayerCapture(model, [3])
    # render reads the layer the same way: a reused module needs its call number
    with pytest.raises(ValueError, match=r"layer '1' \(ReLU\) is called 2 times per forward pass"):
        featviz.render(model, obj.channel("1", 0), size=8, steps=1, preprocess=None, progress=False)
    with torch.no_grad():
        x = torch.rand(2, 3, 8, 8)
        second = act(model[2](act(model[0](x))))
    torch.testing.assert_close(featviz.score(model, obj.channel("1@1", 2), x, preprocess=None), second[:, 2].mean(dim=(1, 2)))
    assert not act._forward_hooks


def test_cli_writes_renders_grids_and_page(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    from PIL import Image

    from unitscope.cli import main
    from unitscope.viz import save_image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        save_image(torch.rand(40, 40, 3).numpy(), photos / f"p{i}.png")
    out = tmp_path / "fv"
    assert main(["featviz", "--model", "efficientnet_lite0", "--layer", "_blocks.6", "--channels", "1,2",
                 "--steps", "2", "--size", "32", "--dataset", str(photos), "--examples", "2", "--dataset-size", "32",
                 "--batch", "1", "--quiet", "--out", str(out)]) == 0
    pngs = sorted(p.name for p in (out / "featviz").glob("*.png"))
    assert pngs == ["_blocks_6_channel1.png", "_blocks_6_channel1_max.png", "_blocks_6_channel1_min.png",
                    "_blocks_6_channel2.png", "_blocks_6_channel2_max.png", "_blocks_6_channel2_min.png"]
    assert Image.open(out / "featviz" / "_blocks_6_channel1_max.png").size == (32, 32)
    grid = Image.open(out / "featviz" / "_blocks_6_channel1.png")
    assert grid.size[0] > 3 * 32 and grid.size[1] > 2 * 32        # 2 rows: render + 2 examples each
    page = (out / "featviz.html").read_text()
    assert 'src="featviz/_blocks_6_channel2.png"' in page and "receptive field" in page
    assert not (out / "index.html").exists()


def _run_cli(*argv):
    from unitscope.cli import build_parser

    args = build_parser().parse_args(["featviz", "--model", "efficientnet_lite0", *argv])
    return args._run(args)


def test_cli_rejects_bad_arguments_before_working(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    out = str(tmp_path / "fv")
    with pytest.raises(ValueError, match=r"channel 1280 is out of range for layer '_blocks.6' with 80 channels"):
        _run_cli("--layer", "_blocks.6", "--channels", "0,1280", "--out", out)
    with pytest.raises(ValueError, match="layer '_block.6' is not a module of the model; similar names: _blocks.6"):
        _run_cli("--layer", "_block.6", "--out", out)
    # a module run twice per forward: one call of it by number, as everywhere
    with pytest.raises(ValueError, match=r"layer '_swish' \(ReLU6\) is called 2 times .* _swish@0, _swish@1"):
        _run_cli("--layer", "_swish", "--out", out)
    with pytest.raises(ValueError, match=r"channel 1280 is out of range for layer '_swish@1' with 1280 channels"):
        _run_cli("--layer", "_swish@1", "--channels", "0,1280", "--out", out)
    with pytest.raises(ValueError, match=r"channel 32 is out of range for layer '_swish@0' with 32 channels"):
        _run_cli("--layer", "_swish@0", "--channels", "32", "--out", out)
    with pytest.raises(ValueError, match="--channels must be comma-separated integers or START-END, got 'a'"):
        _run_cli("--layer", "_blocks.6", "--channels", "a", "--out", out)
    # refused by the argument types now (issue 21/19: checked while parsing, one line, exit code 2)
    for argv in (("--dataset", str(tmp_path / "none")), ("--steps", "0"), ("--prior-weight", "-1")):
        with pytest.raises(SystemExit):
            _run_cli("--layer", "_blocks.6", *argv, "--out", out)
    assert not (tmp_path / "fv").exists()


def test_cli_prior_weight_smooths_the_renders(tmp_path):
    """--prior-weight adds the shipped DAE prior to both renders: less high-frequency power."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    from PIL import Image

    from unitscope.featviz import high_frequency_fraction
    hf = {}
    for w in ("0", "30"):
        out = tmp_path / f"w{w}"
        assert _run_cli("--layer", "_blocks.6", "--channels", "5", "--steps", "24", "--size", "48", "--quiet",
                        "--prior-weight", w, "--out", str(out)) == 0
        im = torch.from_numpy(np.asarray(Image.open(out / "featviz" / "_blocks_6_channel5_max.png"), np.float32) / 255)
        hf[w] = float(high_frequency_fraction(im.permute(2, 0, 1)[None])[0])
    assert hf["30"] < 0.7 * hf["0"], hf


def test_cli_help_gives_every_default():
    from unitscope.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["featviz"]
    for action in sub._actions:
        if action.dest in ("help", "model", "layer", "out"):
            continue
        assert action.help and "default" in action.help, action.dest
