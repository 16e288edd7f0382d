"""HiResCAM (Draelos & Carin, 2020): map = sum_k dS_c/dA_k * A_k element-wise (no spatial averaging
of the gradient), so the map shows exactly the locations that raise the score for that layer."""
from __future__ import annotations

import torch

from unitscope.saliency.cam_base import CAMBase


class HiResCAM(CAMBase):
    """HiResCAM on `layer` (see CAMBase for the arguments; relu=True clamps the sum at 0)."""

    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x)
        grads = self.layer_gradients(A, s, targets)  # (B, T, K, h, w)
        B, T, K, h, w = grads.shape
        prod = (grads * A.detach()[:, None]).reshape(B * T, K, h, w).to(torch.float32)
        # the kernel with unit weights sums over channels, clamps and upsamples in one pass
        ones = torch.ones((B * T, K), dtype=torch.float32, device=prod.device)
        return self.reduce(prod, ones, x).reshape(B, T, *self.out_size(x, A))
