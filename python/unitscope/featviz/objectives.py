"""What feature visualization maximizes: objectives over layer activations, logits or the image.

An Objective maps one forward pass (its captured activations, the logits and the input image) to a
score per image (B,); render() maximizes the batch sum. Objectives combine with + - * and unary -,
as in Lucid's render_vis (Olah et al., Distill 2017): `channel("layer4", 7) - 0.1 * total_variation()`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Forward:
    """What one forward pass exposes to objectives."""
    acts: dict          # layer name -> Tensor (B, K, h, w) (or (B, K) for linear layers)
    logits: torch.Tensor
    image: torch.Tensor  # (B, 3, H, W) in [0, 1], before preprocessing


class Objective:
    """A differentiable score per image. `layers` are the layer names whose outputs it reads."""

    def __init__(self, fn, layers=(), name="objective"):
        self.fn = fn
        self.layers = tuple(layers)
        self.name = name

    def __call__(self, fwd: Forward) -> torch.Tensor:
        return self.fn(fwd)

    def __add__(self, other):
        other = _as_objective(other)
        return Objective(lambda f: self(f) + other(f), self.layers + other.layers, f"{self.name} + {other.name}")

    __radd__ = __add__

    def __sub__(self, other):
        return self + (-_as_objective(other))

    def __rsub__(self, other):
        return _as_objective(other) + (-self)

    def __neg__(self):
        return Objective(lambda f: -self(f), self.layers, f"-({self.name})")

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            raise TypeError(f"an objective can be multiplied by a number, got {type(k).__name__}")
        return Objective(lambda f: k * self(f), self.layers, f"{k} * {self.name}")

    __rmul__ = __mul__

    def __repr__(self):
        return f"Objective({self.name})"


def _as_objective(x) -> Objective:
    if isinstance(x, Objective):
        return x
    if isinstance(x, (int, float)):
        return Objective(lambda f: torch.full((f.image.shape[0],), float(x), device=f.image.device), (), repr(x))
    raise TypeError(f"cannot combine an objective with {type(x).__name__}")


def _act(fwd: Forward, layer: str, n: int | None = None) -> torch.Tensor:
    a = fwd.acts[layer]
    if n is not None and not 0 <= n < a.shape[1]:
        raise ValueError(f"channel {n} is out of range for layer {layer!r} with {a.shape[1]} channels")
    return a


def channel(layer: str, n: int) -> Objective:
    """Mean activation of channel n of `layer` over all positions."""
    def fn(f):
        a = _act(f, layer, n)[:, n]
        return a.reshape(a.shape[0], -1).mean(dim=1)
    return Objective(fn, [layer], f"channel({layer!r}, {n})")


def neuron(layer: str, n: int, x: int | None = None, y: int | None = None) -> Objective:
    """Activation of channel n of `layer` at one position (the centre by default)."""
    def fn(f):
        a = _act(f, layer, n)
        if a.dim() == 2:
            return a[:, n]
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            raise ValueError(f"neuron position (x={xx}, y={yy}) is outside layer {layer!r} of size {h}x{w}")
        return a[:, n, yy, xx]
    return Objective(fn, [layer], f"neuron({layer!r}, {n}, x={x}, y={y})")


def layer(layer: str) -> Objective:
    """Mean squared activation of the whole layer ("DeepDream", Mordvintsev et al. 2015)."""
    def fn(f):
        a = f.acts[layer]
        return (a ** 2).reshape(a.shape[0], -1).mean(dim=1)
    return Objective(fn, [layer], f"layer({layer!r})")


def direction(layer: str, vector) -> Objective:
    """Mean dot product of the layer's activation vectors with `vector` (K,)."""
    v = torch.as_tensor(vector, dtype=torch.float32)

    def fn(f):
        a = f.acts[layer]
        if a.shape[1] != v.numel():
            raise ValueError(f"direction vector has {v.numel()} entries, layer {layer!r} has {a.shape[1]} channels")
        proj = torch.einsum("bk...,k->b...", a, v.to(a.device, a.dtype))
        return proj.reshape(a.shape[0], -1).mean(dim=1)
    return Objective(fn, [layer], f"direction({layer!r})")


def class_logit(n: int) -> Objective:
    """The pre-softmax logit of class n."""
    def fn(f):
        if not 0 <= n < f.logits.shape[1]:
            raise ValueError(f"class {n} is out of range for a model with {f.logits.shape[1]} outputs")
        return f.logits[:, n]
    return Objective(fn, [], f"class_logit({n})")


def total_variation() -> Objective:
    """Mean absolute difference of neighbouring pixels (Mahendran & Vedaldi 2015); subtract it to
    penalize high frequencies: `channel(...) - 0.05 * total_variation()`."""
    def fn(f):
        im = f.image
        dx = (im[..., :, 1:] - im[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        dy = (im[..., 1:, :] - im[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        return dx + dy
    return Objective(fn, [], "total_variation()")
