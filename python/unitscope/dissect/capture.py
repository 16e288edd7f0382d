"""Activation capture for dissection: forward hooks on named modules, several layers per forward.

Like unitscope.hooks.LayerCapture (whose name resolution it shares), plus what a dataset-long pass
needs: `name@k` takes the k-th call (from 0) of a module that runs several times per forward; token
outputs (B, T, C) can become maps; once every requested output is captured the forward is cut
short (the rest of the network is not needed for dissection).
"""
from __future__ import annotations

import math

import torch

from unitscope.hooks import parse_layer, resolve_layer


class _Done(Exception):
    """Raised from the last hook of a forward to skip the rest of the network."""


def tokens_to_map(x: torch.Tensor, layer: str) -> torch.Tensor:
    """(B, T, C) token outputs -> (B, C, s, s): T = s*s, or s*s + n prefix tokens (class/register
    tokens, dropped) for the largest square s*s <= T with at most 8 extra tokens."""
    B, T, C = x.shape
    s = math.isqrt(T)
    if T - s * s > 8 or s == 0:
        raise ValueError(f"layer {layer!r}: cannot arrange {T} tokens as a square map (plus at most 8 prefix tokens)")
    return x[:, T - s * s:, :].transpose(1, 2).reshape(B, C, s, s)


class LayerCapture:
    """Context manager: `with LayerCapture(model, ["layer3", "layer4"]) as cap: acts = cap(x)`.

    `cap(x)` runs the model on x and returns {layer: Tensor[B, K, h, w]} (detached). With
    `tokens=True`, 3-D outputs (B, T, C) are rearranged to maps (tokens_to_map).
    """

    def __init__(self, model: torch.nn.Module, layers, *, tokens: bool = False):
        if isinstance(layers, str):
            layers = [layers]
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("layers must name at least one module, got an empty list")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers lists a layer twice: {self.layers}")
        self.model = model
        self.tokens = tokens
        self._specs = {}
        for spec in self.layers:
            name, call = parse_layer(spec)
            name, module = resolve_layer(model, name)
            self._specs[spec] = (module, name, call)
        self._handles: list = []
        self._calls: dict[str, int] = {}
        self._out: dict[str, torch.Tensor] = {}
        self._stop_after: bool | None = None  # cut the forward short once all layers are captured (after a full first run)
        self._full = False       # set while full() runs: no early exit (torch.compile traces full())

    def __enter__(self):
        for spec, (module, name, call) in self._specs.items():
            self._handles.append(module.register_forward_hook(self._hook(spec, name, call)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def _hook(self, spec, name, call):
        def hook(module, inputs, output):
            n = self._calls.get(spec, 0)
            self._calls[spec] = n + 1
            if (call is None and n == 0) or call == n:
                self._out[spec] = self._as_map(spec, output)
            if self._stop_after is not None and not self._full and len(self._out) == len(self._specs):
                raise _Done()
        return hook

    def _as_map(self, spec, output) -> torch.Tensor:
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {spec!r} returned {type(output).__name__}, not a tensor")
        out = output.detach()
        if out.dim() == 3 and self.tokens:
            out = tokens_to_map(out, spec)
        if out.dim() != 4:
            hint = " (token outputs: pass tokens=True)" if out.dim() == 3 else ""
            raise ValueError(f"layer {spec!r} gives shape {tuple(out.shape)}; dissection needs (B, K, h, w){hint}")
        return out

    def __call__(self, x: torch.Tensor) -> dict:
        self._full = False
        self._calls.clear()
        self._out.clear()
        first = self._stop_after is None
        try:
            self.model(x)
        except _Done:
            pass
        if first:  # a full forward: check every layer ran, and ran once unless a call was picked
            for spec, (_, name, call) in self._specs.items():
                n = self._calls.get(spec, 0)
                if n == 0:
                    raise ValueError(f"layer {spec!r} did not run during the forward pass")
                if call is None and n > 1:
                    raise ValueError(
                        f"module {name!r} ran {n} times in one forward (it is reused), so its output is "
                        f"ambiguous; pick one call with '{name}@k' (k = 0..{n - 1}) or a module that runs once")
                if call is not None and call >= n:
                    raise ValueError(f"layer {spec!r}: module {name!r} ran only {n} time(s) per forward")
            self._stop_after = True
        missing = [s for s in self._specs if s not in self._out]
        if missing:
            raise RuntimeError(f"layers {missing} were not captured in this forward")
        return {spec: self._out[spec] for spec in self.layers}

    def reset(self, full: bool = True) -> None:
        """Forget the last call's outputs; full=True: the next forward runs to the end."""
        self._full = full  # (cap(x) sets it back)
        self._calls.clear()
        self._out.clear()

    def full(self, x: torch.Tensor) -> dict:
        """Like cap(x) after the first call, but runs the whole forward without the exception that
        cuts it short: the form torch.compile traces. Compiled, call reset() before each call,
        outside the graph (Runner(cap, traced=cap.full, prepare=cap.reset)): torch guards on the
        state the hooks read, and a state left from the last call would recompile the graph."""
        self.reset()
        self.model(x)
        return {spec: self._out[spec] for spec in self.layers}
