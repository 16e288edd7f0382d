"""Fingerprints of what a dissection depends on, for its checkpoint's key: the model's weights, code
and behaviour (statistics of its outputs on a few probe images), and the preprocess (modules, functions,
closures described without memory addresses)."""
from __future__ import annotations

import functools
import hashlib
import inspect
import re

import torch

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<function f at 0x7f..>" in a repr differs in every process


def _repr(obj) -> str:
    return _ADDRESS.sub("", repr(obj))


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _source_digest(obj) -> str:
    """A digest of obj's source code, or '?' where Python cannot find it (built-ins, REPL classes)."""
    try:
        return _digest(inspect.getsource(obj))
    except (OSError, TypeError):
        return "?"


def _tensor_digest(t: torch.Tensor) -> str:
    if torch.nn.parameter.is_lazy(t):
        return "uninitialized"
    t = t.detach().to("cpu")
    return _digest(f"{tuple(t.shape)}:{t.dtype}", t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                   if t.numel() else b"")


def model_fingerprint(model: torch.nn.Module) -> dict:
    """{'weights': a digest of every state_dict entry (name, shape, dtype, strided sample of up to
    4096 values and the float64 sum; 'uninitialized' for lazy parameters), 'code': a digest of the
    module tree's repr (types and their settings: ReLU vs LeakyReLU(0.2)) and of each module class's
    source where Python can find it}."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        if torch.nn.parameter.is_lazy(t):
            h.update(f"{name}:uninitialized".encode())
            continue
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to("cpu", torch.float64) if flat.is_floating_point() else flat[::step].to("cpu", torch.int64)
        h.update(sample.numpy().tobytes())
        if flat.is_floating_point():
            h.update(repr(float(flat.double().sum())).encode())
    types = sorted({type(m) for m in model.modules()}, key=lambda c: (c.__module__, c.__qualname__))
    code = _digest(_repr(model), *(f"{c.__module__}.{c.__qualname__}:{_source_digest(c)}" for c in types))
    return {"weights": h.hexdigest(), "code": code}


def _value_digest(v, depth: int = 0) -> str:
    """A stable description of a value captured by a preprocess (no memory addresses)."""
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
        return repr(v)
    if isinstance(v, torch.Tensor):
        return _tensor_digest(v)
    if depth < 4 and isinstance(v, (tuple, list)):
        return "(" + ",".join(_value_digest(x, depth + 1) for x in v) + ")"
    if depth < 4 and isinstance(v, dict):
        return "{" + ",".join(f"{_value_digest(k, depth + 1)}:{_value_digest(x, depth + 1)}" for k, x in v.items()) + "}"
    if depth < 4 and callable(v):
        return describe_callable(v, depth + 1)
    return type(v).__qualname__


def _code_digest(code) -> str:
    consts = [_code_digest(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]
    return _digest(code.co_code, consts, code.co_names)


def describe_callable(fn, depth: int = 0) -> str:
    """A stable description of a preprocess: modules by type, repr, source and tensors; functions and
    lambdas by qualified name, bytecode, defaults and captured values; None is no preprocessing ('none')."""
    if fn is None:
        return "none"
    if isinstance(fn, torch.nn.Module):
        tensors = [_tensor_digest(t) for t in list(fn.parameters()) + list(fn.buffers())]
        return f"{type(fn).__module__}.{type(fn).__qualname__}:{_digest(_repr(fn), _source_digest(type(fn)), *tensors)}"
    if isinstance(fn, functools.partial):
        return f"partial({describe_callable(fn.func, depth + 1)},{_value_digest(fn.args, depth + 1)}," \
               f"{_value_digest(fn.keywords, depth + 1)})"
    if inspect.ismethod(fn):
        return f"{describe_callable(fn.__func__, depth + 1)}@{_value_digest(fn.__self__, depth + 1)}"
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    code = getattr(fn, "__code__", None)
    if code is None:  # a callable object or a built-in
        return f"{name}:{_source_digest(type(fn))}"
    cells = [c.cell_contents if _cell_full(c) else "<empty>" for c in (fn.__closure__ or ())]
    return f"{name}:{_digest(_code_digest(code), _value_digest(fn.__defaults__, depth), _value_digest(cells, depth))}"


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (the read raises ValueError on an empty cell)
    except ValueError:
        return False
    return True


def probe_stats(acts: dict) -> dict:
    """{layer: float64[K, 4]}: each unit's mean, standard deviation, minimum and maximum over the
    probe batch: the model's behaviour at the dissected layers, compared with a tolerance."""
    out = {}
    for layer, a in acts.items():
        a = a.detach().to("cpu", torch.float64).transpose(0, 1).reshape(a.shape[1], -1)
        out[layer] = torch.stack([a.mean(1), a.std(1, correction=0), a.amin(1), a.amax(1)], 1)
    return out


def probe_differs(saved, now, tol: float) -> list[str]:
    """Layers whose probe statistics differ by more than tol times the layer's largest magnitude."""
    bad = []
    for layer, b in now.items():
        a = saved[layer]
        both = torch.cat([a, b])
        finite = both[torch.isfinite(both)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        close = torch.isclose(a, b, rtol=0.0, atol=tol * scale, equal_nan=True) | (a == b)
        if not bool(close.all()):
            bad.append(layer)
    return bad
