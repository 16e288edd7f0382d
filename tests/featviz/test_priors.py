"""Learned priors: rendering through a user's generator (planted ranges, errors, G left alone), the
shipped denoising autoencoder (validated loading, it denoises, the prior's gradient is its residual,
it smooths noise), and the prior's effect on a short render of the real EfficientNet-Lite0."""
import io

import pytest
import torch
from torch import nn

from unitscope import featviz
from unitscope.featviz import dae as dae_mod
from unitscope.featviz import objectives as obj
from unitscope.featviz.objectives import Forward
from unitscope.featviz.spectrum import high_frequency_fraction


class ColorNet(nn.Module):
    """conv channel 0 = red - green - blue, through a leaky ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0]])[:, :, None, None])
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        return self.act(self.conv(x)).mean(dim=(2, 3))


class TwoPatterns(nn.Module):
    """G(z) = tanh(z0 * red-vs-rest + z1 * a green checkerboard), (B, 3, 8, 8) in (-1, 1)."""

    def __init__(self):
        super().__init__()
        basis = torch.zeros(2, 3, 8, 8)
        basis[0] = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
        basis[1, 1] = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
        self.basis = nn.Parameter(basis)

    def forward(self, z):
        return torch.tanh(torch.einsum("bk,kchw->bchw", z, self.basis))


def test_generator_keeps_the_image_in_the_generators_range():
    G = TwoPatterns().train()
    before = G.basis.detach().clone()
    r = featviz.render(ColorNet(), obj.channel("conv", 0), size=8, steps=40, lr=0.1, preprocess=None,
                       transforms=None, param=featviz.generator(G, 2, value_range=(-1, 1)))
    im = r.images[0]
    # planted: the best reachable image is red; every image G can make is tanh(span of its basis)
    assert im[0].mean() > 0.8 and im[1:].mean() < 0.25 and r.history[-1] > r.history[0]
    pre = torch.atanh((im * 2 - 1).clamp(-0.999999, 0.999999))
    coef = torch.linalg.lstsq(G.basis.detach().reshape(2, -1).t(), pre.reshape(-1, 1)).solution
    off_range = pre.reshape(-1) - (G.basis.detach().reshape(2, -1).t() @ coef)[:, 0]
    assert off_range.abs().max() < 1e-3
    # the generator is not trained, not left frozen and keeps its mode
    assert torch.equal(G.basis, before) and G.basis.requires_grad and G.basis.grad is None and G.training


def test_generator_output_resized_and_seeded():
    G = TwoPatterns()
    kw = dict(size=16, steps=3, preprocess=None, param=featviz.generator(G, 2, value_range=(-1, 1)))
    a = featviz.render(ColorNet(), obj.channel("conv", 0), seed=1, **kw)
    b = featviz.render(ColorNet(), obj.channel("conv", 0), seed=1, **kw)
    c = featviz.render(ColorNet(), obj.channel("conv", 0), seed=2, **kw)
    assert a.images.shape == (1, 3, 16, 16)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_generator_errors():
    with pytest.raises(TypeError, match="G must be an nn.Module mapping latents to images, got function"):
        featviz.generator(lambda z: z, 2)
    with pytest.raises(ValueError, match=r"z_shape must be a positive int or a tuple of positive ints, got \(0, 4\)"):
        featviz.generator(TwoPatterns(), (0, 4))
    with pytest.raises(ValueError, match=r"value_range must be \(low, high\) with high > low, got \(1, 0\)"):
        featviz.generator(TwoPatterns(), 2, value_range=(1, 0))
    flat = nn.Linear(2, 5)
    with pytest.raises(ValueError, match=r"the generator must map latents \(1, 2\) to images \(1, 3, H, W\), "
                                         r"got \(1, 5\)"):
        featviz.render(ColorNet(), obj.channel("conv", 0), size=8, steps=1, param=featviz.generator(flat, 2))
    with pytest.raises(ValueError, match="param must be one of .* or featviz.generator"):
        featviz.render(ColorNet(), obj.channel("conv", 0), size=8, steps=1, param="gan")


def test_shipped_weights_load_small_and_half():
    blob = torch.load(str(dae_mod.default_weights_path()), weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values())
    size = len(dae_mod.default_weights_path().read_bytes())
    assert size < 300_000, size
    d = featviz.load_dae()
    assert isinstance(d, featviz.DenoisingAutoencoder) and not d.training
    assert not any(p.requires_grad for p in d.parameters())


def _save(tmp_path, blob, name="w.pt"):
    p = tmp_path / name
    buf = io.BytesIO()
    torch.save(blob, buf)
    p.write_bytes(buf.getvalue())
    return p


def test_weights_are_validated(tmp_path):
    good = torch.load(str(dae_mod.default_weights_path()), weights_only=True)
    state = good["state_dict"]
    cases = {
        "not a unitscope DAE weights file": [1, 2, 3],
        "unsupported DAE weights version 7": {**good, "version": 7},
        "width must be an int in": {**good, "width": "32"},
        "state_dict must have keys": {**good, "state_dict": {k: v for k, v in state.items() if k != "out.bias"}},
        r"enc.weight must be a float tensor of shape \(32, 3, 3, 3\), got \(32, 3, 5, 5\)":
            {**good, "state_dict": {**state, "enc.weight": torch.zeros(32, 3, 5, 5)}},
        "out.bias holds non-finite values":
            {**good, "state_dict": {**state, "out.bias": torch.full((3,), float("nan"))}},
    }
    for i, (message, blob) in enumerate(cases.items()):
        with pytest.raises(ValueError, match=message):
            featviz.load_dae(_save(tmp_path, blob, f"w{i}.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read as DAE weights"):
        featviz.load_dae(junk)
    with pytest.raises(ValueError, match="does not exist"):
        featviz.load_dae(tmp_path / "missing.pt")

    class Evil:  # an arbitrary object: weights_only refuses to unpickle it
        def __reduce__(self):
            return (print, ("unpickled!",))
    with pytest.raises(ValueError, match="could not be read as DAE weights"):
        featviz.load_dae(_save(tmp_path, {"format": "unitscope-dae", "x": Evil()}, "evil.pt"))


def test_the_dae_denoises_a_photo_it_was_not_trained_on():
    skdata = pytest.importorskip("skimage.data")
    from unitscope.models import load_image

    # trained on scales 1, 1/2, 1/4 of the photos: 0.7 of the cat is an unseen image
    clean = load_image(skdata.chelsea(), (210, 316))
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        denoised = featviz.load_dae()(noisy)
    before, after = float(((noisy - clean) ** 2).mean()), float(((denoised - clean) ** 2).mean())
    assert after < 0.4 * before, (after, before)


def test_prior_gradient_is_the_residual():
    d = featviz.load_dae()
    im = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    value = featviz.dae_prior(3.0)(Forward({}, torch.zeros(2, 1), im))
    assert torch.equal(value.detach(), torch.zeros(2))
    value.sum().backward()
    with torch.no_grad():
        expected = 3.0 * (d(im) - im)
    torch.testing.assert_close(im.grad, expected)
    for bad in (0, -1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="weight must be a finite number > 0"):
            featviz.dae_prior(bad)
    with pytest.raises(TypeError, match="dae must be a DenoisingAutoencoder, got Linear"):
        featviz.dae_prior(1.0, dae=nn.Linear(1, 1))


def test_prior_alone_smooths_noise():
    # pixels as latents of the identity "generator": a noisy start; ascent on the prior alone denoises it
    start = dict(size=48, preprocess=None, transforms=None, lr=0.05, seed=0,
                 param=featviz.generator(nn.Identity(), (3, 48, 48), value_range=(-4, 4)))
    noise = featviz.render(ColorNet(), 0 * obj.channel("conv", 0), steps=1, **start).images
    smooth = featviz.render(ColorNet(), 0 * obj.channel("conv", 0) + featviz.dae_prior(1.0), steps=30,
                            **start).images
    hf0, hf1 = float(high_frequency_fraction(noise)[0]), float(high_frequency_fraction(smooth)[0])
    rec0, rec1 = float(featviz.reconstruction_error(noise)[0]), float(featviz.reconstruction_error(smooth)[0])
    assert hf1 < 0.7 * hf0 and rec1 < 0.5 * rec0, (hf0, hf1, rec0, rec1)


@pytest.mark.slow
def test_dae_prior_on_efficientnet_smooths_at_a_small_cost():
    """Feature visualization with the DAE prior: less high-frequency energy and DAE error, most of the activation."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [models] extra is not installed")
    from unitscope import models
    from unitscope.hooks import LayerCapture

    lm = models.load("efficientnet_lite0")
    layer, ch = "_blocks.6", 5
    out = {}
    variants = {"plain": obj.channel(layer, ch), "prior": obj.channel(layer, ch) + featviz.dae_prior(10.0)}
    for name, objective in variants.items():
        im = featviz.render(lm.model, objective, size=64, steps=24, preprocess=lm.preprocess, seed=0).images
        with LayerCapture(lm.model, [layer]) as cap, torch.no_grad():
            lm.model(lm.preprocess(im))
            act = float(cap.outputs[layer][:, ch].mean())
        out[name] = (act, float(high_frequency_fraction(im)[0]), float(featviz.reconstruction_error(im)[0]))
    (a0, hf0, rec0), (a1, hf1, rec1) = out["plain"], out["prior"]
    # docs/guide-featviz.md, "Learned priors", at 48 steps: the same activation (26.5 vs 25.2),
    # high frequencies 8x and DAE error 15x lower
    assert hf1 < 0.5 * hf0 and rec1 < 0.5 * rec0, out
    assert a1 > 0.8 * a0, out
