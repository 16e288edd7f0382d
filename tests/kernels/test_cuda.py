"""The CUDA backend against the cpp backend, bit for bit (tally counts, ExactQuantile buffers and
results, QuantileSketch states), and the device glue: a bare "cuda", a tensor on a device that is not
the current one, a stream other than the default. Every test here is marked cuda: skipped without a
GPU, failing instead with UNITSCOPE_REQUIRE_CUDA=1 (tests/conftest.py)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_quantile import layouts, make_values, sketch_state, split
from test_tally import UNIONS, assert_counts_equal, counts_of, problems, reference, run

import unitscope
from unitscope import _tensors as T
from unitscope.kernels import gradcam
from unitscope.reference.gradcam import gradcam as reference_gradcam

pytestmark = pytest.mark.cuda

ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KINDS = ("normal", "ties", "equal", "negative", "relu")
SLOW = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def two_gpus():
    return pytest.mark.skipif(torch.cuda.device_count() < 2,
                              reason="needs 2 GPUs: a tensor on cuda:1 while cuda:0 is the current device")


def exact_state(e):
    s = e.state_dict()
    return {k: s[k] for k in ("candidates", "fill", "count", "nan_count")}


def assert_bitwise(got: dict, want: dict):
    for k, v in want.items():
        g = got[k].cpu()
        assert g.dtype == v.dtype and g.shape == v.shape, k
        if v.is_floating_point():  # NaN where NaN (its bits may differ by device), every other bit equal
            nan = torch.isnan(v)
            assert torch.equal(torch.isnan(g), nan), k
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[v.element_size()]
            assert torch.equal(g[~nan].view(bits), v[~nan].view(bits)), k  # so -0.0 differs from 0.0
        else:
            assert torch.equal(g, v), k


def exact_on(backend, x, q, dim, interpolation, parts, seed, device):
    K = x.shape[dim]
    e = unitscope.ExactQuantile(K, q, x.numel() // K, dim=dim, interpolation=interpolation, device=device,
                                backend=backend)
    for piece in split(x.to(device), dim, parts, seed):
        e.update(piece)
    return e


def sketch_on(backend, x, dim, size, parts, seed, device):
    s = unitscope.QuantileSketch(x.shape[dim], dim=dim, size=size, device=device, backend=backend)
    for piece in split(x.to(device), dim, parts, seed):
        s.update(piece)
    return s


# ---------------------------------------------------------------- the tally, bit for bit
@SLOW
@given(p=problems(), specials=st.sampled_from([None, "nan", "inf", "both"]), transposed=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_tally_cuda_equals_cpp(p, specials, transposed, seed):
    A = p["A"]
    if specials and A.numel():
        g = torch.Generator().manual_seed(seed)
        pool = {"nan": [math.nan], "inf": [math.inf, -math.inf], "both": [math.nan, math.inf, -math.inf]}[specials]
        pool = torch.tensor(pool, dtype=torch.float64)
        pick = torch.rand(A.shape, generator=g) < 0.2
        A = torch.where(pick, pool[torch.randint(0, len(pool), A.shape, generator=g)].to(A.dtype), A)
    if transposed:  # same values, non-contiguous strides
        A = A.transpose(2, 3).contiguous().transpose(2, 3)
    p = {**p, "A": A}
    got = counts_of(run("cuda", p))
    assert_counts_equal(got, reference(p))
    assert_counts_equal(got, counts_of(run("cpp", p)))


@pytest.mark.parametrize("act_dtype", ACT_DTYPES)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_tally_dissection_shape_every_dtype(act_dtype, label_dtype):
    # 7x7 -> 112x112 with Broden's 1198 labels (uint8 labels stay below 256), odd batch, both unions
    g = torch.Generator().manual_seed(17)
    C = 256 if label_dtype == torch.uint8 else 1198
    K, NC, B = 37, 6, 5
    A = torch.relu(torch.randn(B, K, 7, 7, generator=g)).to(act_dtype)
    thr = torch.quantile(A.double().transpose(0, 1).reshape(K, -1), 0.8, dim=1)
    pix = torch.randint(0, C, (B, 3, 112, 112), generator=g).to(label_dtype)
    img = torch.randint(0, C, (B, 2), generator=g).to(label_dtype)
    cat = torch.randint(0, NC, (C,), generator=g)
    for union, annotated in (("category", None), ("dataset", torch.rand(B, NC, generator=g) < 0.5),
                             ("mask", torch.rand(B, NC, generator=g) < 0.5)):
        p = dict(A=A, thr=thr, pix=pix, img=img, annotated=annotated, cat=cat, C=C, NC=NC, S=(112, 112),
                 align=False, op=">", union=union)
        got = counts_of(run("cuda", p))
        assert_counts_equal(got, counts_of(run("cpp", p)))


# the data of benchmarks/bench_tally.py --data, small: Broden-like labels (4 maps of constant regions
# over 1198 labels, a scene and a texture image label) with synthetic maps with and without
# per-image gains, a signed 7x7 block output like EfficientNet-Lite0's _blocks.10, and a ReLU6 head
# like _swish@1 whose 0.995 quantile often equals its maximum, 6.0 (ties at the threshold)
BENCH_MAPS = ((1, 584, 0.1), (585, 818, 0.75), (819, 850, 0.5), (851, 861, 0.0))
BENCH_SHAPES = {"gain": (24, 7, 7), "nogain": (16, 14, 14), "blocks10": (24, 7, 7), "head": (32, 7, 7)}


def bench_like(kind: str, B: int = 6, S: int = 56, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cat = torch.zeros(1198, dtype=torch.int64)
    maps = []
    for i, (lo, hi, empty) in enumerate(BENCH_MAPS):
        cat[lo:hi + 1] = i
        grid = 4 + 2 * i
        lab = torch.randint(lo, hi + 1, (B, 1, grid, grid), generator=g)
        lab = torch.where(torch.rand(B, 1, grid, grid, generator=g) < empty, torch.zeros_like(lab), lab)
        maps.append(torch.nn.functional.interpolate(lab.float(), size=(S, S), mode="nearest").to(torch.int16))
    cat[862:1190], cat[1190:] = 4, 5
    img = torch.stack([torch.randint(862, 1190, (B,), generator=g), torch.randint(1190, 1198, (B,), generator=g)], 1)
    K, h, w = BENCH_SHAPES[kind]
    x = torch.nn.functional.avg_pool2d(torch.randn(B * K, 1, h + 2, w + 2, generator=g), 3, 1).reshape(B, K, h, w)
    if kind == "gain":
        A = torch.relu(x * torch.exp(torch.randn(B, K, 1, 1, generator=g) * 0.7) * 3 - 0.3)
    elif kind == "nogain":
        A = torch.relu(x * 3 - 0.3)
    elif kind == "blocks10":
        A = x * 4
    else:
        A = torch.clamp(x * torch.linspace(2, 14, K).view(1, K, 1, 1), 0, 6)  # steeper units saturate
    thr = torch.quantile(A.transpose(0, 1).reshape(K, -1).double(), 0.995, dim=1).float()
    return dict(A=A, thr=thr, pix=torch.cat(maps, 1), img=img.to(torch.int16), annotated=None, cat=cat, C=1198,
                NC=6, S=(S, S), align=False, op=">", union="category")


@pytest.mark.parametrize("kind", list(BENCH_SHAPES))
@pytest.mark.parametrize("union", UNIONS)
@pytest.mark.parametrize("op", [">", ">="])
def test_tally_cuda_bit_for_bit_on_the_benchmark_data(kind, union, op):
    p = {**bench_like(kind), "union": union, "op": op}
    got = counts_of(run("cuda", p))
    assert int(got["activation_total"].sum()) > 0  # masks are not all empty
    assert_counts_equal(got, reference(p))
    assert_counts_equal(got, counts_of(run("cpp", p)))
    assert_counts_equal(counts_of(run("cuda", p, splits=[1, 4])), got)  # batches add up


def test_tally_empty_batch_counts_nothing():
    dev = T.resolve_device("cuda")
    t = unitscope.IoUTally(3, 5, label_category=torch.arange(5) % 2, num_categories=2, out_size=(9, 4),
                           backend="cuda")
    t.update(torch.empty(0, 3, 2, 2, device=dev), torch.zeros(3, device=dev),
             torch.empty(0, 1, 9, 4, dtype=torch.int16, device=dev))
    assert t.images == 0 and all(int(getattr(t, k).abs().sum()) == 0 for k in
                                 ("intersection", "activation", "label", "activation_total"))


# ---------------------------------------------------------------- ExactQuantile, bit for bit
@SLOW
@given(layout=layouts(), kind=st.sampled_from(KINDS), specials=st.booleans(), seed=st.integers(0, 10**6),
       q=st.one_of(st.sampled_from([0.0, 0.003, 0.5, 0.995, 1.0]), st.floats(0, 1)),
       interpolation=st.sampled_from(["linear", "lower", "higher", "nearest", "midpoint"]),
       parts=st.integers(1, 4), dtype=st.sampled_from(ACT_DTYPES), transposed=st.booleans())
def test_exact_cuda_equals_cpp(layout, kind, specials, seed, q, interpolation, parts, dtype, transposed):
    shape, dim = layout
    x = make_values(seed, shape, kind, specials).to(dtype)
    if transposed and x.dim() > 1:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    dev = T.resolve_device("cuda")
    got = exact_on("cuda", x, q, dim, interpolation, parts, seed, dev)
    want = exact_on("cpp", x, q, dim, interpolation, parts, seed, "cpu")
    assert_bitwise(exact_state(got), exact_state(want))
    assert_bitwise({"r": got.result()}, {"r": want.result()})


@pytest.mark.parametrize("q", [0.995, 0.5, 0.001])
def test_exact_long_stream_many_chunks(q):
    # one update of 300,000 values per channel: many kernel chunks with compaction between them
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300_000, 4, generator=g) * 5
    x[::97, 1] = math.nan
    x[::1013, 2] = math.inf
    dev = T.resolve_device("cuda")
    got = unitscope.ExactQuantile(4, q, 300_000, dim=1, device=dev, backend="cuda").update(x.to(dev))
    want = unitscope.ExactQuantile(4, q, 300_000, dim=1, backend="cpp").update(x)
    assert_bitwise(exact_state(got), exact_state(want))
    assert_bitwise({"r": got.result()}, {"r": want.result()})


# ---------------------------------------------------------------- QuantileSketch, bit for bit
@SLOW
@given(layout=layouts(), kind=st.sampled_from(KINDS), specials=st.booleans(), seed=st.integers(0, 10**6),
       parts=st.integers(1, 4), scale=st.sampled_from([1.0, 1e-38, 1e30]), size=st.sampled_from([16384, 5160]),
       dtype=st.sampled_from(ACT_DTYPES), transposed=st.booleans())
def test_sketch_cuda_equals_cpp(layout, kind, specials, seed, parts, scale, size, dtype, transposed):
    shape, dim = layout
    x = (make_values(seed, shape, kind, specials) * scale).to(dtype)
    if transposed and x.dim() > 1:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    got = sketch_on("cuda", x, dim, size, parts, seed, T.resolve_device("cuda"))
    want = sketch_on("cpp", x, dim, size, parts, seed, "cpu")
    assert_bitwise(sketch_state(got), sketch_state(want))
    assert_bitwise({"q": got.quantile([0.0, 0.5, 0.995, 1.0])}, {"q": want.quantile([0.0, 0.5, 0.995, 1.0])})


def test_sketch_window_moves_and_empty_updates():
    x = (2.0 ** torch.linspace(-10, 20, 50_000)).reshape(-1, 1)
    dev = T.resolve_device("cuda")
    got = unitscope.QuantileSketch(1, backend="cuda")
    want = unitscope.QuantileSketch(1, backend="cpp")
    for p in x.split(997):
        got.update(p.to(dev))
        want.update(p)
        got.update(p[:0].to(dev))  # empty batches change nothing
    assert_bitwise(sketch_state(got), sketch_state(want))


# ---------------------------------------------------------------- Grad-CAM (float32 sums: close, not bitwise)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gradcam_cuda_close_to_cpp_non_contiguous(dtype):
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3, 33, 9, 7, generator=g).transpose(2, 3).to(dtype)  # (3, 33, 7, 9), not contiguous
    G = torch.randn(3, 33, 9, 7, generator=g).transpose(2, 3).to(dtype)
    dev = T.resolve_device("cuda")
    got = gradcam(A.to(dev), G.to(dev), out_size=(61, 50), normalize=True, backend="cuda")
    torch.testing.assert_close(got.cpu(), gradcam(A, G, out_size=(61, 50), normalize=True, backend="cpp"),
                               rtol=2e-5, atol=2e-5)
    empty = gradcam(A[:0].to(dev), G[:0].to(dev), out_size=5, backend="cuda")
    assert empty.shape == (0, 5, 5) and empty.device == dev


# ---------------------------------------------------------------- the CUDA entry points check state like cpp
def test_cuda_entry_points_check_fill_and_top_like_cpp():
    # a tampered state may not make the kernel write outside a buffer: refused before any launch
    from unitscope import _backend

    C = _backend.compiled_module()
    dev = T.resolve_device("cuda")
    x = torch.rand(2, 3, 5, device=dev)
    e = unitscope.ExactQuantile(3, 0.9, 10, device=dev, backend="cuda")
    for bad in (e.cap, -1, e.cap - 5):  # the chunk adds up to 10 values a channel
        e._fill[1] = bad
        with pytest.raises(ValueError, match=rf"fill\[1\] = {bad} plus the chunk's 10 values is outside"):
            C.exact_quantile_update_cuda(T.ptr(x), 0, 2, 3, 5, 0, 10, T.ptr(e._buf), e.cap, T.ptr(e._fill),
                                         T.ptr(e._thr), T.ptr(e._nan), False, *T.cuda_launch(x))
    s = unitscope.QuantileSketch(3, device=dev, backend="cuda")
    for bad in (-2, 511, 1 << 40):
        s._s["top"][2] = bad
        with pytest.raises(ValueError, match=rf"top\[2\] = {bad} is outside \[-1, 510\]"):
            s.update(x)


# ---------------------------------------------------------------- a bare "cuda", and the tensors' device
def test_bare_cuda_accepts_tensors_on_the_current_device():
    dev = torch.device("cuda", torch.cuda.current_device())
    x = torch.rand(2, 3, 4, 4, device=dev)  # x.device is "cuda:N", never plain "cuda"
    tally = unitscope.IoUTally(3, 4, label_category=torch.arange(4) % 2, num_categories=2, out_size=8,
                               device="cuda", backend="cuda")
    tally.update(x, torch.full((3,), 0.5, device=dev), torch.randint(0, 4, (2, 1, 8, 8), device=dev))
    assert tally.device == dev and tally.images == 2
    for make in (lambda: unitscope.ExactQuantile(3, 0.9, 32, device="cuda"),
                 lambda: unitscope.ExactQuantile(3, 0.9, 32, backend="cuda"),  # the default device for cuda
                 lambda: unitscope.QuantileSketch(3, device="cuda"),
                 lambda: unitscope.QuantileSketch(3, backend="cuda")):
        q = make()
        assert q.device == dev and q.backend == "cuda"
        q.update(x)
    assert gradcam(x, x, backend="cuda").device == dev


def _every_kernel(dev):
    """Each kernel's result on tensors on `dev` (cuda or cpu), comparable across devices."""
    g = torch.Generator().manual_seed(29)
    A = torch.relu(torch.randn(3, 6, 5, 5, generator=g))
    pix = torch.randint(0, 7, (3, 2, 16, 16), generator=g)
    backend = "cuda" if dev.type == "cuda" else "cpp"
    t = unitscope.IoUTally(6, 7, label_category=torch.arange(7) % 3, num_categories=3, out_size=16, device=dev,
                           backend=backend)
    t.update(A.to(dev), torch.full((6,), 0.4, device=dev), pix.to(dev))
    e = unitscope.ExactQuantile(6, 0.9, 75, device=dev, backend=backend).update(A.to(dev))
    s = unitscope.QuantileSketch(6, device=dev, backend=backend).update(A.to(dev))
    cam = gradcam(A.to(dev), weights=torch.randn(3, 6, generator=g).to(dev), out_size=11, backend=backend)
    return {**{k: v.cpu() for k, v in counts_of(t).items() if k != "images"},
            **{"exact_" + k: v for k, v in exact_state(e).items()}, "exact": e.result().cpu(),
            **{"sketch_" + k: v for k, v in sketch_state(s).items()}, "cam": cam.cpu()}


@two_gpus()
def test_tensors_on_a_device_that_is_not_current():
    want = _every_kernel(torch.device("cpu"))
    with torch.cuda.device(0):
        got = _every_kernel(torch.device("cuda", 1))
        assert torch.cuda.current_device() == 0  # the entry points restored the caller's device
    cam_got, cam_want = got.pop("cam"), want.pop("cam")
    assert_bitwise(got, want)
    torch.testing.assert_close(cam_got, cam_want, rtol=2e-5, atol=2e-5)
    torch.cuda.synchronize(1)  # an illegal access on cuda:1 would surface here


# ---------------------------------------------------------------- a stream other than the default
def test_side_stream_runs_beside_a_busy_default_stream():
    # The default stream (the legacy stream 0) is kept busy for about a second; the kernels run on a
    # side stream, which does not wait for it (torch's side streams are non-blocking), and the
    # results are read on that side stream. A kernel launched on the default stream instead would
    # still be queued behind the sleep when its result is read: the counts would be missing.
    dev = T.resolve_device("cuda")
    want = _every_kernel(torch.device("cpu"))
    s = torch.cuda.Stream(dev)
    s.wait_stream(torch.cuda.current_stream(dev))  # the state and inputs made so far
    torch.cuda._sleep(2_000_000_000)  # on the default stream: ~1 s at 2 GHz
    with torch.cuda.stream(s):
        got = _every_kernel(dev)  # its .cpu() copies run on s and wait for s alone
    cam_got, cam_want = got.pop("cam"), want.pop("cam")
    assert_bitwise(got, want)
    torch.testing.assert_close(cam_got, cam_want, rtol=2e-5, atol=2e-5)
    torch.cuda.synchronize(dev)


def test_graph_capture_sees_every_launch_on_the_capturing_stream():
    # A launch on the legacy default stream during capture is an error, so a graph that captures
    # and replays to the eager result shows the kernels launch on the current stream.
    dev = T.resolve_device("cuda")
    g = torch.Generator().manual_seed(31)
    A = torch.randn(4, 16, 7, 7, generator=g).to(dev)
    G = torch.randn(4, 16, 7, 7, generator=g).to(dev)
    eager = gradcam(A, G, out_size=32, normalize=True, backend="cuda")
    sketch = unitscope.QuantileSketch(16, backend="cuda")
    warm = torch.cuda.Stream(dev)
    warm.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(warm):  # allocator warm-up off the capture, as torch.cuda.graphs advises
        gradcam(A, G, out_size=32, normalize=True, backend="cuda")
    torch.cuda.current_stream(dev).wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gradcam(A, G, out_size=32, normalize=True, backend="cuda")
        sketch.update(A)
    graph.replay()
    torch.cuda.synchronize(dev)
    assert torch.equal(out, eager)
    want = unitscope.QuantileSketch(16, backend="cpp").update(A.cpu())
    assert_bitwise(sketch_state(sketch), sketch_state(want))
    torch.testing.assert_close(eager.cpu(), reference_gradcam(A.cpu(), G.cpu(), out_size=(32, 32), normalize=True),
                               rtol=2e-5, atol=2e-5)
