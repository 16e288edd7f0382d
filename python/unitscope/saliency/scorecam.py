"""Score-CAM (Wang et al., CVPR workshops 2020): channel weights = the class score of the image masked
by each upsampled, min-max normalized activation map; no gradients."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unitscope.saliency.base import check_choice, check_positive_int
from unitscope.saliency.cam_base import CAMBase


class ScoreCAM(CAMBase):
    """Score-CAM on `layer` (see CAMBase for the other arguments).

    Args:
        batch_size (int): masked images per forward pass.
        max_channels (int or None): use only the channels with the largest mean activation per
            image (a speed-up; None uses all K channels as in the paper; the others get weight 0).
        softmax ("classes" | "channels"): "classes" (default, the authors' code): w_k = s_c(x * M_k)
            with the explained output s defaulting to "softmax", a softmax over the classes.
            "channels" (pytorch-grad-cam): w_k = softmax over the channels k of s_c(x * M_k), with s
            defaulting to "logits".
        mask_align_corners (bool): the bilinear upsampling of A_k to the mask M_k; False (default,
            the authors' code, F.interpolate); True as pytorch-grad-cam's nn.UpsamplingBilinear2d.
        output: the explained score s; default as `softmax` says.
        compile ("auto" | True | False): see Attribution (the masked images' forward passes).

    Costs K forward passes per image (K = the layer's channel count) however many targets.
    """

    compilable = True

    default_output = "softmax"

    def __init__(self, model, layer, *, batch_size=64, max_channels=None, softmax="classes", mask_align_corners=False,
                 output=None, compile="auto", **kwargs):
        self.softmax = check_choice(softmax, ("classes", "channels"), "softmax")
        if not isinstance(mask_align_corners, bool):
            raise TypeError(f"mask_align_corners must be a bool, got {mask_align_corners!r}")
        self.mask_align_corners = mask_align_corners
        if output is None and softmax == "channels":
            output = "logits"
        super().__init__(model, layer, output=output, compile=compile, **kwargs)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if max_channels is not None:
            check_positive_int(max_channels, "max_channels")
        self.max_channels = max_channels

    @torch.no_grad()
    def _attribute(self, x, targets):
        A, s = self.activations_and_scores(x, grad=False)
        self._check_target_range(s, targets)
        B, K, h, w = A.shape
        T = targets.shape[1]
        H, W = x.shape[-2:]
        Af = A.float()
        if self.max_channels is not None and self.max_channels < K:
            chans = Af.mean(dim=(2, 3)).topk(self.max_channels, dim=1).indices  # (B, k)
        else:
            chans = torch.arange(K, device=x.device).expand(B, K)
        k = chans.shape[1]
        weights = torch.zeros((B, T, K), dtype=torch.float32, device=x.device)
        # masked image (b, j) at flat index b * k + j
        for start, stop in self.batches(B * k, self.batch_size):
            p = torch.arange(start, stop, device=x.device)
            b, ch = p // k, chans[p // k, p % k]
            m = F.interpolate(Af[b, ch][:, None], size=(H, W), mode="bilinear", align_corners=self.mask_align_corners)
            lo, hi = m.amin(dim=(2, 3), keepdim=True), m.amax(dim=(2, 3), keepdim=True)
            m = torch.where(hi > lo, (m - lo) / (hi - lo).clamp(min=1e-12), torch.zeros_like(m))
            sc = self.scores(x[b] * m.to(x.dtype)).float()  # (n, N)
            weights[b[:, None], torch.arange(T, device=x.device)[None], ch[:, None]] = sc.gather(1, targets[b])
        if self.softmax == "channels":  # over the channels used; the others keep weight 0
            used = torch.zeros((B, 1, K), dtype=torch.bool, device=x.device)
            used[torch.arange(B, device=x.device)[:, None], 0, chans] = True
            weights = weights.masked_fill(~used, float("-inf")).softmax(dim=2)
        return self.reduce(A, weights, x)
