"""Targeted PGD: planted optima on a linear colour classifier (L-inf and L2, with the [0, 1] box),
errors, the model left as it was, the contrast figure, and the target winning on bundled photos
through the real EfficientNet-Lite0 within eps."""
import math

import pytest
import torch
from torch import nn

from unitscope import featviz


class MeanColor(nn.Module):
    """logits = (mean red, mean blue): class 0 = red, class 1 = blue."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ self.w.t()


def _reddish(size=8):
    x = torch.empty(1, 3, size, size)
    x[:, 0], x[:, 1], x[:, 2] = 0.6, 0.5, 0.55
    return x


def test_linf_reaches_the_corner_of_the_box():
    # d log p_blue / dx is -c on red pixels, +c on blue, 0 on green: sign steps end at -eps, +eps, 0
    x = _reddish()
    x[0, 0, 0, 0] = 0.01  # a red pixel near 0: the [0, 1] box stops it at -0.01
    r = featviz.adversarial(MeanColor(), x, 1, eps=0.1, steps=10, preprocess=None)
    d = r.perturbation[0]
    assert torch.allclose(d[0].flatten()[1:], torch.full((63,), -0.1)) and abs(d[0, 0, 0] + 0.01) < 1e-6
    assert torch.allclose(d[1], torch.zeros(8, 8)) and torch.allclose(d[2], torch.full((8, 8), 0.1))
    torch.testing.assert_close(r.image, x + r.perturbation)
    assert bool(r.success[0]) and r.probs_before[0].argmax() == 0
    assert abs(float(r.perturbation_norm()[0]) - 0.1) < 1e-6
    assert r.history[-1] > r.history[0]


def test_l2_goes_along_the_gradient_to_the_sphere():
    x = _reddish()
    eps = 0.8
    r = featviz.adversarial(MeanColor(), x, 1, eps=eps, steps=10, norm="l2", preprocess=None)
    d = r.perturbation[0]
    per_pixel = eps / math.sqrt(2 * 64)  # the gradient is spread evenly over 64 red and 64 blue pixels
    torch.testing.assert_close(d[0], torch.full((8, 8), -per_pixel))
    torch.testing.assert_close(d[2], torch.full((8, 8), per_pixel))
    assert torch.allclose(d[1], torch.zeros(8, 8))
    assert abs(float(r.perturbation_norm()[0]) - eps) < 1e-5 and bool(r.success[0])


def test_per_image_targets_and_probabilities():
    x = torch.cat([_reddish(), 1 - _reddish()])  # the second is bluish: class 1 already
    r = featviz.adversarial(MeanColor(), x, [1, 0], eps=0.2, steps=5, preprocess=None)
    assert r.target.tolist() == [1, 0] and r.success.tolist() == [True, True]
    with torch.no_grad():
        torch.testing.assert_close(r.probs_before, torch.softmax(MeanColor()(x), 1))
        torch.testing.assert_close(r.probs_after, torch.softmax(MeanColor()(r.image), 1))


def test_errors():
    m, x = MeanColor(), _reddish()
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got 0"):
        featviz.adversarial(m, x, 1, eps=0, preprocess=None)
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got -0.1"):
        featviz.adversarial(m, x, 1, eps=-0.1, preprocess=None)
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got nan"):
        featviz.adversarial(m, x, 1, eps=float("nan"), preprocess=None)
    with pytest.raises(ValueError, match=r"norm must be one of \('linf', 'l2'\), got 'l1'"):
        featviz.adversarial(m, x, 1, eps=0.1, norm="l1", preprocess=None)
    with pytest.raises(ValueError, match=r"target \[2\] is out of range for a model with 2 outputs"):
        featviz.adversarial(m, x, 2, eps=0.1, preprocess=None)
    with pytest.raises(ValueError, match=r"target \[-1\] is out of range"):
        featviz.adversarial(m, x, -1, eps=0.1, preprocess=None)
    with pytest.raises(ValueError, match="target must be an int or a sequence of ints, got 0.5"):
        featviz.adversarial(m, x, 0.5, eps=0.1, preprocess=None)
    with pytest.raises(ValueError, match=r"target must be one class or one per image \(1\), got 2"):
        featviz.adversarial(m, x, [0, 1], eps=0.1, preprocess=None)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        featviz.adversarial(m, x, 1, eps=0.1, steps=0, preprocess=None)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\], got values in \[1.9, 2\]"):
        featviz.adversarial(m, x + 1.4, 1, eps=0.1, preprocess=None)
    with pytest.raises(ValueError, match=r"x must be a float tensor \(B, 3, H, W\)"):
        featviz.adversarial(m, x[0], 1, eps=0.1, preprocess=None)
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        featviz.adversarial(m, x, 1, eps=0.1, step_size=0, preprocess=None)


def test_model_left_as_it_was():
    m = MeanColor().train()
    before = m.w.detach().clone()
    featviz.adversarial(m, _reddish(), 1, eps=0.1, steps=2, preprocess=None)
    assert m.training and m.w.requires_grad and m.w.grad is None and torch.equal(m.w, before)


def test_contrast_gives_both_and_draws_them(tmp_path):
    from PIL import Image

    c = featviz.contrast(MeanColor(), _reddish(16), 1, eps=0.2, adversarial_steps=5, render_steps=40, lr=0.1,
                         preprocess=None, param="pixel", decorrelate=False, transforms=None)
    assert c.rendering.images.shape == (1, 3, 16, 16) and c.adversarial.image.shape == (1, 3, 16, 16)
    R, _, B = c.rendering.images.mean(dim=(0, 2, 3))
    assert B > R + 0.3  # the logit of "blue" from noise paints blue; the photo only moved by eps
    assert bool(c.adversarial.success[0]) and float(c.adversarial.perturbation_norm()[0]) <= 0.2 + 1e-6
    path = c.save(tmp_path / "contrast.png", class_names=["red", "blue"])
    assert Image.open(path).size[0] >= 4 * 16


def test_command(tmp_path):
    """The `unitscope adversarial` command's module on a photo file, and its user errors (exit 2)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from unitscope.cli import main

    photo = tmp_path / "cat.png"
    Image.fromarray(skdata.chelsea()).save(photo)

    def run(*argv):  # through cli.main, the one place that turns a user's error into exit code 2
        try:
            return main(["adversarial"] + list(argv))
        except SystemExit as e:  # a bad argument value, refused by argparse
            return e.code

    out = tmp_path / "adv"
    assert run("--model", "efficientnet_lite0", "--image", str(photo), "--target", "1", "--eps", "0.03",
               "--steps", "2", "--render-steps", "2", "--size", "64", "--out", str(out), "--quiet") == 0
    assert {p.name for p in out.iterdir()} >= {"contrast.png", "adversarial.png", "perturbation.png", "featviz.png"}
    assert run("--model", "efficientnet_lite0", "--image", str(photo), "--target", "1000", "--out", str(out),
               "--steps", "1", "--render-steps", "1", "--size", "32", "--quiet") == 2
    assert run("--model", "efficientnet_lite0", "--image", str(photo), "--target", "1", "--eps", "0", "--out",
               str(out), "--quiet") == 2


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 2 / 255), ("l2", 1.0)])
def test_target_wins_on_bundled_photos(norm, eps):
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    skdata = pytest.importorskip("skimage.data")
    from unitscope import models

    lm = models.load("efficientnet_lite0")
    x = torch.cat([models.load_image(skdata.chelsea(), 160), models.load_image(skdata.coffee(), 160)])
    labels = lm.predict(x).argmax(1).tolist()
    assert labels == [285, 967]  # Egyptian cat, espresso: correctly classified photos
    # towards goldfish and ambulance
    r = featviz.adversarial(lm.model, x, [1, 407], eps, steps=12, norm=norm, preprocess=lm.preprocess)
    assert r.success.tolist() == [True, True], r.probs_after[[0, 1], [1, 407]]
    assert (r.perturbation_norm() <= eps * (1 + 1e-5)).all()
    assert r.image.min() >= 0 and r.image.max() <= 1
    assert (r.probs_after[[0, 1], [1, 407]] > 0.5).all() and (r.probs_before[[0, 1], [1, 407]] < 0.01).all()
