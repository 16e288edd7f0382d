"""What the class-activation-map methods share: one forward pass with the layer's output captured,
the layer gradients for T targets per image, and the upsampling to the input size."""
from __future__ import annotations

import torch

from unitscope.hooks import LayerCapture
from unitscope.saliency.base import Attribution


class CAMBase(Attribution):
    """Base of GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM, XGradCAM, LayerCAM, EigenCAM, AblationCAM.

    Args:
        model, output, preprocess: see Attribution.
        layer (str or nn.Module): the convolutional layer whose output (B, K, h, w) is explained;
            a module that runs several times per forward is named "name@k" (its k-th call, from 0).
        relu (bool): clamp the map at 0 (as in the papers); False gives signed maps.
        upsample (bool): resize bilinearly to the input size (H, W); False keeps (h, w).
        normalize (bool): min-max normalize each map to [0, 1] (a constant map becomes 0); the
            default True gives what pytorch-grad-cam returns; False keeps the raw weighted sums
            (their scale follows the explained score: Grad-CAM on a photo can peak at 3e-4).
        backend: the unitscope.kernels.gradcam backend (None picks by device).

    Returns float32 Tensor (B, H, W), or (B, T, H, W) for targets of shape (B, T), on x's device.
    The maps are not differentiable (they come from the compiled kernel).
    """

    def __init__(self, model, layer, *, relu=True, upsample=True, normalize=True, backend=None, output=None,
                 preprocess=None, compile=False):
        super().__init__(model, output=output, preprocess=preprocess, compile=compile)
        cap = LayerCapture(model, layer)  # resolves the layer now: a bad name fails here
        self.layer_name, self.layer = cap.spec, cap.module
        self._hooked = cap.module if cap.call is None else cap.spec  # what each forward's capture hooks
        self.relu, self.upsample, self.normalize = bool(relu), bool(upsample), bool(normalize)
        self.backend = backend

    def activations_and_scores(self, x, grad=True):
        """One forward pass: the layer output A (B, K, h, w) and the scores (B, N)."""
        with torch.set_grad_enabled(grad), LayerCapture(self.model, self._hooked) as cap:
            s = self.scores(x.detach(), eager=True)  # hooks added now: never through a compiled graph
        return cap.check(), s

    def layer_gradients(self, A, s, targets):
        """dS[b, targets[b, t]] / dA for every t: A (B, K, h, w), targets (B, T) -> (B, T, K, h, w).

        One backward pass per target column on the graph of the single forward pass."""
        self._check_target_range(s, targets)
        T = targets.shape[1]
        grads = []
        for t in range(T):
            (g,) = torch.autograd.grad(s.gather(1, targets[:, t:t + 1]).sum(), A, retain_graph=t < T - 1)
            grads.append(g)
        return torch.stack(grads, dim=1)

    def out_size(self, x, A):
        return tuple(x.shape[-2:]) if self.upsample else tuple(A.shape[-2:])

    def reduce(self, A, weights, x):
        """The kernel: relu(sum_k weights[b, t, k] A[b, k]) upsampled -> (B, T, H, W) float32."""
        from unitscope.kernels import gradcam

        return gradcam(A.detach(), weights=weights.detach().to(torch.float32), relu=self.relu,
                       out_size=self.out_size(x, A), normalize=self.normalize, backend=self.backend)
