"""ExactQuantile's cpp update on every instruction-set path this CPU has (portable, AVX2, AVX-512):
long streams that compact the buffers many times, with planted ties at the m-th largest value, mixed
-0.0/+0.0, NaN, q near 0 and 1, one value, many channels; all against the torch definition bit for
bit, the same state on every path, and the result selection's argument checks (issue 24 part 2)."""
import math

import pytest
import torch

import unitscope
from unitscope.reference.quantile import exact_quantile

pytestmark = pytest.mark.skipif("cpp" not in unitscope.backends(), reason="needs the compiled cpp backend")

NAMES = {0: "portable", 1: "avx2", 2: "avx512"}


def _module():
    return unitscope._backend.compiled_module()


def _paths():
    best = _module().exact_quantile_isa() if "cpp" in unitscope.backends() else 0
    return [NAMES[i] for i in range(best + 1)]


@pytest.fixture(params=_paths())
def isa(request):
    """Runs the test with the cpp update limited to one instruction set, then lifts the limit."""
    level = {v: k for k, v in NAMES.items()}[request.param]
    C = _module()
    assert C.exact_quantile_isa(level) == level
    yield request.param
    C.exact_quantile_isa(2)


def _bits(t):
    return t.contiguous().view(torch.int32)


def _check(x, q, interpolation="linear", pieces=7, dim=1):
    """Feed x in pieces to the cpp ExactQuantile; result and state against the definition and torch's."""
    K = x.shape[dim]
    total = x.numel() // K
    e = unitscope.ExactQuantile(K, q, total, dim=dim, interpolation=interpolation, backend="cpp")
    for piece in x.chunk(pieces, dim=0):
        e.update(piece)
    got = e.result()
    want = exact_quantile(x, q, dim, interpolation)
    assert torch.equal(_bits(got), _bits(want)), (got, want)  # bit for bit: +0.0 is not -0.0 here
    assert torch.equal(e.nan_count, torch.isnan(x.float()).movedim(dim, 0).reshape(K, -1).sum(1))
    ref = unitscope.ExactQuantile(K, q, total, dim=dim, interpolation=interpolation, backend="torch").update(x)
    s, r = e.state_dict(), ref.state_dict()
    for key in ("candidates", "fill", "count", "nan_count"):
        assert torch.equal(_bits(s[key]) if key == "candidates" else s[key],
                           _bits(r[key]) if key == "candidates" else r[key]), key
    return e


def test_isa_reports_and_limits():
    C = _module()
    best = C.exact_quantile_isa()
    assert best in (0, 1, 2)
    try:
        assert C.exact_quantile_isa(0) == 0 and C.exact_quantile_isa() == 0
        assert C.exact_quantile_isa(5) == best  # never above what the CPU has
    finally:
        C.exact_quantile_isa(2)


@pytest.mark.parametrize("q", [0.995, 0.9, 0.004, 1e-6, 0.999999, 0.0, 1.0])
def test_long_stream_many_compactions(isa, q):
    # 5 channels x 240k values: m ~ 1200 at 0.995, so ~200 compactions per channel, through the
    # sampled-pivot path (fill > 1024) and the exact one; q near 0 keeps the bottom values (negated)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(240, 5, 1000, generator=g)
    x[:, 1] = x[:, 1].exp()
    x[:, 2] = (x[:, 2] - 0.5).clamp(min=0)  # ReLU: 69% zeros, a tie at the m-th value for small q
    x[:, 3] = torch.arange(240_000, dtype=torch.float32).reshape(240, 1000)  # ascending: every value kept
    x[:, 4] = -x[:, 3]  # descending
    _check(x, q)


@pytest.mark.parametrize("q", [0.995, 0.5, 0.005])
def test_planted_tie_at_the_mth_value(isa, q):
    # 2/3 of the values are 5.0 (or -5.0): the pivot a compaction samples is the m-th value itself,
    # with fewer than m values above it; the kept copies must make up the m exactly
    g = torch.Generator().manual_seed(4)
    n = 120_000
    x = torch.where(torch.rand(n, 3, generator=g) < 2 / 3, torch.tensor(5.0), torch.randn(n, 3, generator=g) * 10)
    x[:, 1] = -x[:, 1]
    x[:, 2] = torch.where(x[:, 2] == 5.0, x[:, 2], x[:, 2].abs() + 5.0)  # all others above the tie
    for interp in ("linear", "lower", "higher", "nearest", "midpoint"):
        _check(x[:, :, None].expand(n, 3, 2).reshape(n // 100, 100, 3, 2).transpose(1, 2).reshape(n // 100, 3, 200),
               q, interp, pieces=5)


def test_signed_zeros_come_back_positive(isa):
    # zeros of both signs, alone and as the m-th value: stored, stated and returned as +0.0
    g = torch.Generator().manual_seed(5)
    n = 50_000
    z = torch.where(torch.rand(n, 4, generator=g) < 0.5, torch.tensor(-0.0), torch.tensor(0.0))
    x = z.clone()
    x[:, 1] = torch.where(torch.rand(n, generator=g) < 0.99, z[:, 1], torch.randn(n, generator=g))
    x[:, 2] = torch.where(torch.rand(n, generator=g) < 0.99, z[:, 2], -torch.rand(n, generator=g))
    for q in (0.0, 0.3, 0.995, 1.0):
        e = _check(x, q, pieces=3)
        r, cand = e.result(), e.state_dict()["candidates"]
        assert (r[[0, 3]] == 0).all() and not torch.signbit(r[r == 0]).any()
        assert (cand == 0).any() and not torch.signbit(cand[cand == 0]).any()


def test_nan_counted_and_ignored(isa):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(400, 6, 256, generator=g)
    x[torch.rand(x.shape, generator=g) < 0.2] = math.nan
    x[:, 1] = math.nan  # an all-NaN channel: NaN result
    x[:, 2, :7] = torch.tensor([math.inf, -math.inf, 3.4e38, -3.4e38, 1e-45, -1e-45, math.nan])
    for q in (0.0, 0.995, 1.0):
        e = _check(x, q, pieces=4)
        assert math.isnan(e.result()[1])


def test_one_value_and_short_runs(isa):
    for x in (torch.tensor([[[-0.0]]]), torch.tensor([[[7.5]]]), torch.tensor([[[math.nan]]]),
              torch.randn(1, 3, 15), torch.randn(2, 3, 17), torch.randn(9, 2, 33)):
        for q in (0.0, 0.5, 0.995, 1.0):
            _check(x, q, pieces=1)


def test_many_channels_and_threads(isa):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(30, 300, 7, 7, generator=g)
    x[:, ::3] = x[:, ::3].clamp(min=0)
    for q in (0.995, 0.01):
        _check(x, q, pieces=6)
    e = unitscope.ExactQuantile(300, 0.995, 30 * 49, backend="cpp")
    e._num_threads = 2  # channels split between two threads: the same state
    for piece in x.chunk(4):
        e.update(piece)
    assert torch.equal(e.result(), exact_quantile(x, 0.995))


def test_other_dtypes_through_blocks(isa):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 2, 5000, generator=g) * 100  # runs longer than the 4096-value conversion block
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        for q in (0.995, 0.02):
            _check(x.to(dtype), q, pieces=2)


def test_select_checks_its_arguments():
    C = _module()
    buf = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    fill = torch.tensor([3])
    ptr = unitscope._tensors.ptr

    def call(lo, hi, f=fill):
        lo, hi = torch.tensor([lo]), torch.tensor([hi])
        C.exact_quantile_select_cpu(ptr(buf), 1, 4, ptr(f), ptr(lo), ptr(hi), 1)

    call(0, 2)
    assert buf[0, 0] == 3.0 and buf[0, 2] == 1.0  # the largest and the 3rd largest in place
    call(1, 1)
    assert buf[0, 1] == 2.0
    for lo, hi in ((2, 1), (-1, 0), (0, 3)):
        with pytest.raises(ValueError, match="0 <= lo <= hi < fill"):
            call(lo, hi)
    with pytest.raises(ValueError, match="fill\\[0\\] = 5 is outside"):
        call(0, 0, torch.tensor([5]))
    call(7, 9, torch.tensor([0]))  # an empty channel is left alone
    with pytest.raises(ValueError, match="buffers must be given"):
        C.exact_quantile_select_cpu(0, 1, 4, ptr(fill), 1, 1, 1)


def test_result_traced_gives_the_same_bits():
    # under torch.compile result() takes the torch path (no raw pointers of traced tensors)
    x = torch.randn(100, 3, 40)
    e = unitscope.ExactQuantile(3, 0.9, 4000, backend="cpp").update(x)
    want = e.result()
    got = torch.compile(lambda: e.result(), backend="eager")()
    assert torch.equal(_bits(got), _bits(want)) and torch.equal(want, exact_quantile(x, 0.9))
