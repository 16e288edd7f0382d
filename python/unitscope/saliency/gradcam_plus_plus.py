"""Grad-CAM++ (Chattopadhay et al., WACV 2018): channel weights from positive gradients, each
location weighted by alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) = 1 / (2 + S g) (the exponential-score
closed form, S = sum_ab A_ab), computed in float64 without an absolute guard on small gradients."""
from __future__ import annotations

import warnings

import torch

from unitscope.saliency.cam_base import CAMBase


def gradcam_pp_alpha(S, g, eps=1e-6):
    """alpha for every gradient entry, float64: S (..., K, 1, 1) channel sums, g (..., K, h, w) -> (alpha, poles).

    alpha = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) where g > 0, divided out exactly (no floor on the
    denominator, so |g| ~ 1e-5 gives alpha ~ 1/2 as it should). Where g <= 0 alpha is 0 (it multiplies
    relu(g) = 0; at g = 0 the quotient is 0/0). Where 2 + S g is 0 up to rounding, |2 + S g| <= eps |S g|,
    alpha has a pole and is set to 0; `poles` (bool) marks those entries.
    """
    g = g.double()
    Sg = S.double() * g
    d = 2.0 + Sg
    pos = g > 0
    poles = pos & (d.abs() <= eps * Sg.abs())
    alpha = torch.where(pos & ~poles, 1.0 / torch.where(poles, torch.ones_like(d), d), torch.zeros_like(d))
    return alpha, poles


class GradCAMPlusPlus(CAMBase):
    """Grad-CAM++ on `layer` (see CAMBase for the arguments).

    weights[b, t, k] = sum_ij alpha_ij relu(g_ij), alpha = 1 / (2 + S_k g_ij), S_k = sum_ij A_kij,
    g = dy_c/dA (y the explained score, logits by default; the authors' code explains exp(y), which
    multiplies every weight of class c by exp(y_c) and leaves the normalized map unchanged). The
    weights are computed in float64 and passed to the kernel in float32.

    Poles: for a non-negative layer (after a ReLU, as in the paper) S >= 0, so 2 + S g >= 2 for
    every g > 0 and alpha lies in (0, 1/2]. On a signed layer (a BatchNorm output such as
    EfficientNet's `_blocks.10`, where 2 + S g goes down to -3.2 on scikit-image's chelsea, see
    benchmarks/RESULTS_saliency.md) the closed form has a pole at g = -2/S: alpha grows without
    bound near it and is negative beyond it. unitscope keeps the closed form there (large or
    negative alphas) except at the pole itself, |2 + S g| <= eps |S g| (eps >= 0, default 1e-6 ~
    the rounding of float32 gradients), where alpha = 0; and it warns once per call when some
    entries lie at or beyond a pole: explain an activated layer instead.
    """

    def __init__(self, model, layer, *, eps=1e-6, **kwargs):
        super().__init__(model, layer, **kwargs)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)

    def weights(self, A, grads):
        """A (B, K, h, w), grads (B, T, K, h, w) -> weights (B, T, K) float32 = sum_ij alpha_ij relu(g_ij)."""
        S = A.detach().double().sum(dim=(2, 3))[:, None, :, None, None]  # (B, 1, K, 1, 1)
        alpha, poles = gradcam_pp_alpha(S, grads, self.eps)
        past = alpha < 0
        if poles.any() or past.any():
            warnings.warn(f"Grad-CAM++ on layer {self.layer_name!r}: 2 + sum(A) g is <= 0 at "
                          f"{int(past.sum()) + int(poles.sum())} positive-gradient entries (a signed layer): alpha is "
                          f"negative there, or 0 at the {int(poles.sum())} poles; explain a layer after an activation",
                          stacklevel=4)
        return (alpha * grads.double().clamp(min=0)).sum(dim=(3, 4)).float()

    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x)
        grads = self.layer_gradients(A, s, targets)
        return self.reduce(A, self.weights(A, grads), x)
