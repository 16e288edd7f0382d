"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): channel weight = the relative drop of the class score
when that channel of the layer is set to 0, w_k = (y_c - y_c^(k)) / y_c; no gradients."""
from __future__ import annotations

import torch

from unitscope.hooks import parse_layer
from unitscope.saliency.base import check_positive_int
from unitscope.saliency.cam_base import CAMBase


class AblationCAM(CAMBase):
    """Ablation-CAM on `layer` (see CAMBase for the other arguments).

    Args:
        batch_size (int): ablated copies per forward pass (default 32).

    Costs K forward passes per image (K = the layer's channel count) however many targets: the whole
    model runs on each copy, with the layer's output replaced by the ablated activations. Channel k
    is ablated to 0 (the paper); a target whose score is 0 has no weights (a ValueError).
    """

    def __init__(self, model, layer, *, batch_size=32, **kwargs):
        super().__init__(model, layer, **kwargs)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self._call = parse_layer(self.layer_name)[1]

    @torch.no_grad()
    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x, grad=False)
        self._check_target_range(s, targets)
        B, K = A.shape[:2]
        T = targets.shape[1]
        y = s.gather(1, targets).double()  # (B, T)
        if (y == 0).any():
            raise ValueError(f"Ablation-CAM divides by the explained score, which is 0 for image(s) "
                             f"{torch.nonzero((y == 0).any(dim=1)).flatten().tolist()}")
        ablated = torch.empty((B, T, K), dtype=torch.float64, device=x.device)
        state = {"out": None, "calls": 0}

        def replace(module, inputs, output):
            k, state["calls"] = state["calls"], state["calls"] + 1
            if self._call is None or k == self._call:
                return state["out"]
            return None

        handle = self.layer.register_forward_hook(replace)
        try:
            for start, stop in self.batches(B * K, self.batch_size):
                p = torch.arange(start, stop, device=x.device)
                b, ch = p // K, p % K
                out = A[b].clone()
                out[torch.arange(len(p), device=x.device), ch] = 0
                state["out"], state["calls"] = out, 0
                sc = self.scores(x[b], eager=True)  # hooks: never through a compiled graph
                ablated[b[:, None], torch.arange(T, device=x.device)[None], ch[:, None]] = sc.gather(1, targets[b]).double()
        finally:
            handle.remove()
        weights = (y[:, :, None] - ablated) / y[:, :, None]
        return self.reduce(A, weights.float(), x)
