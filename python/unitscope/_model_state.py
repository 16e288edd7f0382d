"""Run a model without side effects: every method that runs a user's model (dissect, saliency, featviz,
explain) leaves it as it found it, each module's own training flag and every buffer (BatchNorm's
running statistics) included. ModelState records them; untouched() is the context-manager form."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.parameter import is_lazy


class ModelState:
    """Each module's `training` flag and a copy of every buffer of `model`, taken now; restore() puts
    them back: a frozen BatchNorm in a model being fine-tuned stays in eval mode, MC-dropout in train
    mode, and running statistics that a forward in train mode updated (or replaced) come back.
restore() may run between a forward and its backward (Attribution.scores() restores after each
forward).

    Cost: one copy of the model's buffers (for a CNN, BatchNorm's statistics: a few floats per
    channel). Buffers not yet materialized (lazy modules) are left alone.
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.modes = [(m, m.training) for m in model.modules()]
        self.buffers = []  # (module, name, the tensor, a copy of its values)
        with torch.no_grad():
            for m in model.modules():
                for name, b in m._buffers.items():
                    if b is not None and not is_lazy(b):
                        self.buffers.append((m, name, b, b.clone()))

    def restore(self) -> None:
        for m, training in self.modes:
            m.training = training
        for m, name, b, saved in self.buffers:
            if m._buffers.get(name) is not b:
                m._buffers[name] = b  # replaced by the forward: the original tensor goes back
            # through .data: the buffer's version counter stays, so a backward still to come that saved
            # it (BatchNorm saves its running statistics) does not see an in-place change; in train
            # mode BatchNorm's backward reads the batch statistics it saved, never the running ones
            b.data.copy_(saved)


@contextmanager
def untouched(model: nn.Module, *, eval: bool = False):
    """`with untouched(model, eval=True): ...` runs the body with the model in eval mode (eval=False:
    the modes as they are) and restores each module's mode and every buffer on exit, also on error."""
    saved = ModelState(model)
    if eval:
        model.eval()
    try:
        yield model
    finally:
        saved.restore()
