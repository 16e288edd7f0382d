"""Checks for state dicts read back from a checkpoint or another process (docs/design.md,
"Conventions": nothing read back is trusted): exact keys, plain configuration values, tensor type, dtype,
shape and device, value ranges, and a digest that catches any edit the invariant checks cannot.

The digest (blake2b over every field) detects corruption and edits of a saved state; it is no
signature: whoever recomputes it can forge a state. Memory safety never rests on it: every
object checks its invariants (and every kernel its sizes) whatever the digest says.
"""
from __future__ import annotations

import hashlib

import torch

DIGEST = "digest"
MAX_COUNT = 2 ** 62  # far above any real count; keeps sums of counts from overflowing int64


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _feed(h, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        # an ndarray is a buffer; numpy's stubs do not declare __buffer__ for every python version
        h.update(memoryview(t.view(torch.uint8).numpy()))  # type: ignore[arg-type]
    elif isinstance(value, dict):
        h.update(b"D")
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            _feed(h, value[k])
    else:
        h.update(f"{type(value).__name__}:{value!r}".encode())


def digest(state: dict) -> str:
    """Hex blake2b-128 over every field of `state` except the digest itself (names, plain values,
    tensors' dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, {k: v for k, v in state.items() if k != DIGEST})
    return h.hexdigest()


def with_digest(state: dict) -> dict:
    """state plus its digest (what every state_dict() returns)."""
    state[DIGEST] = digest(state)
    return state


def check_keys(state, keys, what: str) -> None:
    """state must be a dict with exactly `keys` (plus the digest)."""
    if not isinstance(state, dict):
        raise TypeError(f"{what}.load_state_dict expects a dict from {what}.state_dict(), got {type(state).__name__}")
    allowed = set(keys) | {DIGEST}
    missing = [k for k in (*keys, DIGEST) if k not in state]
    unknown = [k for k in state if not (isinstance(k, str) and k in allowed)]
    if missing:
        raise ValueError(f"{what} state is missing key(s) {missing}")
    if unknown:
        raise ValueError(f"{what} state has unknown key(s) {[_short(k) for k in unknown]}")


def check_digest(state: dict, what: str) -> None:
    """Raise unless state['digest'] matches its contents (call after every other check)."""
    got = state[DIGEST]
    if not isinstance(got, str) or got != digest(state):
        raise ValueError(f"{what} state['digest'] does not match the state's contents (got {_short(got)}): "
                         "the state was changed or corrupted after state_dict()")


def same_plain(a, b) -> bool:
    """a == b with the same types throughout (bool, int, float, str, lists/tuples of them)."""
    if type(a) is not type(b):
        return False
    if isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_plain(x, y) for x, y in zip(a, b))
    return a == b


def check_config(state: dict, mine: dict, what: str) -> None:
    """Every key of `mine` must hold the same plain value (and type) in `state`."""
    for key, want in mine.items():
        got = state.get(key)
        if not same_plain(got, want):
            raise ValueError(f"{what}: state was saved with {key}={_short(got)}, this {what} has {key}={want!r}")


def check_int_field(state: dict, key: str, what: str) -> int:
    v = state[key]
    if type(v) is not int:
        raise TypeError(f"{what} state[{key!r}] must be an int, got {_short(v)}")
    return v


def tensor(state: dict, key: str, what: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """state[key] checked to be a dense tensor of `shape` and `dtype` on the CPU or `device`; returned
    as a detached CPU copy (where its values are checked; the caller's state is never shared)."""
    t = state[key]
    name = f"{what} state[{key!r}]"
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        got = _short(t) if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a dense torch.Tensor, got {got}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {str(dtype).replace('torch.', '')}, got {str(t.dtype).replace('torch.', '')}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != torch.device("cpu") and t.device != device:
        raise ValueError(f"{name} must be on the cpu or {device}, got {t.device}")
    return t.detach().to("cpu", copy=True)


def check_range(t: torch.Tensor, key: str, what: str, lo=None, hi=None) -> None:
    """Every element of t in [lo, hi] (NaN fails); names the first offending element."""
    ok = torch.ones_like(t, dtype=torch.bool)
    if lo is not None:
        ok &= t >= lo
    if hi is not None:
        ok &= t <= hi
    if not bool(ok.all()):
        pos = tuple(int(i) for i in torch.nonzero(~ok)[0])
        where = f"[{', '.join(map(str, pos))}]" if pos else ""
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ValueError(f"{what} state[{key!r}]{where} must be in {bounds}, got {t[pos].item()}")


def fail(what: str, key: str, message: str, index=None) -> None:
    where = "" if index is None else f"[{', '.join(str(int(i)) for i in index)}]"
    raise ValueError(f"{what} state[{key!r}]{where} {message}")


def first_bad(bad: torch.Tensor):
    """Index tuple of the first True in `bad`, or None."""
    nz = torch.nonzero(bad)
    return None if len(nz) == 0 else tuple(int(i) for i in nz[0])
