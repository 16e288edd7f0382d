"""Guided Grad-CAM (Selvaraju et al., ICCV 2017, section 3.1): the guided backpropagation image
multiplied point-wise by the Grad-CAM map upsampled to the input size (bilinear, or nearest as Captum)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unitscope.saliency.base import CHANNEL_REDUCTIONS, REDUCTIONS, Attribution, check_choice, reduce_map
from unitscope.saliency.gradcam import GradCAM
from unitscope.saliency.guided_backprop import MONOTONE, GuidedBackprop


class GuidedGradCAM(Attribution):
    """GuidedBackprop(x) * upsample(GradCAM(x)).

    Args:
        layer: the Grad-CAM layer. activations, check_functional: as GuidedBackprop.
        reduce, channel: applied to the product; defaults "signed", None -> (B, C, H, W).
        upsample ("bilinear" | "nearest"): how the Grad-CAM map (ReLU applied at the layer's
            resolution) reaches (H, W): "bilinear" (default, the paper; align_corners=False) or
            "nearest" (Captum's GuidedGradCam default, F.interpolate(mode="nearest")).
    """

    def __init__(self, model, layer, *, activations=MONOTONE, check_functional=True, reduce="signed", channel=None,
                 upsample="bilinear", backend=None, output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        self.upsample = check_choice(upsample, ("bilinear", "nearest"), "upsample")
        self.gradcam = GradCAM(model, layer, upsample=upsample == "bilinear", normalize=False, backend=backend,
                               output=output, preprocess=preprocess)  # the raw map, as Captum's GuidedGradCam
        self.guided = GuidedBackprop(model, activations=activations, check_functional=check_functional,
                                     output=output, preprocess=preprocess)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")

    def _attribute(self, x, targets):
        cam = self.gradcam._attribute(x, targets)  # (B, T, H, W) float32, or (B, T, h, w) to upsample here
        if self.upsample == "nearest":
            cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="nearest")
        guided = torch.stack([self.guided.raw(x, targets[:, t]) for t in range(targets.shape[1])], dim=1)
        return reduce_map(guided * cam[:, :, None].to(guided.dtype), self.reduce, self.channel)
