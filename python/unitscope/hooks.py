"""Capture the outputs of named layers during a forward pass.

Used by feature visualization (and available to any method that reads a layer): layers are given
by name (as in model.named_modules()), as "name@k" for the k-th call (from 0) of a module that runs
several times per forward, or as module objects; a module that runs more than once in one forward
pass and is given without a call number has no single output, so it is an error that says so; hooks
are always removed, also when the forward raises.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn


def parse_layer(spec: str) -> tuple[str, int | None]:
    """'name' -> (name, None); 'name@k' -> (name, k): the k-th call (from 0) of a module that runs
    several times per forward (a shared activation module, say)."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"a layer must be a module name string, got {spec!r}")
    if "@" in spec:
        name, _, call = spec.rpartition("@")
        if not call.isdigit():
            raise ValueError(f"layer {spec!r}: the part after '@' must be a call number, got {call!r}")
        return name, int(call)
    return spec, None


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
    LayerCapture(model, ["_swish@1"])  # outputs["_swish@1"]: the second call of a reused module

    `detach=True` stores detached outputs (no autograd graph kept). `reset()` clears the outputs
    and call counts between forwards.
    """

    def __init__(self, model: nn.Module, layers, detach: bool = False):
        if isinstance(layers, (str, nn.Module)):
            layers = [layers]
        self.model = model
        self.detach = detach
        self.layers = []  # (key in outputs, call number or None, module)
        for layer in layers:
            call = None
            if isinstance(layer, str):
                layer, call = parse_layer(layer)
            name, mod = resolve_layer(model, layer)
            self.layers.append((name if call is None else f"{name}@{call}", call, mod))
        self.outputs: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._handles = []

    def _hook(self, key, call):
        def hook(module, inputs, output):
            n = self._calls.get(key, 0)
            self._calls[key] = n + 1
            if call is None and n > 0:
                raise RuntimeError(
                    f"layer {key!r} ({type(module).__name__}) ran more than once in one forward pass, so it has "
                    f"no single output; name one call ('{key}@k', k from 0) or pick a module that runs once (e.g. "
                    "the block or conv that feeds it). A module object reused at several places (a shared "
                    "activation, say) is the usual cause.")
            if call is not None and n != call:
                return
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {key!r} returned {type(output).__name__}, expected a Tensor")
            self.outputs[key] = output.detach() if self.detach else output
        return hook

    def reset(self):
        self.outputs.clear()
        self._calls.clear()

    def __enter__(self):
        self.reset()
        self._handles = [mod.register_forward_hook(self._hook(key, call)) for key, call, mod in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False
