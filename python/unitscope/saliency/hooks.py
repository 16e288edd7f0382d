"""Layer hooks shared by the CAM methods: find a layer by name or module, capture its output during
one forward pass, refuse layers that run more than once per forward, and always remove the hooks."""
from __future__ import annotations

import torch
from torch import nn


def resolve_layer(model: nn.Module, layer):
    """layer (str name as in model.named_modules(), or an nn.Module inside model) -> (name, module)."""
    if isinstance(layer, str):
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            hint = ", ".join(names[-8:])
            raise ValueError(f"layer {layer!r} is not a module of the model; some of its modules: {hint}") from None
        return layer, module
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
    raise TypeError(f"layer must be a module name (str) or an nn.Module, got {type(layer).__name__}")


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

    After the forward, `output` is the layer's output Tensor (B, K, h, w) (still in the autograd
    graph when gradients are on). A layer called more than once in the forward (a shared activation
    module, a layer reused in a loop) is ambiguous: `check()` raises a ValueError that names it and
    suggests others. The hook is removed on exit, also when the forward raises.
    """

    def __init__(self, model: nn.Module, layer):
        self.model = model
        self.name, self.module = resolve_layer(model, layer)
        self.calls = 0
        self.output = None
        self._handle = None

    def _hook(self, module, inputs, output):
        self.calls += 1
        self.output = output

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
        if self.calls > 1:
            raise ValueError(
                f"layer {self.name!r} ({kind}) is called {self.calls} times per forward pass (the same module "
                f"object is reused), so its output is ambiguous; pick a module that runs once, e.g. "
                f"{_alternatives(self.model, self.name)}")
        out = self.output
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"layer {self.name!r} must output a Tensor (B, K, h, w), got {got}")
        return out
