"""ExactQuantile and QuantileSketch: every backend against the torch definitions (random data with
ties, +-inf, NaN, denormals, float32 extremes), merges and state round trips, bad input, and the
sketch's accuracy table at 10^6 values per channel."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscope
from conftest import CPU_BACKENDS, device_of
from unitscope.reference.quantile import INTERPOLATIONS, exact_quantile

ALL = CPU_BACKENDS + ["torch"]
QS = [0.0, 1e-6, 0.003, 0.25, 0.5, 0.9, 0.995, 0.999999, 1.0]


def make_values(seed, shape, kind, specials):
    """float32 data of a given flavour; specials sprinkles NaN, +-inf, denormals and near-FLT_MAX values."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if kind == "normal":
        x = torch.randn(n, generator=g) * 10
    elif kind == "ties":
        x = torch.randint(-3, 4, (n,), generator=g).float()
    elif kind == "equal":
        x = torch.full((n,), 2.5)
    elif kind == "negative":
        x = -torch.rand(n, generator=g) - 1
    else:  # relu
        x = torch.randn(n, generator=g).clamp(min=0)
    if specials and n:
        pool = torch.tensor([math.nan, math.inf, -math.inf, 1e-40, -1e-42, 3.4e38, -3.4e38, 0.0, -0.0])
        pick = torch.rand(n, generator=g) < 0.15
        x = torch.where(pick, pool[torch.randint(0, len(pool), (n,), generator=g)], x)
    return x.reshape(shape)


def layouts():
    """(shape, dim) pairs: (B, K, h, w) with dim=1, (N, K) with dim=-1, (K, N) dim=0, (B, h, K, w) dim=2."""
    return st.one_of(
        st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 5), st.integers(1, 6)).map(lambda s: (s, 1)),
        st.tuples(st.integers(1, 60), st.integers(1, 5)).map(lambda s: (s, -1)),
        st.tuples(st.integers(1, 4), st.integers(1, 70)).map(lambda s: (s, 0)),
        st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(20, 40)).map(lambda s: (s, 2)),
    )


def split(x, dim, parts, seed):
    """Split x along a non-channel axis (or not at all) into `parts` pieces at random points."""
    axes = [a for a in range(x.dim()) if a != dim % x.dim()]
    if not axes:
        return [x]
    a = axes[seed % len(axes)]
    n = x.shape[a]
    cuts = sorted(set(np.random.default_rng(seed).integers(0, n + 1, size=parts - 1).tolist()))
    edges = [0] + cuts + [n]
    return [x.narrow(a, s, e - s) for s, e in zip(edges, edges[1:])]


def assert_same(got, want):
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------- ExactQuantile
@settings(deadline=None, max_examples=50)
@given(layout=layouts(), kind=st.sampled_from(["normal", "ties", "equal", "negative", "relu"]),
       specials=st.booleans(), q=st.one_of(st.sampled_from(QS), st.floats(0, 1)),
       interpolation=st.sampled_from(INTERPOLATIONS), seed=st.integers(0, 10 ** 6), parts=st.integers(1, 4),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]))
def test_exact_matches_reference(layout, kind, specials, q, interpolation, seed, parts, dtype):
    shape, dim = layout
    x = make_values(seed, shape, kind, specials).to(dtype)
    K = shape[dim]
    total = x.numel() // K
    want = exact_quantile(x, q, dim, interpolation)
    for be in ALL:
        e = unitscope.ExactQuantile(K, q, total, dim=dim, interpolation=interpolation, backend=be)
        for piece in split(x, dim, parts, seed):
            e.update(piece)
        assert_same(e.result(), want)
        assert torch.equal(e.nan_count, torch.isnan(x.float()).movedim(dim, 0).reshape(K, -1).sum(1))
        assert torch.equal(e.count, torch.full((K,), total))


def test_exact_planted_and_large_stream(backend):
    # 0..N-1 shuffled in 40 batches: the 0.995 quantile (lower) is floor(0.995 (N-1)), exactly.
    K, N = 3, 200_000
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.randperm(N, generator=g).float() for _ in range(K)], dim=1)  # (N, K)
    dev = device_of(backend)
    e = unitscope.ExactQuantile(K, 0.995, N, dim=1, interpolation="lower", device=dev, backend=backend)
    for piece in x.to(dev).split(5000):
        e.update(piece)
    assert torch.equal(e.result().cpu(), torch.full((K,), float(math.floor(0.995 * (N - 1)))))
    lo = unitscope.ExactQuantile(K, 0.001, N, interpolation="linear", device=dev, backend=backend)
    for piece in x.to(dev).split(7000):
        lo.update(piece)
    assert_same(lo.result().cpu(), exact_quantile(x, 0.001, 1, "linear"))
    assert not lo.top and lo.m == math.ceil(0.001 * (N - 1)) + 2  # keeps the bottom ~200 values ...
    assert lo.memory_bytes < K * 4 * N // 10  # ... not the stream


def test_exact_sorted_stream_and_bfloat16(backend):
    x = torch.linspace(-5, 5, 30_000).reshape(-1, 1, 100).expand(-1, 2, 100).contiguous()
    dev = device_of(backend)
    for dtype in (torch.float32, torch.bfloat16):
        e = unitscope.ExactQuantile(2, 0.995, 30_000, device=dev, backend=backend)
        for piece in x.to(dev, dtype).split(3):
            e.update(piece)
        assert_same(e.result().cpu(), exact_quantile(x.to(dtype), 0.995))


@pytest.mark.parametrize("q", [0.995, 0.02])
def test_exact_merge_and_state_round_trip(q):
    x = make_values(7, (30, 4, 5, 5), "normal", True)
    total = 30 * 25
    want = exact_quantile(x, q)
    for i, be in enumerate(ALL):
        parts = []
        for j, piece in enumerate(split(x, 1, 3, 11 + i)):
            p = unitscope.ExactQuantile(4, q, total, backend=ALL[(i + j) % len(ALL)])
            parts.append(p.update(piece))
        merged = unitscope.ExactQuantile(4, q, total, backend=be)
        for p in parts:
            merged.merge(p)
        assert_same(merged.result(), want)
        # save half-way, restore into another backend, finish
        a = unitscope.ExactQuantile(4, q, total, backend=be).update(x[:13])
        b = unitscope.ExactQuantile(4, q, total, backend=ALL[(i + 1) % len(ALL)])
        b.load_state_dict(a.state_dict())
        assert_same(b.update(x[13:]).result(), want)
        s1, s2 = merged.state_dict(), b.state_dict()
        for k in ("candidates", "fill", "count", "nan_count"):
            assert_same(s1[k], s2[k])


def test_exact_bad_input():
    e = unitscope.ExactQuantile(3, 0.9, 10)
    e.update(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="total=10.*received 8.*fewer"):
        e.result()
    e.update(torch.randn(1, 3, 1, 3))
    with pytest.raises(ValueError, match="received 11.*more"):
        e.result()
    with pytest.raises(ValueError, match="num_channels = 3"):
        e.update(torch.randn(2, 4, 2, 2))
    with pytest.raises(TypeError, match="floating"):
        e.update(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="dim=5"):
        unitscope.ExactQuantile(3, 0.9, 10, dim=5).update(torch.randn(2, 3))
    with pytest.raises(ValueError, match="q must be"):
        unitscope.ExactQuantile(3, 1.5, 10)
    with pytest.raises(ValueError, match="interpolation"):
        unitscope.ExactQuantile(3, 0.5, 10, interpolation="cubic")
    with pytest.raises(ValueError, match="total must be >= 1"):
        unitscope.ExactQuantile(3, 0.5, 0)
    with pytest.raises(TypeError, match="num_channels must be an int"):
        unitscope.ExactQuantile(2.0, 0.5, 10)
    with pytest.raises(ValueError, match="backend"):
        unitscope.ExactQuantile(3, 0.5, 10, backend="fortran")
    with pytest.raises(ValueError, match="saved with"):
        unitscope.ExactQuantile(3, 0.5, 10).load_state_dict(e.state_dict())
    with pytest.raises(ValueError, match="cannot merge"):
        e.merge(unitscope.ExactQuantile(3, 0.5, 10))
    with pytest.raises(TypeError, match="ExactQuantile"):
        e.merge(unitscope.QuantileSketch(3))


@pytest.mark.parametrize("values", [[7.5], [-0.0], [math.inf], [-math.inf, math.inf], [1e-45, -1e-45, 0.0],
                                    [3.4e38, 3.4e38, -3.4e38], [math.nan, 2.0], [1.0] * 9])
def test_exact_edge_table(values):
    x = torch.tensor(values)[:, None]  # (N, K=1)
    for be in ALL:
        for interp in INTERPOLATIONS:
            for q in (0.0, 0.3, 0.5, 0.995, 1.0):
                e = unitscope.ExactQuantile(1, q, len(values), interpolation=interp, backend=be).update(x)
                assert_same(e.result(), exact_quantile(x, q, 1, interp))


def test_exact_all_nan_channel_is_nan():
    x = torch.randn(5, 2)
    x[:, 1] = math.nan
    e = unitscope.ExactQuantile(2, 0.5, 5, dim=1).update(x)
    r = e.result()
    assert math.isnan(r[1]) and r[0] == exact_quantile(x, 0.5, 1)[0]
    assert e.nan_count.tolist() == [0, 5]


# ---------------------------------------------------------------- QuantileSketch
def sketch_state(s):
    return {k: v for k, v in s.state_dict().items() if isinstance(v, torch.Tensor)}


@settings(deadline=None, max_examples=40)
@given(layout=layouts(), kind=st.sampled_from(["normal", "ties", "equal", "negative", "relu"]),
       specials=st.booleans(), seed=st.integers(0, 10 ** 6), parts=st.integers(1, 4),
       scale=st.sampled_from([1.0, 1e-38, 1e30]), size=st.sampled_from([16384, 5160]))
def test_sketch_state_matches_reference(layout, kind, specials, seed, parts, scale, size):
    shape, dim = layout
    x = make_values(seed, shape, kind, specials) * scale
    K = shape[dim]
    want = unitscope.QuantileSketch(K, dim=dim, size=size, backend="torch").update(x)
    for be in CPU_BACKENDS:
        s = unitscope.QuantileSketch(K, dim=dim, size=size, backend=be)
        for piece in split(x, dim, parts, seed):
            s.update(piece)
        for k, v in sketch_state(want).items():
            assert torch.equal(sketch_state(s)[k], v), k
    # counts are exact
    flat = x.movedim(dim, 0).reshape(K, -1)
    assert torch.equal(want.nan_count, torch.isnan(flat).sum(1))
    assert torch.equal(want.count, (~torch.isnan(flat)).sum(1))
    # quantiles lie between min and max; q = 0 / 1 give them exactly
    got = want.quantile([0.0, 0.5, 1.0])
    fin = torch.where(torch.isnan(flat), math.inf, flat)
    lo = fin.min(1).values
    hi = torch.where(torch.isnan(flat), -math.inf, flat).max(1).values
    ok = want.count > 0
    assert torch.equal(got[0][ok], lo[ok]) and torch.equal(got[2][ok], hi[ok])
    assert bool(((got[1][ok] >= lo[ok]) & (got[1][ok] <= hi[ok])).all())
    assert bool(torch.isnan(got[:, ~ok]).all())


def test_sketch_merge_equals_one_stream():
    x = make_values(3, (40, 5, 6, 7), "normal", True)
    one = unitscope.QuantileSketch(5, backend="torch").update(x)
    for i, be in enumerate(ALL):
        parts = [unitscope.QuantileSketch(5, backend=ALL[(i + j) % len(ALL)]).update(p)
                 for j, p in enumerate(split(x * 1.0, 1, 4, i))]
        merged = unitscope.QuantileSketch(5, backend=be)
        for p in parts[::-1]:  # any order
            merged.merge(p)
        for k, v in sketch_state(one).items():
            assert torch.equal(sketch_state(merged)[k], v), k
        restored = unitscope.QuantileSketch(5, backend=be)
        restored.load_state_dict(parts[0].state_dict())
        for p in parts[1:]:
            restored.merge(p)
        assert_same(restored.quantile(0.995), one.quantile(0.995))


def test_sketch_window_moves_with_growing_max():
    # ascending magnitudes over 30 octaves: the window keeps moving up; every value is counted once
    x = (2.0 ** torch.linspace(-10, 20, 50_000)).reshape(-1, 1)
    for be in ALL:
        s = unitscope.QuantileSketch(1, backend=be)
        for p in x.split(997):
            s.update(p)
        assert int(s.count) == 50_000
        st_ = sketch_state(s)
        assert int(st_["top"]) == (int(x.max().view(torch.int32)) >> 23) + 256
        v = s.quantile(0.995)
        true = (x[:, 0] <= v).double().mean().item()
        assert abs(true - 0.995) < 1e-4


def test_sketch_queries_shapes_and_cdf():
    x = torch.randn(1000, 3)
    s = unitscope.QuantileSketch(3).update(x)
    assert s.quantile(0.5).shape == (3,)
    assert s.quantile([0.1, 0.9]).shape == (2, 3)
    assert s.quantile(torch.tensor([0.1, 0.5, 0.9])).shape == (3, 3)
    v = s.quantile(torch.tensor([0.1, 0.5, 0.9]))
    c = s.cdf(v)
    assert c.shape == (3, 3)
    torch.testing.assert_close(c, torch.tensor([[0.1], [0.5], [0.9]], dtype=torch.float64).expand(3, 3),
                               atol=2e-3, rtol=0)
    assert s.cdf(torch.full((3,), math.inf)).tolist() == [1.0] * 3
    assert s.cdf(torch.full((3,), -math.inf)).tolist() == [0.0] * 3
    z = unitscope.QuantileSketch(1).update(torch.tensor([[0.0], [0.0], [1.0], [-1.0]]))
    assert z.quantile(0.5).item() == 0.0 and z.cdf(torch.zeros(1)).item() == 0.75
    assert s.memory_bytes_per_channel <= 16384


def test_sketch_bad_input():
    s = unitscope.QuantileSketch(3)
    with pytest.raises(ValueError, match="num_channels = 3"):
        s.update(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\]"):
        s.quantile(1.5)
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\]"):
        s.quantile([0.5, -0.1])
    with pytest.raises(ValueError, match="size must be"):
        unitscope.QuantileSketch(3, size=100)
    with pytest.raises(ValueError, match="values must have shape"):
        s.cdf(torch.zeros(4))
    with pytest.raises(ValueError, match="cannot merge"):
        s.merge(unitscope.QuantileSketch(4))
    with pytest.raises(ValueError, match="saved with"):
        unitscope.QuantileSketch(3, size=8192).load_state_dict(s.state_dict())


def accuracy_data(name, n, seed=0):
    """The issue's five distributions, float32 (n,)."""
    g = torch.Generator().manual_seed(seed)
    if name == "normal":
        return torch.randn(n, generator=g)
    if name == "lognormal":
        return torch.randn(n, generator=g).exp()
    if name == "relu70":  # ReLU of a shifted normal: 70% exact zeros
        return (torch.randn(n, generator=g) - 0.5244).clamp(min=0)
    if name == "mixture":
        mode = torch.rand(n, generator=g) < 0.8
        return torch.where(mode, torch.randn(n, generator=g), 6 + 0.3 * torch.randn(n, generator=g))
    if name == "sorted":
        return torch.randn(n, generator=g).sort().values
    raise ValueError(name)


def rank_error(sorted_x, v, q):
    """Distance from q to the interval of true ranks [P(X < v), P(X <= v)]."""
    n = len(sorted_x)
    lo = torch.searchsorted(sorted_x, v, right=False).item() / n
    hi = torch.searchsorted(sorted_x, v, right=True).item() / n
    return 0.0 if lo <= q <= hi else min(abs(lo - q), abs(hi - q))


@pytest.mark.parametrize("name", ["normal", "lognormal", "relu70", "mixture", "sorted"])
def test_sketch_accuracy_table(name):
    n = 10 ** 6
    x = accuracy_data(name, n)
    backend = CPU_BACKENDS[0] if CPU_BACKENDS else "torch"
    s = unitscope.QuantileSketch(1, backend=backend)
    for piece in x.split(65536):
        s.update(piece[:, None])
    xs = x.sort().values
    for q in (0.99, 0.995, 0.999):
        assert rank_error(xs, s.quantile(q)[0], q) <= 1e-4, (name, q)


@pytest.mark.parametrize("values", [[-math.inf], [math.inf], [math.nan], [0.0], [-math.inf, 1.0], [math.inf, -2.0]])
def test_sketch_infinities_never_anchor_the_window(values):
    x = torch.tensor(values)[:, None]
    want = sketch_state(unitscope.QuantileSketch(1, backend="torch").update(x))
    for be in CPU_BACKENDS:
        got = sketch_state(unitscope.QuantileSketch(1, backend=be).update(x))
        for k, v in want.items():
            assert torch.equal(got[k], v), (be, k)
