"""Layer hooks shared by the CAM methods: find a layer by name or module, capture its output during
one forward pass (`name@k`: the k-th call of a module that runs several times), refuse a reused layer
given without a call number, and always remove the hooks."""
from __future__ import annotations

import torch
from torch import nn

from unitscope.hooks import parse_layer, resolve_layer  # resolve_layer re-exported: one definition


def _alternatives(model: nn.Module, name: str):
    """A few modules that usually run once (the last convolution/normalization layers, the last
    element of the last Sequential/ModuleList), to suggest instead of a reused one."""
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and n != name]
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m)]
    picks = convs[-2:]
    if stacks:
        n, m = stacks[-1] if not convs else max(stacks, key=lambda nm: len(nm[1]))
        picks.append(f"{n}.{len(m) - 1}" if n else str(len(m) - 1))
    picks = [p for p in dict.fromkeys(picks) if p != name]
    return ", ".join(picks) or "another layer"


class LayerCapture:
    """Context manager: record the output of one layer during a forward pass.

    layer: a module of `model`, its name, or "name@k" for the k-th call (from 0) of a module that
    runs several times per forward (EfficientNet's shared `_swish`, a ReLU reused in a block).

    After the forward, `output` is the layer's output Tensor (B, K, h, w) (still in the autograd
    graph when gradients are on). A layer called more than once in the forward and given without
    a call number is ambiguous: `check()` raises a ValueError that names it and suggests `name@k`
    and others. The hook is removed on exit, also when the forward raises.
    """

    def __init__(self, model: nn.Module, layer):
        self.model = model
        self.call = None
        if isinstance(layer, str):
            layer, self.call = parse_layer(layer)
        self.name, self.module = resolve_layer(model, layer)
        self.spec = self.name if self.call is None else f"{self.name}@{self.call}"
        self.calls = 0
        self.output = None
        self._handle = None

    def _hook(self, module, inputs, output):
        if self.call is None or self.calls == self.call:
            self.output = output
        self.calls += 1

    def __enter__(self):
        self.calls, self.output = 0, None
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False

    def check(self):
        """The captured output after one forward; raises if the layer ran 0 or several times."""
        kind = type(self.module).__name__
        if self.calls == 0:
            raise ValueError(f"layer {self.name!r} ({kind}) was not called during the forward pass")
        if self.call is None and self.calls > 1:
            raise ValueError(
                f"layer {self.name!r} ({kind}) is called {self.calls} times per forward pass (the same module "
                f"object is reused), so its output is ambiguous; pick one call with '{self.name}@k' "
                f"(k = 0..{self.calls - 1}) or a module that runs once, e.g. {_alternatives(self.model, self.name)}")
        if self.call is not None and self.call >= self.calls:
            raise ValueError(f"layer {self.spec!r}: module {self.name!r} ({kind}) ran only {self.calls} time(s) "
                             f"per forward pass (calls are numbered from 0)")
        out = self.output
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"layer {self.spec!r} must output a Tensor (B, K, h, w), got {got}")
        return out
