"""unitscope.ExactQuantile: the exact per-channel q-quantile of a stream whose length is known, in
O(min(q, 1-q) x total) memory per channel, through every backend (cpp, cuda, numba, torch).
"""
from __future__ import annotations

import math
import numbers
import threading

import torch

from unitscope import _backend
from unitscope import _tensors as T
from unitscope.kernels import _state as S
from unitscope.kernels._lock import Locked
from unitscope.reference import quantile as ref

_VERSION = 1


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_q(q: object) -> float:
    # q is taken as `object`: for a parameter annotated float, mypy holds isinstance(q, numbers.Real)
    # impossible (float does not subclass Real in typeshed) and skipped the rest of __init__ as unreachable
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"q must be a number in [0, 1], got {q!r}")
    return float(q)


def channel_view(x: T.ArrayLike, dim: int, K: int, name: str = "x") -> tuple[torch.Tensor, int, int, bool]:
    """(tensor, outer, inner, was_numpy): x with its channel axis at `dim` checked, made contiguous.

    Element (o, k, i) of the (outer, K, inner) view is channel k's value number o * inner + i.
    """
    t, was_numpy = T.as_tensor(x, name)
    T.check_float(t, name)
    if t.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dimension (the channel axis), got a 0-d tensor")
    d = dim + t.dim() if dim < 0 else dim
    if not 0 <= d < t.dim():
        raise ValueError(f"dim={dim} is out of range for {name} of shape {tuple(t.shape)}")
    if t.shape[d] != K:
        raise ValueError(f"{name} must have num_channels = {K} entries along dim {dim}, got shape {tuple(t.shape)}")
    outer = math.prod(t.shape[:d])
    inner = math.prod(t.shape[d + 1:])
    if inner < 16 and outer > 1:  # e.g. (N, K): make each channel one contiguous run
        t = t.movedim(d, 0).reshape(K, -1).contiguous()
        outer, inner = 1, t.shape[1]
        return t.reshape(1, K, inner), 1, inner, was_numpy
    return t.contiguous().reshape(outer, K, inner), outer, inner, was_numpy


def feed(name, t, buf, fill, thr, nan, m, negate, num_threads):
    """Add x = t (outer, K, inner) to the candidate buffers with backend `name` (what the operator
    torch.ops.unitscope.exact_quantile_update_ runs, kernels/_ops.py)."""
    t = t.detach()
    outer, K, inner = t.shape
    if outer * inner == 0:
        return
    if name == "torch":
        vals = t.movedim(1, 0).reshape(K, -1).to(torch.float32)
        ref.torch_update(buf, fill, nan, -vals if negate else vals, m)
        thr.fill_(math.nan)
    elif name == "numba":
        from unitscope._numba.quantile import exact_update

        _backend.set_numba_threads(num_threads)
        exact_update(t.to(torch.float32).numpy(), buf.numpy(), fill.numpy(), thr.numpy(), nan.numpy(), m, negate)
    elif name == "cpp":
        _backend.compiled_module().exact_quantile_update_cpu(
            T.ptr(t), T.DTYPE_CODE[t.dtype], outer, K, inner, T.ptr(buf), buf.shape[1], m, T.ptr(fill),
            T.ptr(thr), T.ptr(nan), negate, _backend.num_threads(num_threads))
    else:
        _feed_cuda(t, outer, K, inner, buf, fill, thr, nan, m, negate)


def _feed_cuda(t, outer, K, inner, buf, fill, thr, nan, m, negate):
    # The CUDA kernel only appends accepted values; a chunk may add at most cap - m values per
    # channel, so the buffers are cut back (torch.topk on the device) before a chunk that could overflow.
    C = _backend.compiled_module()
    cap = buf.shape[1]
    n = outer * inner
    step = cap - m
    for start in range(0, n, step):
        length = min(step, n - start)
        if int(fill.max()) + length > cap:
            _compact(buf, fill, thr, m)
        C.exact_quantile_update_cuda(
            T.ptr(t), T.DTYPE_CODE[t.dtype], outer, K, inner, start, length, T.ptr(buf), cap, T.ptr(fill),
            T.ptr(thr), T.ptr(nan), negate, *T.cuda_launch(t))


def _compact(buf, fill, thr, m):
    cand, new_fill = ref.canonical(buf, fill, m)
    buf[:, : cand.shape[1]] = cand
    full = new_fill >= m
    thr.copy_(torch.where(full, cand[:, m - 1], torch.full_like(thr, math.nan)))
    fill.copy_(new_fill)


class ExactQuantile(Locked):
    """Exact streaming q-quantile per channel when the number of values per channel is known.

    ``update(x)`` with x (Tensor[..., K, ...] or ndarray, float16/bfloat16/float32/float64, channel
    axis at ``dim``) any number of times, then ``result()`` -> Tensor[K] float32.

    Semantics: every value is first rounded to float32 (exact for float16/bfloat16); NaN values are
    ignored and counted (``nan_count``). ``total`` counts *every* value a channel receives, NaN
    included; the quantile is over the non-NaN ones, n = total - nan_count. The result equals
    ``torch.nanquantile(values.double(), q, interpolation=...)`` cast to float32: bitwise for
    "lower"/"higher"/"nearest" and also for "linear"/"midpoint" (the two order statistics are
    combined with torch.lerp in float64, as torch does). ``result()`` raises ValueError when a channel
    saw fewer or more than ``total`` values.

    Memory: for q >= ~0.5 the m = total - floor(q (total-1)) + 1 largest values are candidates (the
    bottom m' = ceil(q (total-1)) + 2 for small q); each channel holds a float32 buffer of
    cap = m + max(m, 4096) values (``memory_bytes``). A value at or below the running threshold (at most
    the m-th largest value seen so far) can never be read and is rejected with one comparison (the hot
    loop, vectorized: AVX-512 or AVX2 picked at run time on the cpp backend); a full buffer is cut back
    to a little more than its m best values (cpp: one pass around a sampled pivot; numba: a partition),
    so the work per value is O(1) amortized. ``result()`` selects the one or two order statistics it
    reads (cpp: nth_element in each buffer; other backends: the sorted top m).

    ``merge(other)`` adds another ExactQuantile with the same (num_channels, q, total, interpolation)
    fed with other data: the result is that of one stream with both parts (counts add).

    ``device``: where the state lives and the inputs must be (default: cpu, cuda for backend="cuda");
    a bare "cuda" means the current CUDA device when the ExactQuantile is built.
    """

    def __init__(self, num_channels: int, q: float, total: int, *, dim: int = 1, interpolation: str = "linear",
                 device: T.DeviceLike = None, backend: str | None = None) -> None:
        self.num_channels = _check_int(num_channels, "num_channels", 1)
        self.q = _check_q(q)
        self.total = _check_int(total, "total", 1)
        self.dim = _check_int(dim, "dim", -(2 ** 31))
        if interpolation not in ref.INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {ref.INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation
        self.device = T.state_device(device, backend)
        self.backend = _backend.select_backend(backend, self.device, "ExactQuantile")
        self._num_threads = None
        self.top, self.m, self.cap = ref.candidate_sizes(self.q, self.total)
        K, dev = self.num_channels, self.device
        self._buf = torch.empty((K, self.cap), dtype=torch.float32, device=dev)
        self._fill = torch.zeros(K, dtype=torch.int64, device=dev)
        self._thr = torch.full((K,), math.nan, dtype=torch.float32, device=dev)
        self._nan = torch.zeros(K, dtype=torch.int64, device=dev)
        self._count = torch.zeros(K, dtype=torch.int64, device=dev)
        self._lock = threading.RLock()

    # ---- streaming ---------------------------------------------------------------------------
    def update(self, x: T.ArrayLike) -> ExactQuantile:
        """Add values. x: (…, K, …) with the channel axis at ``dim``, any float dtype, on ``device``."""
        t, outer, inner, _ = channel_view(x, self.dim, self.num_channels)
        if t.device != self.device:
            raise ValueError(f"x must be on {self.device} (this ExactQuantile's device), got {t.device}")
        with self._locked():
            if outer * inner:
                self._feed(t, outer, inner)
            self._count += outer * inner
        return self

    def _feed(self, t, outer, inner):
        torch.ops.unitscope.exact_quantile_update_(t, self._buf, self._fill, self._thr, self._nan, self.m,
                                                   not self.top, self.backend, self._num_threads)

    # ---- results -----------------------------------------------------------------------------
    @property
    def count(self) -> torch.Tensor:
        """(K,) int64: values seen per channel, NaN included."""
        return self._count.clone()

    @property
    def nan_count(self) -> torch.Tensor:
        """(K,) int64: NaN values seen per channel (ignored by the quantile)."""
        return self._nan.clone()

    @property
    def memory_bytes(self) -> int:
        """Bytes of state: the (K, cap) float32 candidate buffers plus per-channel counters."""
        return self.num_channels * (4 * self.cap + 4 + 3 * 8)

    def result(self) -> torch.Tensor:
        """(K,) float32 on ``device``: the q-quantile of each channel's non-NaN values."""
        with self._locked():
            return self._result()

    def _result(self) -> torch.Tensor:
        bad = (self._count != self.total).nonzero().flatten()
        if len(bad):
            k = int(bad[0])
            got = int(self._count[k])
            raise ValueError(
                f"ExactQuantile was built for total={self.total} values per channel, but channel {k} "
                f"received {got} ({'fewer' if got < self.total else 'more'}; {len(bad)} channel(s) differ). "
                "Pass the exact count (NaN values included) as total.")
        n = self._count - self._nan
        if self.backend == "cpp" and not torch.compiler.is_compiling():  # traced: the torch path, same bits
            return self._result_cpp(n)
        cand, fill = ref.canonical(self._buf, self._fill, self.m)
        return ref.finish(cand, fill, n, self.q, self.top, self.interpolation)

    def _result_cpp(self, n):
        # the one or two order statistics read are selected in place in each buffer (nth_element)
        # instead of sorting its m largest values: the same values at the positions finish reads
        _, _, _, at_below, at_above = ref.read_positions(n, self.q, self.top, self.interpolation)
        last = torch.clamp(torch.clamp(self._fill, max=self.m) - 1, min=0)[:, None]
        pos = torch.clamp(torch.stack([at_below, at_above], 1), min=0)
        pos = torch.minimum(pos, last).sort(dim=1).values.contiguous()  # (K, 2): lo <= hi < fill
        lo, hi = pos[:, 0].contiguous(), pos[:, 1].contiguous()
        _backend.compiled_module().exact_quantile_select_cpu(
            T.ptr(self._buf), self.num_channels, self.cap, T.ptr(self._fill), T.ptr(lo), T.ptr(hi),
            _backend.num_threads(self._num_threads))
        return ref.finish(self._buf[:, : self.m], self._fill, n, self.q, self.top, self.interpolation)

    # ---- state -------------------------------------------------------------------------------
    def _config(self):
        return {"num_channels": self.num_channels, "q": self.q, "total": self.total,
                "interpolation": self.interpolation}

    def state_dict(self) -> dict:
        """Backend-independent state: config, candidates (K, m) float32 on the CPU (the kept extreme
        values in their original sign, most extreme first; entries at or past fill[k] are padding),
        fill, count, nan_count (K,) int64, and a digest of all of it (kernels/_state.py)."""
        with self._locked():
            cand, fill = ref.canonical(self._buf, self._fill, self.m)
            return S.with_digest({"kind": "ExactQuantile", "version": _VERSION, **self._config(), "dim": self.dim,
                                  "candidates": ref.positive_zero(cand if self.top else -cand).cpu(), "fill": fill.cpu(),
                                  "count": self._count.cpu(), "nan_count": self._nan.cpu()})

    def load_state_dict(self, state: dict) -> None:
        """Replace the state by one from state_dict() of an ExactQuantile with the same (num_channels,
        q, total, interpolation). Every field is checked (ValueError/TypeError naming it) before any
        is used: keys, types, shapes, dtypes, devices, 0 <= nan_count <= count <= 2^62, fill = min(count
        - nan_count, m), the first fill[k] candidates non-NaN and sorted, and the digest."""
        what = "ExactQuantile"
        S.check_keys(state, ("kind", "version", "num_channels", "q", "total", "interpolation", "dim",
                             "candidates", "fill", "count", "nan_count"), what)
        S.check_config(state, {"kind": "ExactQuantile", "version": _VERSION}, what)
        S.check_config(state, self._config(), what)
        S.check_int_field(state, "dim", what)
        K, m, dev = self.num_channels, self.m, self.device
        cand = S.tensor(state, "candidates", what, (K, m), torch.float32, dev)
        fill, count, nan = (S.tensor(state, k, what, (K,), torch.int64, dev) for k in ("fill", "count", "nan_count"))
        S.check_range(count, "count", what, 0, S.MAX_COUNT)
        S.check_range(nan, "nan_count", what, 0, None)
        S.check_range(count - nan, "count - nan_count", what, 0, None)
        want = torch.clamp(count - nan, max=m)
        bad = S.first_bad(fill != want)
        if bad is not None:
            S.fail(what, "fill", f"must be min(count - nan_count, m) = {int(want[bad])}, got {int(fill[bad])}", bad)
        stored = cand if self.top else -cand  # descending in stored sign
        used = torch.arange(m)[None, :] < fill[:, None]
        bad = S.first_bad(used & torch.isnan(stored))
        if bad is not None:
            S.fail(what, "candidates", "is NaN (NaN values are counted, never kept)", bad)
        bad = S.first_bad(used[:, 1:] & (stored[:, 1:] > stored[:, :-1]))
        if bad is not None:
            S.fail(what, "candidates", f"is out of order: the first fill[k] entries must be sorted "
                   f"{'descending' if self.top else 'ascending'}", (bad[0], bad[1] + 1))
        S.check_digest(state, what)
        with self._locked():
            self._buf[:, :m] = ref.positive_zero(stored).to(dev)
            self._fill.copy_(fill)
            self._count.copy_(count)
            self._nan.copy_(nan)
            self._thr.fill_(math.nan)

    def merge(self, other: ExactQuantile) -> ExactQuantile:
        """Add another ExactQuantile's values (same num_channels, q, total, interpolation)."""
        if not isinstance(other, ExactQuantile):
            raise TypeError(f"other must be an ExactQuantile, got {type(other).__name__}")
        if other._config() != self._config():
            raise ValueError(f"cannot merge ExactQuantile with {other._config()} into one with {self._config()}")
        with other._locked():  # a snapshot first: other may be self, or updated by another thread
            cand, fill = ref.canonical(other._buf, other._fill, other.m)
            their_nan = other._nan.to(self.device, copy=True)
            their_count = other._count.to(self.device, copy=True)
        cand = (cand if self.top else -cand).to(self.device)
        pos = torch.arange(cand.shape[1], device=self.device)
        cand = torch.where(pos[None, :] < fill.to(self.device)[:, None], cand,
                           torch.tensor(math.nan, device=self.device))  # padding enters as NaN ...
        with self._locked():
            nan_before = self._nan.clone()
            self._feed(cand.reshape(1, self.num_channels, -1).contiguous(), 1, cand.shape[1])
            self._nan.copy_(nan_before + their_nan)  # ... and is not counted
            self._count += their_count
        return self

    def __repr__(self) -> str:
        return (f"ExactQuantile(num_channels={self.num_channels}, q={self.q}, total={self.total}, "
                f"interpolation={self.interpolation!r}, backend={self.backend!r}, device={self.device})")


