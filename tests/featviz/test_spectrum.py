"""The radially averaged power spectrum and the high-frequency share, against answers known by
construction (white noise, pure sinusoids, Parseval)."""
import math

import pytest
import torch

from unitscope.featviz.spectrum import _power_and_radius, high_frequency_fraction, radial_power_spectrum


def test_white_noise_share_is_the_area_outside_the_cutoff():
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    share = high_frequency_fraction(x, cutoff=0.25)
    assert share.shape == (8,)
    torch.testing.assert_close(share.mean().item(), 1 - math.pi * 0.25 ** 2, atol=0.02, rtol=0)


@pytest.mark.parametrize("cycles", [2, 5, 20])
def test_a_sinusoid_lands_in_its_ring(cycles):
    n = 64
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    x = torch.sin(2 * math.pi * cycles * xx / n)[None].expand(3, n, n)
    freqs, power = radial_power_spectrum(x, bins=32)
    assert freqs.shape == (32,) and power.shape == (1, 32)
    peak = int(power[0].nan_to_num(0).argmax())
    assert abs(freqs[peak].item() - cycles / n) <= 0.5 / 32
    expected = 1.0 if cycles / n > 0.25 else 0.0
    torch.testing.assert_close(high_frequency_fraction(x).item(), expected, atol=1e-9, rtol=0)


def test_parseval_and_constant_images():
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64)
    power, _ = _power_and_radius(x)
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(power.sum(dim=(1, 2)), (centred ** 2).sum(dim=(1, 2, 3)))
    assert high_frequency_fraction(torch.full((1, 3, 8, 8), 0.3)).item() == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\) or \(C, H, W\)"):
        high_frequency_fraction(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="cutoff must be in"):
        high_frequency_fraction(torch.zeros(1, 3, 8, 8), cutoff=0.6)
    with pytest.raises(ValueError, match="bins must be a positive int"):
        radial_power_spectrum(torch.zeros(1, 3, 8, 8), bins=0)
