"""XGrad-CAM (Fu et al., "Axiom-based Grad-CAM", BMVC 2020): channel weights = the gradient averaged
with the activation as the weight, w_k = sum_ij (A_kij / sum_ab A_kab) dS_c/dA_kij."""
from __future__ import annotations

from unitscope.saliency.cam_base import CAMBase


class XGradCAM(CAMBase):
    """XGrad-CAM on `layer` (see CAMBase for the arguments).

    eps (float >= 0): added to the channel sums sum_ab A_kab (pytorch-grad-cam's 1e-7, the default),
    so that a channel that is 0 everywhere gets weight 0 rather than 0/0.
    """

    def __init__(self, model, layer, *, eps=1e-7, **kwargs):
        super().__init__(model, layer, **kwargs)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)

    def weights(self, A, grads):
        """A (B, K, h, w), grads (B, T, K, h, w) -> (B, T, K)."""
        A = A.detach()[:, None]
        return (grads * A).sum(dim=(3, 4)) / (A.sum(dim=(3, 4)) + self.eps)

    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x)
        return self.reduce(A, self.weights(A, self.layer_gradients(A, s, targets)), x)
