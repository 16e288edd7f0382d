"""Grad-CAM++ (Chattopadhay et al., WACV 2018): channel weights from positive gradients, each
location weighted by alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) (the exponential-score closed form)."""
from __future__ import annotations

import torch

from unitscope.saliency.cam_base import CAMBase


class GradCAMPlusPlus(CAMBase):
    """Grad-CAM++ on `layer` (see CAMBase for the arguments). eps guards the alpha denominator."""

    def __init__(self, model, layer, *, eps=1e-7, **kwargs):
        super().__init__(model, layer, **kwargs)
        self.eps = float(eps)

    def weights(self, A, grads):
        """A (B, K, h, w), grads (B, T, K, h, w) -> weights (B, T, K) = sum_ij alpha_ij relu(g_ij)."""
        g = grads.float()
        a = A.detach().float()[:, None]
        g2, g3 = g * g, g * g * g
        denom = 2 * g2 + a.sum(dim=(3, 4), keepdim=True) * g3
        alpha = torch.where(g != 0, g2 / torch.where(denom.abs() > self.eps, denom, torch.full_like(denom, self.eps)),
                            torch.zeros_like(g))
        return (alpha * g.clamp(min=0)).sum(dim=(3, 4))

    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x)
        grads = self.layer_gradients(A, s, targets)
        return self.reduce(A, self.weights(A, grads), x)
