"""The base class every attribution method shares: input and target checks, the scored forward pass,
per-sample gradients and the channel reductions of gradient maps."""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

from unitscope._checks import check_choice, check_input, check_positive_int, warn_if_training  # noqa: F401 (re-exported: their home before _checks.py)
from unitscope._compile import Runner
from unitscope._model_state import untouched

REDUCTIONS = ("abs", "signed", "positive", "negative")
CHANNEL_REDUCTIONS = ("max", "sum", None)


class Attribution:
    """Base of all methods: `method = Method(model, ...)`, then `method(x, target=...)`.

    Args:
        model (nn.Module): the classifier; put it in eval mode yourself (BatchNorm in train mode
            mixes the images of a batch and breaks per-image attributions).
        output ("logits" | "softmax" | "log_softmax" | callable): which score is explained. A
            callable maps the model output to scores (B, N). Default: pre-softmax logits.
        preprocess (callable, optional): applied to x before the model, inside the graph, e.g. the
            ImageNet normalization of `unitscope.models.load(...).preprocess`; x then stays in pixel
            space, where baselines such as "black" mean what they say.
        compile ("auto" | True | False): run the model through torch.compile (unitscope._compile):
            "auto" runs the first batches eagerly with the input as given and in channels_last and
            keeps the faster, then compiles once the passes still to come in a call would save
            clearly more than the compile costs; False is the exact eager path. The forward-only
            many-pass methods (occlusion, LIME, KernelSHAP, Score-CAM) default to "auto" (a compiled
            forward alone ran 2-3x eager on this CPU); integrated gradients and SmoothGrad default to
            False: through a compiled forward+backward IG ran 0.97x eager here (benchmarks/RESULTS.md).

    Call:
        x (Tensor[B, C, H, W], floating): the images.
        target: None (the top class of each image), an int (the same class for all), a list or
            Tensor of B ints, or a Tensor/list of shape (B, T) for T classes per image.

    Returns a Tensor on x's device: (B, ...) for one target per image, (B, T, ...) for (B, T) targets.
    """

    default_output = "logits"
    compilable = False  # True where the forward has no hooks or autograd overrides of the method's own

    def __init__(self, model, *, output=None, preprocess=None, compile=False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess must be callable or None, got {type(preprocess).__name__}")
        output = self.default_output if output is None else output
        if not callable(output) and output not in ("logits", "softmax", "log_softmax"):
            raise ValueError(f"output must be 'logits', 'softmax', 'log_softmax' or a callable, got {output!r}")
        self.model = model
        self.output = output
        self.preprocess = preprocess
        self._runner = Runner(self._forward, compile, what=f"the model ({type(self).__name__})", pad=True,
                              channels_last=True)

    def _forward(self, x):
        return self.model(self.preprocess(x) if self.preprocess is not None else x)

    def plan_compile(self, calls_left: int) -> None:
        """Tell the forward's Runner how many more model passes this call will make."""
        self._runner.plan(calls_left)

    def batches(self, n, batch_size):
        """batched(n, batch_size), planning the forward's compilation for the batches still to come."""
        total = -(-n // batch_size)
        for i, span in enumerate(batched(n, batch_size)):
            yield span
            self.plan_compile(total - 1 - i)

    # ---- the scored forward pass -------------------------------------------------------------
    def scores(self, x, eager=False):
        """Scores (B, N) of the explained output for input x (B, C, H, W); eager=True bypasses
        torch.compile (for a forward with hooks of its own). Every model pass of every method comes
        here, and leaves the model unchanged: a model in train mode keeps its BatchNorm statistics."""
        with untouched(self.model):
            out = self._forward(x) if eager else self._runner(x)
        if self.output == "softmax":
            out = torch.softmax(out, dim=1)
        elif self.output == "log_softmax":
            out = torch.log_softmax(out, dim=1)
        elif callable(self.output):
            out = self.output(out)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the explained output must be a Tensor of shape (B, N) = ({x.shape[0]}, N), got {got}")
        return out

    def __call__(self, x, target=None):
        x = check_input(x)
        warn_if_training(self.model)
        targets, squeeze = self.resolve_targets(x, target)
        out = self._attribute(x, targets)
        return out[:, 0] if squeeze else out

    def _attribute(self, x, targets):
        """x (B, C, H, W); targets int64 (B, T) -> attributions (B, T, ...). Subclasses implement."""
        raise NotImplementedError

    def resolve_targets(self, x, target):
        """target as given -> (int64 Tensor (B, T) on x's device, whether to drop the T axis)."""
        B = x.shape[0]
        if target is None:
            with torch.no_grad():
                t = self.scores(x, eager=True).argmax(dim=1)  # one pass: not worth a no-grad graph
            return t[:, None], True
        if isinstance(target, bool):
            raise TypeError("target must be None, an int, B ints or a (B, T) array of ints, got bool")
        if isinstance(target, int):
            return torch.full((B, 1), target, dtype=torch.long, device=x.device), True
        t = torch.as_tensor(target, device=x.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"target must hold integers, got dtype {t.dtype}")
        t = t.long()
        if t.dim() == 0:
            return t.expand(B)[:, None].clone(), True
        if t.dim() == 1:
            if t.shape[0] != B:
                raise ValueError(f"target must have B = {B} entries (one per image), got {t.shape[0]}")
            return t[:, None], True
        if t.dim() == 2 and t.shape[0] == B and t.shape[1] >= 1:
            return t, False
        raise ValueError(f"target must be None, an int, B = {B} ints or shape (B, T) = ({B}, T), got shape {tuple(t.shape)}")

    def _check_target_range(self, scores, targets):
        n = scores.shape[1]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n):
            raise ValueError(f"target classes must lie in [0, {n}), got values in "
                             f"[{int(targets.min())}, {int(targets.max())}]")

    # ---- gradients ---------------------------------------------------------------------------
    def gradient(self, x, target):
        """d score[b, target[b]] / d x for every image b: x (B, C, H, W), target int64 (B,) -> (B, C, H, W).

        Images are independent (eval mode), so the gradient of the summed scores is per image. When
        x.requires_grad the graph is kept (create_graph) so the result can be differentiated.
        """
        keep = x.requires_grad
        xi = x if keep else x.detach().requires_grad_(True)
        with torch.enable_grad():
            s = self.scores(xi)
            self._check_target_range(s, target[:, None])
            picked = s.gather(1, target[:, None]).sum()
            (g,) = torch.autograd.grad(picked, xi, create_graph=keep)
        return g


def reduce_map(g, reduce="abs", channel="max"):
    """Gradient-like map g (..., C, H, W) -> reduced map.

    reduce: "abs" |g|, "signed" g, "positive" max(g, 0), "negative" max(-g, 0) (the size of the
    negative part). channel: "max" or "sum" over C -> (..., H, W), None keeps (..., C, H, W).
    """
    if reduce == "abs":
        g = g.abs()
    elif reduce == "positive":
        g = g.clamp(min=0)
    elif reduce == "negative":
        g = (-g).clamp(min=0)
    if channel == "max":
        return g.amax(dim=-3)
    if channel == "sum":
        return g.sum(dim=-3)
    return g


def per_target(fn, x, targets):
    """Run fn(x, target (B,)) -> (B, ...) for each column of targets (B, T); stack to (B, T, ...)."""
    return torch.stack([fn(x, targets[:, t]) for t in range(targets.shape[1])], dim=1)


# the progress bar of the running `show_progress` block and how deep `batched` loops are nested in it
_PROGRESS = contextvars.ContextVar("unitscope_saliency_progress", default=None)


@contextlib.contextmanager
def show_progress(desc, enabled=True):
    """A tqdm bar (on stderr) for the attribution methods called inside the block:
    `with show_progress("integrated gradients"): ig(x)`. It counts the batches of every method that
    scores its inputs in batches (integrated gradients, SmoothGrad, Score-CAM, occlusion, LIME,
    KernelSHAP); the total grows as each loop starts. enabled=False shows nothing."""
    if not enabled:
        yield
        return
    from unitscope._progress import progress_bar

    state = {"bar": progress_bar(desc=desc, total=0, unit="batch", leave=False), "depth": 0}
    token = _PROGRESS.set(state)
    try:
        yield
    finally:
        _PROGRESS.reset(token)
        state["bar"].close()


def batched(n, batch_size):
    """Start/stop pairs covering range(n) in chunks of batch_size; counted on the bar of an enclosing
    show_progress block (only the outermost loop: SmoothGrad's inner method runs inside its loop)."""
    state = _PROGRESS.get()
    outer = state is not None and state["depth"] == 0
    if outer:
        state["bar"].total += -(-n // batch_size)
        state["bar"].refresh()
    if state is not None:
        state["depth"] += 1
    try:
        for start in range(0, n, batch_size):
            yield start, min(n, start + batch_size)
            if outer:
                state["bar"].update(1)
    finally:
        if state is not None:
            state["depth"] -= 1
