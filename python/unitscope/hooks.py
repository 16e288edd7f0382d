"""The one way unitscope reads a layer: LayerCapture records named layers' outputs during a forward
pass, for dissection, saliency, feature visualization and explain alike; parse_layer/resolve_layer
turn a layer given by name ("name@k": the k-th call of a reused module) or as a module into a module."""
from __future__ import annotations

import difflib
import math

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


# where the "not a module" error points: the CLI swaps it for the command line with its own --model
LAYER_LISTER = "; unitscope.layers(model, input_size) (or `unitscope layers --model ...`) lists them"


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
        raise ValueError(f"layer {layer!r} is not a module of the model{hint}{LAYER_LISTER}")
    return layer, modules[layer]


def tokens_to_map(x: torch.Tensor, layer: str) -> torch.Tensor:
    """(B, T, C) token outputs -> (B, C, s, s): T = s*s, or s*s + n prefix tokens (class/register
    tokens, dropped) for the largest square s*s <= T with at most 8 extra tokens."""
    B, T, C = x.shape
    s = math.isqrt(T)
    if T - s * s > 8 or s == 0:
        raise ValueError(f"layer {layer!r}: cannot arrange {T} tokens as a square map (plus at most 8 prefix tokens)")
    return x[:, T - s * s:, :].transpose(1, 2).reshape(B, C, s, s)


def _alternatives(model: nn.Module, name: str) -> list[str]:
    """A few modules that usually run once (the last convolution/normalization layers, the last
    element of the longest Sequential/ModuleList), to suggest instead of a reused one."""
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and n != name]
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m)]
    picks = convs[-2:]
    if stacks:
        n, m = stacks[-1] if not convs else max(stacks, key=lambda nm: len(nm[1]))
        picks.append(f"{n}.{len(m) - 1}" if n else str(len(m) - 1))
    return [p for p in dict.fromkeys(picks) if p and p != name]


def _first_tensor(spec: str, output):
    """The captured tensor of a layer's output and a function putting a replacement in its place:
    a Tensor, or the first element of a tuple/list whose first element is a Tensor (attention and
    recurrent modules return (output, extras)); anything else is a TypeError."""
    if isinstance(output, torch.Tensor):
        return output, lambda t: t
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        if isinstance(output, list):
            return output[0], lambda t: [t, *output[1:]]
        if hasattr(output, "_fields"):  # a namedtuple
            return output[0], lambda t: type(output)(t, *output[1:])
        return output[0], lambda t: (t, *output[1:])
    raise TypeError(f"layer {spec!r} returned {type(output).__name__}; a capture needs a Tensor (or a tuple/list "
                    "whose first element is one)")


class _Done(Exception):
    """Raised from the last hook of a forward to skip the rest of the network (cap(x) only)."""


class LayerCapture:
    """Context manager recording the outputs of named layers during a forward pass.

        with LayerCapture(model, ["layer3", "layer4"]) as cap:
            model(x)
        cap.outputs["layer4"]          # Tensor (B, K, h, w), in the autograd graph unless detach=True
        LayerCapture(model, "_swish@1")  # the second call (from 0) of a module run twice per forward

        with LayerCapture(model, layers, detach=True) as cap:
            maps = cap(x)               # runs the model: {layer: Tensor[B, K, h, w]} (dissection)

    Args:
        model (nn.Module): the network.
        layers: one layer or a list of them (an empty list captures nothing): module names as in
            model.named_modules(), "name@k" for the k-th call (from 0) of a module that runs several
            times per forward, or module objects. Outputs are keyed by the name string as given (a
            module object by its name).
        detach (bool): store detached outputs (no graph kept). Default False: the outputs stay in the
            autograd graph, so gradients with respect to them can be taken (Grad-CAM).
        tokens (bool): maps()/cap(x) rearrange (B, T, C) token outputs into (B, C, s, s) maps.

    One rule for every method:
    - The capture is the layer's output as the layer returned it, whatever the model does to that
      tensor afterwards (ReLU(inplace=True), `out += identity`) and however far the forward runs. The
      hook hands the model a copy (`output.clone()`, in the graph: gradients reach the captured
      tensor through it) and keeps the original, which nothing downstream can write to. A copy
      rather than checking `output._version` afterwards: a changed version could only be refused or
      recomputed by a second forward that stops at the layer, and a gradient with respect to the
      layer's output needs the rest of the forward to start from a tensor that in-place operations
      leave alone. Cost: one copy of each captured output per forward, alive while the model uses it
      (no more than the capture itself holds); no copy when cap(x) cuts the forward short there.
    - A module that runs more than once in one forward and is named without "@k" has no single
      output: reading the outputs raises a ValueError that suggests its calls "name@0", "name@1", ...
      and modules that usually run once. "name@k" past the last call, or a layer that did not run, is a
      ValueError too. The outputs are checked when read (`outputs`, `output`, `maps()`, `check()`,
      cap(x)); call reset() between forwards inside one `with` (calls are counted until then).
    - A tuple/list output is captured by its first element (attention and recurrent modules return
      (output, extras)); any other non-tensor output is a TypeError.
    Hooks are removed on exit, also when the forward raises.
    """

    def __init__(self, model: nn.Module, layers, *, detach: bool = False, tokens: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(layers, (list, tuple)):
            layers = [layers]  # one layer (resolve_layer names what a bad one is)
        self.model = model
        self.detach, self.tokens = bool(detach), bool(tokens)
        self._specs = {}  # key -> (module name, call number or None, module)
        for layer in layers:
            call = None
            if isinstance(layer, str):
                name, call = parse_layer(layer)
                name, mod = resolve_layer(model, name)
                key = layer
            else:
                name, mod = resolve_layer(model, layer)
                key = name
            if key in self._specs or any(m is mod and c == call for _, c, m in self._specs.values()):
                raise ValueError(f"layers lists a layer twice: {key!r} in {list(layers)!r}")
            self._specs[key] = (name, call, mod)
        self.layers = list(self._specs)
        self._calls: dict[str, int] = {}
        self._out: dict[str, torch.Tensor] = {}
        self._handles = []
        self._checked = False  # a whole forward ran and its calls were checked: cap(x) may cut short
        self._cut = False      # set by cap(x) during its forward: stop once every layer is captured

    # ---- one layer (the saliency methods' use) ---------------------------------------------------
    def _one(self):
        if len(self._specs) != 1:
            raise ValueError(f"this capture holds {len(self._specs)} layers {self.layers}; read cap.outputs")
        key = self.layers[0]
        return key, self._specs[key]

    @property
    def spec(self) -> str:
        """The layer's key ("name" or "name@k")."""
        return self._one()[0]

    @property
    def name(self) -> str:
        return self._one()[1][0]

    @property
    def call(self) -> int | None:
        return self._one()[1][1]

    @property
    def module(self) -> nn.Module:
        return self._one()[1][2]

    @property
    def output(self) -> torch.Tensor:
        """The one layer's output (checked as `outputs` is)."""
        key = self._one()[0]
        return self.outputs[key]

    def check(self) -> torch.Tensor:
        """The one layer's output as a map Tensor (B, K, h, w) (checked as maps() is)."""
        key = self._one()[0]
        return self.maps()[key]

    # ---- the hooks -------------------------------------------------------------------------------
    def __enter__(self):
        self.reset()
        self._handles = [mod.register_forward_hook(self._hook(key, call))
                         for key, (_, call, mod) in self._specs.items()]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def _hook(self, key, call):
        def hook(module, inputs, output):
            n = self._calls.get(key, 0)
            self._calls[key] = n + 1
            if n != (0 if call is None else call):
                return None
            tensor, rebuild = _first_tensor(key, output)
            self._out[key] = tensor.detach() if self.detach else tensor
            if self._cut and len(self._out) == len(self._specs):
                raise _Done()  # nothing downstream runs: no copy needed
            return rebuild(tensor.clone())  # the model goes on with a copy; the capture keeps the original
        return hook

    def reset(self) -> None:
        """Forget the last forward's outputs and call counts."""
        self._calls.clear()
        self._out.clear()

    # ---- reading ---------------------------------------------------------------------------------
    def _check_calls(self) -> None:
        for key, (name, call, mod) in self._specs.items():
            n = self._calls.get(key, 0)
            if (n == 1 if call is None else call < n):  # (one call; or the k-th call happened)
                continue
            kind = type(mod).__name__
            if n == 0:
                raise ValueError(f"layer {key!r} ({kind}) was not called during the forward pass")
            if call is None:
                calls = [f"{name}@{k}" for k in range(min(n, 4))] + (["..."] if n > 4 else [])
                others = _alternatives(self.model, name)
                raise ValueError(
                    f"layer {key!r} ({kind}) is called {n} times per forward pass (the same module object is used "
                    f"at several places), so its output is ambiguous; pick one call with '{name}@k' (k = 0..{n - 1}) "
                    f"or a module that runs once; layers to try: {', '.join(calls + others)}")
            raise ValueError(f"layer {key!r}: module {name!r} ({kind}) ran only {n} time(s) per forward pass "
                             "(calls are numbered from 0)")

    @property
    def outputs(self) -> dict:
        """{layer: Tensor} of the last forward, each as its layer returned it (first element of a tuple)."""
        self._check_calls()
        return {key: self._out[key] for key in self.layers}

    def maps(self) -> dict:
        """{layer: Tensor[B, K, h, w]}: the outputs, token outputs (B, T, C) rearranged when tokens=True;
        any other shape is a ValueError."""
        out = {}
        for key, a in self.outputs.items():
            if a.dim() == 3 and self.tokens:
                a = tokens_to_map(a, key)
            if a.dim() != 4:
                hint = " (token outputs (B, T, C): pass tokens=True)" if a.dim() == 3 else ""
                raise ValueError(f"layer {key!r} must output a Tensor (B, K, h, w), got shape {tuple(a.shape)}{hint}")
            out[key] = a
        return out

    # ---- running the model (dissection) ----------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> dict:
        """Run the model on x inside the `with`; returns maps(). After the first call (a whole forward,
        checked), the forward stops as soon as every layer is captured: the rest of the network is
        not needed."""
        if not self._specs:
            raise ValueError("layers must name at least one module, got an empty list")
        self.reset()
        self._cut = self._checked
        try:
            self.model(x)
        except _Done:
            pass
        finally:
            self._cut = False
        out = self.maps()
        self._checked = True
        return out

    def full(self, x: torch.Tensor) -> dict:
        """Like cap(x) but always runs the whole forward, without the exception that cuts it short:
        the form torch.compile traces. Compiled, call reset() before each call, outside the graph
        (Runner(cap, traced=cap.full, prepare=cap.reset)): torch guards on the state the hooks read,
        and a state left from the last call would recompile the graph."""
        self.reset()
        self.model(x)
        return self.maps()
