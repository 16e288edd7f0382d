"""The project's shared vocabulary: argument validators (each names the argument and what it got) and
the settings several methods share, written once: the detector IoU threshold, the mask rules and
unions, the upsample names and their align_corners, what preprocess=None means."""
from __future__ import annotations

import warnings

import torch

IOU_THRESHOLD = 0.04          # a unit is a detector of its best concept above this IoU (Bau et al.)
THRESHOLD_OPS = (">", ">=")   # the mask rule: upsampled > threshold (NetDissect-Lite) or >= (the paper)
UNIONS = ("category", "dataset", "mask")  # union_mode 0, 1, 2 of the tally kernels
UPSAMPLE = {"bilinear": False, "bilinear-align-corners": True}  # upsample= -> align_corners
# preprocess=None means no preprocessing everywhere (dissect, saliency, featviz, explain): the model
# gets the [0, 1] images; pass the model's own (models.load(...).preprocess, or
# unitscope.dissect.imagenet_preprocess) where it expects normalized input.
PREPROCESS_NONE = "no preprocessing"


def check_input(x):
    """x: a floating (B, C, H, W) tensor with B >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one image, got shape {tuple(x.shape)}")
    return x


def check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_threshold_op(op, name: str = "threshold_op"):
    if op not in THRESHOLD_OPS:
        raise ValueError(f"{name} must be '>' or '>=', got {op!r}")
    return op


def check_union(union, name: str = "union"):
    if union not in UNIONS:
        raise ValueError(f"{name} must be 'category', 'dataset' or 'mask', got {union!r}")
    return union


def check_upsample(upsample, name: str = "upsample"):
    if upsample not in UPSAMPLE:
        raise ValueError(f"{name} must be one of {sorted(UPSAMPLE)}, got {upsample!r}")
    return upsample


def align_corners(upsample) -> bool:
    """align_corners of an upsample setting (anything but 'bilinear-align-corners': False)."""
    return UPSAMPLE.get(upsample, False) if isinstance(upsample, str) else False


def warn_if_training(model):
    if model.training:
        warnings.warn("the model is in training mode: BatchNorm/Dropout make each image's attribution depend on "
                      "the batch and on chance; call model.eval() first", stacklevel=3)
