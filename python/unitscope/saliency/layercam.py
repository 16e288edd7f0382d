"""LayerCAM (Jiang et al., IEEE TIP 2021): every location weighted by its own positive gradient,
map = ReLU(sum_k max(dS_c/dA_kij, 0) A_kij); usable on early layers, where Grad-CAM's averages blur."""
from __future__ import annotations

import torch

from unitscope.saliency.cam_base import CAMBase


class LayerCAM(CAMBase):
    """LayerCAM on `layer` (see CAMBase for the arguments)."""

    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x)
        grads = self.layer_gradients(A, s, targets)  # (B, T, K, h, w)
        B, T, K, h, w = grads.shape
        prod = (grads.clamp(min=0) * A.detach()[:, None]).reshape(B * T, K, h, w).to(torch.float32)
        ones = torch.ones((B * T, K), dtype=torch.float32, device=prod.device)  # the kernel sums the channels
        return self.reduce(prod, ones, x).reshape(B, T, *self.out_size(x, A))
