"""LIME for images (Ribeiro, Singh & Guestrin, "Why Should I Trust You?", KDD 2016): a weighted linear
model of the score over random on/off patterns of superpixels, weighted by closeness to the image."""
from __future__ import annotations

import torch

from unitscope.saliency.superpixels import SuperpixelMethod, weighted_linear_fit


class LIME(SuperpixelMethod):
    """LIME over superpixels (see SuperpixelMethod for segments, sampling and batching).

    Sampler: the first coalition keeps every superpixel, the others switch each one on with
    probability 1/2 (seeded). Weight of coalition z: exp(-d(z)^2 / kernel_width^2) with d the cosine
    distance between z and the all-on vector (1 for the empty coalition). Fit: weighted ridge
    regression with intercept (ridge=1.0 as in the lime package; 0 gives plain weighted least
    squares). The attribution of a superpixel is its coefficient.
    """

    def __init__(self, model, *, kernel_width=0.25, ridge=1.0, **kwargs):
        super().__init__(model, **kwargs)
        if not kernel_width > 0:
            raise ValueError(f"kernel_width must be > 0, got {kernel_width!r}")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        self.kernel_width, self.ridge = float(kernel_width), float(ridge)

    def sample(self, M, gen):
        Z = (torch.rand((self.n_samples, M), generator=gen) < 0.5).double()
        Z[0] = 1.0
        norm = Z.norm(dim=1)
        cos = torch.where(norm > 0, Z.sum(1) / (norm * M ** 0.5).clamp(min=1e-12), torch.zeros_like(norm))
        d = 1.0 - cos
        return Z, torch.exp(-(d * d) / self.kernel_width ** 2)

    def fit(self, Z, y, w, f_full, f_empty):
        coef, icpt = weighted_linear_fit(Z, y, w, ridge=self.ridge, intercept=True)
        return coef.T, icpt
