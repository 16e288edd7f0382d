"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017): channel weights = spatial mean of dS_c/dA, map = ReLU(sum_k w_k A_k)."""
from __future__ import annotations

from unitscope.saliency.cam_base import CAMBase


class GradCAM(CAMBase):
    """Grad-CAM on `layer` (see CAMBase for the arguments).

    T targets per image (targets (B, T)) take one forward pass and T backward passes from the
    scores to the layer; the weights (B, T, K) go to unitscope.kernels.gradcam in one call, which
    also does the ReLU and the bilinear upsampling (F.interpolate semantics, align_corners=False).
    """

    def weights(self, A, grads):
        """grads (B, T, K, h, w) -> channel weights (B, T, K): their spatial mean."""
        return grads.mean(dim=(3, 4))

    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x)
        grads = self.layer_gradients(A, s, targets)
        return self.reduce(A, self.weights(A, grads), x)
