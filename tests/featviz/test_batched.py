"""Whole layers at once and the new penalties: a batch of channels equals the single renders (per
image generators), diversity separates images of one unit, l1 / l2 / blur do what they say."""
import pytest
import torch
from torch import nn

from unitscope import featviz
from unitscope.featviz import objectives as obj
from unitscope.featviz.objectives import Forward


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2), nn.LeakyReLU(0.1))


@pytest.mark.parametrize("make", [obj.channel, obj.neuron])
def test_a_batch_of_channels_equals_the_single_renders(make):
    m, chs = _net(), [0, 3, 5, 1]
    kw = dict(size=32, steps=15, preprocess=None, progress=False)        # fourier, decorrelated, standard transforms
    batched = featviz.render(m, make("3", chs), seed=[7] * 4, **kw)
    assert batched.images.shape == (4, 3, 32, 32) and batched.values.shape == (4,)
    for i, c in enumerate(chs):
        alone = featviz.render(m, make("3", c), seed=7, **kw)
        torch.testing.assert_close(batched.images[i], alone.images[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched.values[i], alone.values[0], atol=1e-5, rtol=1e-4)
    # an int seed gives image i the seed seed + i, whatever the batch size
    by_int = featviz.render(m, make("3", chs), seed=7, **kw)
    torch.testing.assert_close(by_int.images[2], featviz.render(m, make("3", chs[2]), seed=9, **kw).images[0],
                               atol=1e-5, rtol=0)
    assert not torch.equal(by_int.images[0], by_int.images[1])


def test_batch_follows_the_objective_and_errors():
    m = _net()
    r = featviz.render(m, obj.channel("3", [1, 2]) - 0.1 * obj.total_variation(), size=16, steps=1,
                       preprocess=None, progress=False)
    assert r.images.shape[0] == 2
    with pytest.raises(ValueError, match=r"batch=3 but the objective .* is defined for 2 images"):
        featviz.render(m, obj.channel("3", [1, 2]), batch=3, steps=1, progress=False)
    with pytest.raises(ValueError, match="cannot add objectives for 2 and 3 images"):
        obj.channel("3", [1, 2]) + obj.channel("3", [1, 2, 3])
    with pytest.raises(ValueError, match="seed must be an int or a list of 2 ints"):
        featviz.render(m, obj.channel("3", [1, 2]), seed=[1], steps=1, progress=False)
    with pytest.raises(ValueError, match="channel list is empty"):
        obj.channel("3", [])
    with pytest.raises(TypeError, match="channel must be an int or a list of ints, got str"):
        obj.channel("3", "2")
    f = Forward({"a": torch.zeros(3, 4, 2, 2)}, torch.zeros(3, 5), torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match="an objective with 2 channels .* got a batch of 3 images"):
        obj.channel("a", [0, 1])(f)
    with pytest.raises(ValueError, match="channel 4 is out of range for layer 'a' with 4 channels"):
        obj.channel("a", [0, 4, 1])(f)


def test_diversity_values():
    a = torch.rand(1, 4, 3, 3)
    same = Forward({"l": a.expand(3, -1, -1, -1)}, torch.zeros(3, 1), torch.zeros(3, 3, 8, 8))
    torch.testing.assert_close(obj.diversity("l")(same), torch.full((3,), -1.0))
    # channel 0 only vs channel 1 only: orthogonal Gram matrices
    b = torch.zeros(2, 2, 2, 2)
    b[0, 0], b[1, 1] = 1.0, 1.0
    torch.testing.assert_close(obj.diversity("l")(Forward({"l": b}, None, None)), torch.zeros(2))
    assert obj.diversity("l")(Forward({"l": a}, None, None)).item() == 0.0


def _mean_pairwise_gram_cosine(m, images):
    from unitscope.hooks import LayerCapture

    with torch.no_grad(), LayerCapture(m, ["1"]) as cap:
        m(images)
    return -obj.diversity("1")(Forward(dict(cap.outputs), None, images)).mean().item()


def test_diversity_makes_distinct_images_of_one_unit():
    m = _net()
    kw = dict(size=24, steps=30, batch=3, preprocess=None, progress=False)   # seeds 0, 1, 2
    plain = featviz.render(m, obj.channel("3", 2), **kw)
    diverse = featviz.render(m, obj.channel("3", 2) + 2.0 * obj.diversity("1"), **kw)
    assert _mean_pairwise_gram_cosine(m, diverse.images) < _mean_pairwise_gram_cosine(m, plain.images) - 0.01


def test_penalty_values():
    grey = Forward({}, None, torch.full((2, 3, 8, 8), 0.5))
    for term in (obj.l1(), obj.l2(), obj.blur()):
        assert torch.equal(term(grey), torch.zeros(2))
    im = torch.rand(2, 3, 8, 8)
    f = Forward({}, None, im)
    torch.testing.assert_close(obj.l1(0.2)(f), (im - 0.2).abs().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(obj.l2(0.2)(f), ((im - 0.2) ** 2).mean(dim=(1, 2, 3)))
    # the blur's gradient is image - blur(image): zero for a linear ramp away from the border
    ramp = torch.arange(8.0).expand(1, 3, 8, 8).clone().requires_grad_()
    obj.blur()(Forward({}, None, ramp)).sum().backward()
    assert ramp.grad[..., 1:-1, 1:-1].abs().max() == 0 and ramp.grad.abs().sum() > 0


def test_penalties_pull_the_render_their_way():
    m = _net()
    kw = dict(size=32, steps=30, param="pixel", decorrelate=False, transforms=None, preprocess=None,
              progress=False, lr=0.1)
    base = featviz.render(m, obj.channel("3", 1), **kw).images
    blurred = featviz.render(m, obj.channel("3", 1) - 50.0 * obj.blur(), **kw).images
    assert featviz.high_frequency_fraction(blurred).item() < 0.8 * featviz.high_frequency_fraction(base).item()
    for term in (obj.l1(), obj.l2()):
        kept = featviz.render(m, obj.channel("3", 1) - 5.0 * term, **kw).images
        assert (kept - 0.5).abs().mean() < 0.8 * (base - 0.5).abs().mean()
