"""Feature visualization on the real EfficientNet-Lite0 (small sizes, few steps; the full-size
figures are in benchmarks/bench_featviz.py): renders beat the bundled photos both ways, transforms
and decorrelation give less high-frequency energy than plain pixel ascent, a batch of channels
equals the single renders."""
import pytest
import torch

from unitscope import featviz
from unitscope.featviz import objectives as obj

pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "camera", "coins", "horse",
          "moon", "page"]
LAYER = "_blocks.6"


@pytest.fixture(scope="module")
def model():
    from unitscope import models

    return models.load("efficientnet_lite0").model


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    from unitscope.models import load_image

    return [load_image(getattr(data, n)(), 64)[0] for n in PHOTOS]


def test_renders_beat_the_best_and_worst_photos(model, photos):
    chs = [0, 1, 2, 3, 4]
    ex = featviz.dataset_examples(model, LAYER, photos, k=1, units=chs, reduce="mean", progress=False)
    kw = dict(size=64, steps=16, seed=[0] * len(chs), progress=False)
    high = featviz.render(model, obj.channel(LAYER, chs), **kw)
    low = featviz.render(model, -obj.channel(LAYER, chs), **kw)
    noise = high.history[0] / len(chs)          # the starting images' mean objective
    for i, c in enumerate(chs):
        best, worst = ex.values(c, "top")[0].item(), ex.values(c, "bottom")[0].item()
        top, bottom = high.values[i].item(), -low.values[i].item()
        # measured: max renders 17-27 against the best photo's 0.8-14 and noise about -0.3;
        # min renders -17 to -34 against the worst photo's -6 to -15
        assert top > noise + 10 and top > 1.3 * best, (c, top, best, noise)
        assert bottom < 1.3 * worst and worst < 0, (c, bottom, worst)


def test_transforms_and_decorrelation_lower_high_frequencies(model):
    kw = dict(size=64, steps=16, progress=False)
    plain = featviz.render(model, obj.channel(LAYER, 3), param="pixel", decorrelate=False, transforms=None, **kw)
    lucid = featviz.render(model, obj.channel(LAYER, 3), **kw)
    hf_plain, hf_lucid = featviz.high_frequency_fraction(torch.cat([plain.images, lucid.images])).tolist()
    # measured: 0.62 (plain pixel ascent, nearly white noise's 0.80) against 0.25
    assert hf_lucid < 0.6 * hf_plain, (hf_lucid, hf_plain)


def test_batched_channels_equal_single_renders(model):
    kw = dict(size=48, steps=6, progress=False)
    batched = featviz.render(model, obj.channel(LAYER, [2, 7]), seed=[5, 5], **kw)
    for i, c in enumerate([2, 7]):
        alone = featviz.render(model, obj.channel(LAYER, c), seed=5, **kw)
        torch.testing.assert_close(batched.images[i], alone.images[0], atol=1e-4, rtol=0)
