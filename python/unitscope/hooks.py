"""Capture the outputs of named layers during a forward pass.

Used by feature visualization (and available to any method that reads a layer): layers are given
by name (as in model.named_modules()) or as module objects; a module that runs more than once in one
forward pass has no single output, so it is an error that says so; hooks are always removed, also
when the forward raises.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn


def resolve_layer(model: nn.Module, layer) -> tuple[str, nn.Module]:
    """(name, module) for a layer given by name or as a module of `model`."""
    if isinstance(layer, nn.Module):
        for name, mod in model.named_modules():
            if mod is layer:
                return name, mod
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str) or an nn.Module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer not in modules:
        names = [n for n in modules if n]
        close = list(dict.fromkeys(difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
                                   + [n for n in names if layer in n or n in layer]))[:5]
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"layer {layer!r} is not a module of the model{hint}")
    return layer, modules[layer]


class LayerCapture:
    """Context manager recording each layer's output of one forward pass.

    with LayerCapture(model, ["layer3", "layer4"]) as cap:
        model(x)
    cap.outputs["layer4"]   # Tensor (B, K, h, w), still attached to the graph

    `detach=True` stores detached outputs (no autograd graph kept). `reset()` clears the outputs
    and call counts between forwards.
    """

    def __init__(self, model: nn.Module, layers, detach: bool = False):
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        self.model = model
        self.detach = detach
        self.layers = [resolve_layer(model, layer) for layer in layers]
        self.outputs: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles = []

    def _hook(self, name):
        def hook(module, inputs, output):
            self._calls[name] = self._calls.get(name, 0) + 1
            if self._calls[name] > 1:
                raise RuntimeError(
                    f"layer {name!r} ({type(module).__name__}) ran more than once in one forward pass, so it has "
                    "no single output; pick a module that runs once (e.g. the block or conv that feeds it). "
                    "A module object reused at several places (a shared activation, say) is the usual cause.")
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returned {type(output).__name__}, expected a Tensor")
            self.outputs[name] = output.detach() if self.detach else output
        return hook

    def reset(self):
        self.outputs.clear()
        self._calls.clear()

    def __enter__(self):
        self.reset()
        self._handles = [mod.register_forward_hook(self._hook(name)) for name, mod in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False
