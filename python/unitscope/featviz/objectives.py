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
    """A differentiable score per image. `layers` are the layer names whose outputs it reads;
    `batch` is the number of images it is defined for (an objective with one channel per image,
    such as channel(layer, [3, 7, 9])), or None for any batch."""

    def __init__(self, fn, layers=(), name="objective", batch: int | None = None):
        self.fn = fn
        self.layers = tuple(layers)
        self.name = name
        self.batch = batch

    def __call__(self, fwd: Forward) -> torch.Tensor:
        return self.fn(fwd)

    def __add__(self, other):
        other = _as_objective(other)
        if self.batch is not None and other.batch is not None and self.batch != other.batch:
            raise ValueError(f"cannot add objectives for {self.batch} and {other.batch} images: "
                             f"{self.name} + {other.name}")
        return Objective(lambda f: self(f) + other(f), self.layers + other.layers, f"{self.name} + {other.name}",
                         self.batch if self.batch is not None else other.batch)

    __radd__ = __add__

    def __sub__(self, other):
        return self + (-_as_objective(other))

    def __rsub__(self, other):
        return _as_objective(other) + (-self)

    def __neg__(self):
        return Objective(lambda f: -self(f), self.layers, f"-({self.name})", self.batch)

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            raise TypeError(f"an objective can be multiplied by a number, got {type(k).__name__}")
        return Objective(lambda f: k * self(f), self.layers, f"{k} * {self.name}", self.batch)

    __rmul__ = __mul__

    def __repr__(self):
        return f"Objective({self.name})"


def _as_objective(x) -> Objective:
    if isinstance(x, Objective):
        return x
    if isinstance(x, (int, float)):
        return Objective(lambda f: torch.full((f.image.shape[0],), float(x), device=f.image.device), (), repr(x))
    raise TypeError(f"cannot combine an objective with {type(x).__name__}")


def _units(n, what: str) -> list[int] | int:
    """An int, or a non-empty list of ints (one per image), checked."""
    if isinstance(n, (list, tuple, range)) or (isinstance(n, torch.Tensor) and n.dim() == 1):
        n = [int(c) for c in n]
        if not n:
            raise ValueError(f"{what} list is empty")
        return n
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int or a list of ints, got {type(n).__name__}")
    return n


def _select(fwd: Forward, layer: str, n) -> torch.Tensor:
    """Channel n of `layer` for every image (n an int), or channel n[i] for image i: (B, ...)."""
    a = fwd.acts[layer]
    wanted = n if isinstance(n, list) else [n]
    bad = [c for c in wanted if not 0 <= c < a.shape[1]]
    if bad:
        raise ValueError(f"channel {bad[0]} is out of range for layer {layer!r} with {a.shape[1]} channels")
    if not isinstance(n, list):
        return a[:, n]
    if a.shape[0] != len(n):
        raise ValueError(f"an objective with {len(n)} channels (one per image) got a batch of {a.shape[0]} images")
    return a[torch.arange(len(n), device=a.device), torch.tensor(n, device=a.device)]


def channel(layer: str, n) -> Objective:
    """Mean activation of channel n of `layer` over all positions. n may be a list [c0, c1, ...]:
    image i then maximizes channel c_i, and render() renders the whole list in one batch."""
    n = _units(n, "channel")

    def fn(f):
        a = _select(f, layer, n)
        return a.reshape(a.shape[0], -1).mean(dim=1)
    return Objective(fn, [layer], f"channel({layer!r}, {n})", len(n) if isinstance(n, list) else None)


def neuron(layer: str, n, x: int | None = None, y: int | None = None) -> Objective:
    """Activation of channel n of `layer` at one position (the centre by default); n may be a
    list, one channel per image, as in channel()."""
    n = _units(n, "neuron")

    def fn(f):
        a = _select(f, layer, n)
        if a.dim() == 1:
            return a
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            raise ValueError(f"neuron position (x={xx}, y={yy}) is outside layer {layer!r} of size {h}x{w}")
        return a[:, yy, xx]
    return Objective(fn, [layer], f"neuron({layer!r}, {n}, x={x}, y={y})", len(n) if isinstance(n, list) else None)


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


def diversity(layer: str) -> Objective:
    """Minus the mean cosine similarity of each image's Gram matrix (channel correlations of
    `layer`, i.e. its style) with the other images' of the batch; add it to render several distinct
    images of one unit: `channel(l, 7) + 0.5 * diversity(l)` with batch=4 (Olah et al. 2017). The
    images need distinct seeds (render's default int seed gives image i seed + i): identical
    images stay identical. Zero for a batch of one."""
    def fn(f):
        a = f.acts[layer]
        b, k = a.shape[:2]
        flat = a.reshape(b, k, -1)
        gram = torch.bmm(flat, flat.transpose(1, 2)) / flat.shape[2]
        g = torch.nn.functional.normalize(gram.reshape(b, -1), dim=1)
        cos = g @ g.T
        if b == 1:
            return torch.zeros(1, device=a.device, dtype=a.dtype)
        return -(cos.sum(dim=1) - cos.diagonal()) / (b - 1)
    return Objective(fn, [layer], f"diversity({layer!r})")


def l1(constant: float = 0.5) -> Objective:
    """Mean absolute distance of the image's pixels from `constant` (grey by default); subtract it
    to keep the image close to grey: `channel(...) - 0.1 * l1()`."""
    return Objective(lambda f: (f.image - constant).abs().mean(dim=(1, 2, 3)), (), f"l1({constant})")


def l2(constant: float = 0.5) -> Objective:
    """Mean squared distance of the image's pixels from `constant`; subtract it, as l1()."""
    return Objective(lambda f: ((f.image - constant) ** 2).mean(dim=(1, 2, 3)), (), f"l2({constant})")


def blur() -> Objective:
    """Half the mean squared difference between the image and its 3x3 blur ([1, 2, 1] / 4 in x
    and y), the blur held constant: subtracting it pulls each step towards the blurred image, as
    Lucid's blur_input_each_step (Nguyen et al. 2015 blur the image every few steps)."""
    def fn(f):
        im = f.image
        k = torch.tensor([1.0, 2.0, 1.0], device=im.device, dtype=im.dtype) / 4
        kernel = (k[:, None] * k[None, :]).expand(im.shape[1], 1, 3, 3)
        blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(im, (1, 1, 1, 1), mode="replicate"),
                                             kernel, groups=im.shape[1])
        return 0.5 * ((im - blurred.detach()) ** 2).mean(dim=(1, 2, 3))
    return Objective(fn, [], "blur()")
