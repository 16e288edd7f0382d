"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the layer's activations projected on their first
principal component (over the h*w locations, channels centered); no gradients, no class."""
from __future__ import annotations

import torch

from unitscope.saliency.cam_base import CAMBase


def first_component(A):
    """A (B, K, h, w) -> (B, h, w) float64: the centered (h*w, K) matrix of each image times its first
    right singular vector, with the sign the SVD returns (pytorch-grad-cam's get_2d_projection)."""
    B, K, h, w = A.shape
    M = A.detach().double().reshape(B, K, h * w).transpose(1, 2)
    M = M - M.mean(dim=1, keepdim=True)
    _, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return (M @ Vh[:, 0, :, None]).reshape(B, h, w)


class EigenCAM(CAMBase):
    """Eigen-CAM on `layer` (see CAMBase for the arguments); the map is the same for every target.

    sign ("max" | "svd"): the sign of a principal component is arbitrary. "max" (default, the sign
    correction of Seg-Eigen-CAM, Chung & Ying 2025, eq. 13) flips a projection whose most negative
    value is larger in size than its most positive one, so the strongest response is positive;
    "svd" keeps the sign the SVD returns, as pytorch-grad-cam's EigenCAM does (with relu=True that
    can leave an all-zero map, or the complement of the object).
    """

    def __init__(self, model, layer, *, sign="max", **kwargs):
        super().__init__(model, layer, **kwargs)
        if sign not in ("max", "svd"):
            raise ValueError(f"sign must be one of 'max', 'svd'; got {sign!r}")
        self.sign = sign

    def _attribute(self, x, targets):
        with torch.no_grad():
            A, s = self.activations_and_scores(x, grad=False)
        self._check_target_range(s, targets)
        p = first_component(A)
        if self.sign == "max":
            flip = p.flatten(1).amin(dim=1).abs() > p.flatten(1).amax(dim=1).abs()
            p = torch.where(flip[:, None, None], -p, p)
        B, T = targets.shape
        maps = self.reduce(p[:, None].float(), torch.ones((B, 1), dtype=torch.float32, device=p.device), x)
        return maps[:, None].expand(B, T, *maps.shape[1:]).clone()
