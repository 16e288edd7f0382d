"""unitscope.models: a small registry of real pretrained CNNs that load offline.

`load(name)` gives a LoadedModel (the eval-mode model, its input preprocessing, input size,
ImageNet class names and a default layer for class activation maps); `names()` lists what is known.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import torch
from torch import nn

from unitscope.models.images import load_image, read_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel: maps a float batch in [0, 1] (B, 3, H, W) to model input."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"x must have shape (B, {self.mean.shape[1]}, H, W), got {tuple(x.shape)}")
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)


@dataclass(frozen=True)
class LoadedModel:
    """A pretrained model ready for inference.

    model: the nn.Module in eval mode, taking preprocessed input.
    preprocess: nn.Module mapping a float batch in [0, 1] (B, 3, H, W) to model input.
    input_size: (H, W) the model was trained at.
    class_names: list of class names, index = class id.
    cam_layer: the default layer for Grad-CAM-style methods: a module name, or "name@k" for the
        k-th call of a module that runs several times per forward (see the model's loader for why).
    """
    name: str
    model: nn.Module
    preprocess: nn.Module
    input_size: tuple
    class_names: list = field(repr=False)
    cam_layer: str = ""

    def predict(self, x):
        """Logits (B, num_classes) for a float batch in [0, 1] (B, 3, H, W), without gradients."""
        with torch.no_grad():
            return self.model(self.preprocess(x))


@cache
def imagenet_class_names() -> tuple:
    """The 1000 ImageNet-1k class names (index = class id), as shipped in imagenet_classes.txt."""
    text = resources.files("unitscope.models").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt must list 1000 names, has {len(names)}")
    return names


def _efficientnet_lite0(device):
    """EfficientNet-Lite0; cam_layer "_swish@1" is the head's activated output (B, 1280, 7, 7), in [0, 6].

    Why: the head is _conv_head -> _bn1 -> ReLU6 -> average pool -> _fc, and the ReLU6 module
    `_swish` also runs after the stem, so its second call (`_swish@1`) is the head activation: the
    last activated convolutional output, the layer the CAM papers explain (ResNet's layer4). The
    logits are linear in its spatial mean, so Grad-CAM there is exactly CAM (Zhou et al. 2016) and
    the signed map sums to the class logit minus the fc bias; its values are >= 0, as Score-CAM and
    Grad-CAM++ assume (2 + S g >= 2: no pole in Grad-CAM++'s alpha). The former default `_bn1` is
    the BatchNorm output before the ReLU6: 90% of its values are negative, so Score-CAM there
    (positive weights times mostly negative maps) is zero everywhere once all 1280 channels enter.

    Measured with benchmarks/compare_cam_layers.py (all channels) on scikit-image's chelsea,
    astronaut, coffee and rocket at 224x224 (per photo in benchmarks/RESULTS_saliency.md), means
    over the photos:

        layer      negative  Grad-CAM top-5 correlation  Score-CAM nonzero pixels
        _bn1       0.90      0.77                        0.00
        _swish@1   0.00      0.82                        1.00

    Class discrimination is not the reason: the Grad-CAM maps of a photo's top-5 classes correlate
    about as much at both layers (a little more at `_swish@1`; high on chelsea, whose top classes are
    four cats, at both). For a BatchNorm output pass layer="_bn1" explicitly.
    """
    from unitscope.models.efficientnet_lite import build_efficientnet_lite0

    return LoadedModel(name="efficientnet_lite0", model=build_efficientnet_lite0().to(device).eval(),
                       preprocess=Normalize(IMAGENET_MEAN, IMAGENET_STD).to(device), input_size=(224, 224),
                       class_names=list(imagenet_class_names()), cam_layer="_swish@1")


_REGISTRY: dict[str, Callable] = {"efficientnet_lite0": _efficientnet_lite0}


def names() -> list:
    """Names `load` accepts."""
    return sorted(_REGISTRY)


def load(name: str, device=None) -> LoadedModel:
    """Load a registered pretrained model (offline) onto `device` (default CPU), in eval mode."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[key](torch.device(device) if device is not None else torch.device("cpu"))


__all__ = ["LoadedModel", "Normalize", "load", "names", "imagenet_class_names", "load_image", "read_image",
           "IMAGENET_MEAN", "IMAGENET_STD"]
