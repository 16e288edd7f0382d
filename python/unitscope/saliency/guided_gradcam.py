"""Guided Grad-CAM (Selvaraju et al., ICCV 2017, section 3.1): the guided backpropagation image
multiplied point-wise by the Grad-CAM map bilinearly upsampled to the input size."""
from __future__ import annotations

import torch

from unitscope.saliency.base import (CHANNEL_REDUCTIONS, REDUCTIONS, Attribution, check_choice, reduce_map)
from unitscope.saliency.gradcam import GradCAM
from unitscope.saliency.guided_backprop import MONOTONE, GuidedBackprop


class GuidedGradCAM(Attribution):
    """GuidedBackprop(x) * upsample(GradCAM(x)).

    Args:
        layer: the Grad-CAM layer. activations, check_functional: as GuidedBackprop.
        reduce, channel: applied to the product; defaults "signed", None -> (B, C, H, W).
    """

    def __init__(self, model, layer, *, activations=MONOTONE, check_functional=True, reduce="signed", channel=None,
                 backend=None, output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        self.gradcam = GradCAM(model, layer, backend=backend, output=output, preprocess=preprocess)
        self.guided = GuidedBackprop(model, activations=activations, check_functional=check_functional,
                                     output=output, preprocess=preprocess)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")

    def _attribute(self, x, targets):
        cam = self.gradcam._attribute(x, targets)  # (B, T, H, W) float32
        guided = torch.stack([self.guided.raw(x, targets[:, t]) for t in range(targets.shape[1])], dim=1)
        return reduce_map(guided * cam[:, :, None].to(guided.dtype), self.reduce, self.channel)
