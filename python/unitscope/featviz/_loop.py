"""What every gradient-ascent loop on a model's input shares (render, the adversarial example):
the preprocess argument's meaning, and the model held frozen and in eval mode for the duration."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from unitscope._model_state import untouched
from unitscope.models import IMAGENET_MEAN, IMAGENET_STD, Normalize


def resolve_preprocess(preprocess):
    """"imagenet" -> Normalize(ImageNet mean, std); None (the model takes [0, 1] images) and callables
    are returned as they are."""
    if isinstance(preprocess, str):
        if preprocess != "imagenet":
            raise ValueError(f"preprocess must be 'imagenet', None or a callable, got {preprocess!r}")
        return Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"preprocess must be 'imagenet', None or a callable, got {type(preprocess).__name__}")
    return preprocess


@contextmanager
def frozen(model: nn.Module):
    """The model in eval mode with no parameter requiring gradients; on exit each module's own mode,
    every buffer and the parameters' requires_grad come back (unitscope._model_state)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    with untouched(model, eval=True):
        for p in trainable:
            p.requires_grad_(False)
        try:
            yield model
        finally:
            for p in trainable:
                p.requires_grad_(True)
