"""The adversarial example as the counterpart of feature visualization: targeted projected gradient
ascent (Madry et al. 2018) on a class's log-probability from a photo, within an L-inf or L2 ball,
and `contrast`, which puts it beside the rendering of the same class's logit from noise."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from unitscope.featviz._loop import frozen, resolve_preprocess
from unitscope.featviz.objectives import Forward, Objective, class_logit
from unitscope.featviz.render import Rendering, render

NORMS = ("linf", "l2")


def log_probability(n) -> Objective:
    """log softmax(logits)[n] per image; n an int or a LongTensor (B,) of one class per image."""
    def fn(f):
        k = f.logits.shape[1]
        t = torch.as_tensor(n, device=f.logits.device).expand(f.logits.shape[0])
        if ((t < 0) | (t >= k)).any():
            raise ValueError(f"target {t.tolist()} is out of range for a model with {k} outputs")
        return torch.log_softmax(f.logits, dim=1).gather(1, t[:, None])[:, 0]
    return Objective(fn, [], f"log_probability({n if isinstance(n, int) else 'per image'})")


@dataclass
class AdversarialResult:
    """image: the adversarial images (B, 3, H, W) float32 in [0, 1]; perturbation = image - photo, within
    the eps ball of `norm`; probs_before / probs_after: softmax class probabilities (B, C) of the photo and
    of the adversarial image; target (B,) int64; history: the batch-summed target log-probability at
    every step. All on the CPU."""
    image: torch.Tensor
    perturbation: torch.Tensor
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    target: torch.Tensor
    eps: float
    norm: str
    history: list

    @property
    def success(self) -> torch.Tensor:
        """(B,) bool: the target class is the most probable one after the perturbation."""
        return self.probs_after.argmax(dim=1) == self.target

    def perturbation_norm(self) -> torch.Tensor:
        """(B,) the perturbation's size in the result's norm (max |d| for linf, sqrt(sum d^2) for l2)."""
        d = self.perturbation.flatten(1)
        return d.abs().amax(dim=1) if self.norm == "linf" else d.norm(dim=1)

    def perturbation_image(self, i: int = 0, amplify: float | None = None) -> torch.Tensor:
        """Image i's perturbation made visible, (3, H, W) in [0, 1]: 0.5 + amplify * d, by default
        amplified so that its largest entry reaches 0 or 1."""
        d = self.perturbation[i]
        gain = amplify if amplify is not None else 0.5 / max(float(d.abs().max()), 1e-12)
        return (0.5 + gain * d).clamp(0, 1)


def _check(x, eps, steps, norm, step_size):
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor (B, 3, H, W) in [0, 1], got {got}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"x must lie in [0, 1], got {int((~torch.isfinite(x)).sum())} NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must lie in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, (int, float))
                                  or not 0 < step_size < float("inf")):
        raise ValueError(f"step_size must be a finite number > 0 or None, got {step_size!r}")


def _project(delta, x, eps, norm):
    """Nearest point of the eps ball (per image) whose image x + delta stays in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(eps / n, max=1.0)
    return (x + delta).clamp(0, 1) - x  # clamping only shrinks |delta| entrywise: still in the ball


def adversarial(model: nn.Module, x: torch.Tensor, target, eps: float, steps: int = 40, *, norm: str = "linf",
                step_size: float | None = None, preprocess="imagenet", device=None,
                progress: bool = False) -> AdversarialResult:
    """Targeted PGD: the image within `eps` of `x` that makes `model` predict `target`.

    Ascends log softmax(model(preprocess(x + delta)))[target] (the objective log_probability(target))
    by steps of size `step_size` along sign(gradient) (linf) or gradient / |gradient|_2 (l2), projecting
    delta back onto {|delta|_norm <= eps} and x + delta onto [0, 1] after every step. Starts at delta = 0,
    so the result is deterministic.

    Args:
        model: the classifier; eval mode and frozen for the duration, restored afterwards.
        x (Tensor[B, 3, H, W], float in [0, 1]): the photos, e.g. models.load_image(path, 224).
        target (int or sequence of B ints): the class to reach, one for all or one per image.
        eps (float > 0): the perturbation budget in pixel units of [0, 1] (linf: e.g. 2/255; l2: e.g. 1.0).
        steps (int >= 1): PGD iterations. step_size: default 2.5 * eps / steps (Madry et al.).
        norm ("linf" | "l2"), preprocess ("imagenet", None or a callable) as in render().
    Returns:
        AdversarialResult (image, perturbation, probs_before, probs_after, target, eps, norm, history).
    """
    _check(x, eps, steps, norm, step_size)
    preprocess = resolve_preprocess(preprocess)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = x.detach().to(device, torch.float32)
    try:
        t = torch.as_tensor(target).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"target must be an int or a sequence of ints, got {target!r}")
    t = t.to(torch.int64)
    if t.numel() not in (1, x.shape[0]):
        raise ValueError(f"target must be one class or one per image ({x.shape[0]}), got {t.numel()}")
    t = t.expand(x.shape[0]).to(device)
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    goal = log_probability(t)

    def logits_of(im):
        return model(preprocess(im) if preprocess is not None else im)

    history = []
    with frozen(model):
        with torch.no_grad():
            before = logits_of(x)
        if not ((t >= 0) & (t < before.shape[1])).all():
            raise ValueError(f"target {t.tolist()} is out of range for a model with {before.shape[1]} outputs")
        delta = torch.zeros_like(x)
        from unitscope._progress import progress_bar
        for _ in progress_bar(range(steps), desc=f"adversarial {norm} eps={eps:g}", disable=not progress, leave=False):
            delta.requires_grad_(True)
            im = x + delta
            score = goal(Forward({}, logits_of(im), im)).sum()
            (grad,) = torch.autograd.grad(score, delta)
            with torch.no_grad():
                if norm == "linf":
                    step = grad.sign()
                else:
                    step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                delta = _project(delta + alpha * step, x, eps, norm)
            history.append(float(score.detach()))
        with torch.no_grad():
            after = logits_of(x + delta)
    return AdversarialResult(image=(x + delta).cpu(), perturbation=delta.cpu(),
                             probs_before=torch.softmax(before, 1).cpu(), probs_after=torch.softmax(after, 1).cpu(),
                             target=t.cpu(), eps=float(eps), norm=norm, history=history)


@dataclass
class Contrast:
    """One class seen two ways: `rendering`, its logit maximized from noise (interpretable), and
    `adversarial`, a photo pushed to it within eps (imperceptible). Same ascent, different start,
    constraint and goal."""
    rendering: Rendering
    adversarial: AdversarialResult

    def save(self, path, class_names=None):
        """A PNG grid: photo | perturbation (amplified to fill [0, 1] around grey) | adversarial image |
        feature visualization, titled with the top class and its probability. Returns path."""
        from unitscope import viz

        a = self.adversarial

        def name(k):
            return class_names[k] if class_names is not None else f"class {k}"
        k0, k1, t = int(a.probs_before[0].argmax()), int(a.probs_after[0].argmax()), int(a.target[0])
        tiles = [a.image[0] - a.perturbation[0], a.perturbation_image(0), a.image[0], self.rendering.images[0]]
        titles = [f"photo: {name(k0)} {a.probs_before[0, k0]:.2f}", f"{a.norm} eps {a.eps:.3g} (scaled)",
                  f"adversarial: {name(k1)} {a.probs_after[0, k1]:.2f}", f"featviz: logit of {name(t)}"]
        return viz.save_grid(tiles, path, titles=titles)


def contrast(model: nn.Module, photo: torch.Tensor, target: int, *, eps: float = 2 / 255, norm: str = "linf",
             adversarial_steps: int = 20, render_steps: int = 256, size=None, lr: float = 0.05,
             preprocess="imagenet", device=None, seed: int = 0, progress: bool = False, **render_kwargs) -> Contrast:
    """The feature visualization of class `target`'s logit (render from noise, at the photo's size unless
    `size` is given; other render() options through render_kwargs) and the adversarial example towards
    `target` from `photo` (Tensor[1, 3, H, W] in [0, 1]), as a Contrast; `.save(path, class_names)` draws them."""
    # the rendering's own arguments are checked here too: a bad one must not fail after the adversarial work
    if isinstance(render_steps, bool) or not isinstance(render_steps, int) or render_steps < 1:
        raise ValueError(f"render_steps must be an int >= 1, got {render_steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    adv = adversarial(model, photo, target, eps, adversarial_steps, norm=norm, preprocess=preprocess, device=device,
                      progress=progress)
    size = tuple(photo.shape[-2:]) if size is None else size
    rendering = render(model, class_logit(int(target)), size=size, steps=render_steps, lr=lr, preprocess=preprocess,
                       device=device, seed=seed, progress=progress, **render_kwargs)
    return Contrast(rendering, adv)
