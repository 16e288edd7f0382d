"""Guided backpropagation (Springenberg et al., "Striving for Simplicity", ICLR workshop 2015): the
input gradient where every rectifier passes back only positive gradients.

How it is done: a forward hook on each activation module wraps its output in an identity whose
backward keeps max(grad, 0); the module's own backward then applies its derivative (the x > 0 mask
of ReLU, 0 < x < 6 of ReLU6, ...), so the result is relu'(x) * max(grad, 0). This works for in-place
activations and for a module object called several times per forward.

Activations written as functions (F.relu, torch.relu, x.relu(), F.gelu, ...) have no module to hook.
They are detected during the same forward with a TorchFunctionMode that records every such call made
outside an activation module (guided, or left unguided on purpose by `activations=`), with the name
of the module it happened in; any found raise an error naming them. torch.sigmoid / torch.tanh called as functions are not flagged: in CNNs they are
gates (squeeze-excitation, attention) whose ordinary gradient guided backprop leaves alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from unitscope.saliency.base import (
    CHANNEL_REDUCTIONS,
    REDUCTIONS,
    Attribution,
    check_choice,
    check_input,
    reduce_map,
    warn_if_training,
)

# monotone activation modules hooked by default
MONOTONE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.Hardtanh, nn.Softplus,
            nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.RReLU)
# activation modules that are not monotone: refused unless listed in `activations=`
NON_MONOTONE = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)

_MODULES = MONOTONE + NON_MONOTONE

_FUNCTIONAL = {F.relu, F.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu, F.celu, F.gelu,
               F.silu, F.mish, F.hardswish, F.hardtanh, F.hardtanh_, F.softplus, F.prelu, F.rrelu,
               torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, torch.selu, torch.celu,
               torch.prelu, torch.rrelu}


class _PositiveGrad(torch.autograd.Function):
    """Identity forward (a copy, so in-place activations stay safe); backward max(grad, 0)."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


class _FunctionalWatch(TorchFunctionMode):
    """Records functional activations called outside the hooked activation modules."""

    def __init__(self, stack):
        super().__init__()
        self.stack = stack  # names of the modules currently running (innermost last)
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _FUNCTIONAL and not (self.stack and self.stack[-1][1]):
            where = self.stack[-1][0] if self.stack else "<model>"
            self.found.append((getattr(func, "__name__", str(func)), where or "<model>"))
        return func(*args, **(kwargs or {}))


class GuidedBackprop(Attribution):
    """Guided backpropagation map.

    Args:
        activations ("monotone" | "relu" | tuple of nn.Module types): activation modules to guide.
            "monotone" (default): every monotone one (ReLU, ReLU6, LeakyReLU, ELU, Sigmoid, Tanh,
            ...; the MONOTONE tuple); a model holding GELU / SiLU / Mish / Hardswish modules is
            refused unless their types are listed in a tuple. "relu" (Captum's GuidedBackprop):
            nn.ReLU modules only; every other activation keeps its ordinary gradient and none is
            refused (add check_functional=False to let functional ReLUs through unguided too).
        reduce, channel: as VanillaGradient; defaults "signed", None (the raw (B, C, H, W) image).
        check_functional (bool): detect functional activations (see the module notes) and raise.

    Returns float Tensor (B, C, H, W) (or reduced) on x's device.
    """

    def __init__(self, model, *, activations=MONOTONE, reduce="signed", channel=None, check_functional=True,
                 output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        relu_only = isinstance(activations, str) and activations == "relu"
        if isinstance(activations, str):
            activations = {"monotone": MONOTONE, "relu": (nn.ReLU,)}.get(activations, activations)
        if isinstance(activations, str) or not isinstance(activations, (tuple, list)) or not activations or not all(
                isinstance(a, type) and issubclass(a, nn.Module) for a in activations):
            raise TypeError(f"activations must be 'monotone', 'relu' or a non-empty tuple of nn.Module types, "
                            f"got {activations!r}")
        self.activations = tuple(activations)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.channel = check_choice(channel, CHANNEL_REDUCTIONS, "channel")
        self.check_functional = bool(check_functional)
        bad = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
               if isinstance(m, NON_MONOTONE) and not isinstance(m, self.activations) and not relu_only]
        if bad:
            raise ValueError(f"guided backprop needs monotone activations; the model has non-monotone ones: "
                             f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; pass their types in "
                             f"activations= to guide them anyway")
        if not any(isinstance(m, self.activations) for m in model.modules()) and not check_functional:
            raise ValueError("the model has no activation module to hook (types: "
                             f"{', '.join(a.__name__ for a in self.activations)})")

    def raw(self, x, target):
        """Guided gradient (B, C, H, W) for target (B,)."""
        handles, stack = [], []

        def guide(module, inputs, output):
            return _PositiveGrad.apply(output)

        def push(name, is_act):
            def pre(module, inputs):
                stack.append((name, is_act))
            return pre

        def pop(module, inputs, output):
            if stack:
                stack.pop()

        try:
            for name, m in self.model.named_modules():
                is_act = isinstance(m, self.activations)
                if is_act:
                    handles.append(m.register_forward_hook(guide))
                if self.check_functional:
                    # calls inside any activation module are that module's own, guided or deliberately not
                    handles.append(m.register_forward_pre_hook(push(name, is_act or isinstance(m, _MODULES))))
                    handles.append(m.register_forward_hook(pop))
            if self.check_functional:
                watch = _FunctionalWatch(stack)
                with watch:
                    g = self.gradient(x, target)
                if watch.found:
                    seen = list(dict.fromkeys(f"{f} in {w!r}" for f, w in watch.found))
                    raise ValueError(
                        "guided backprop cannot hook functional activations; found: " + ", ".join(seen[:6])
                        + (" ..." if len(seen) > 6 else "") + ". Use activation modules (nn.ReLU, ...) in the model, "
                        "or pass check_functional=False to leave them with their ordinary gradient")
                if not any(isinstance(m, self.activations) for m in self.model.modules()):
                    raise ValueError("the model has no activation module to hook (types: "
                                     f"{', '.join(a.__name__ for a in self.activations)})")
            else:
                g = self.gradient(x, target)
        finally:
            for h in handles:
                h.remove()
        return g

    def __call__(self, x, target=None):
        x = check_input(x)
        warn_if_training(self.model)
        targets, squeeze = self.resolve_targets(x, target)
        out = torch.stack([reduce_map(self.raw(x, targets[:, t]), self.reduce, self.channel)
                           for t in range(targets.shape[1])], dim=1)
        return out[:, 0] if squeeze else out
