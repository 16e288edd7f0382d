"""unitscope._torch_ops: the C++ CPU kernels of torch.ops.unitscope.* (csrc/torch/). They must give
the bits of the Python kernels they stand in front of (kept as torch.ops.unitscope._python_<name>),
hand every call they do not serve to those (other backends, UNITSCOPE_BACKEND, wrong arguments),
so that errors are the Python layer's, and change no count when they hand a call on."""
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscope
from unitscope.kernels import ExactQuantile, QuantileSketch, _ops
from unitscope.kernels import tally as tally_mod
from unitscope.kernels.tally import float32_thresholds

pytestmark = pytest.mark.skipif(
    bool(_ops.COMPILED_KERNELS_MISSING),
    reason=f"the operators run their Python kernels here: {_ops.COMPILED_KERNELS_MISSING} "
           "(.ci/run builds unitscope._torch_ops and checks that it loads)")

OPS = torch.ops.unitscope
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _both(name, args):
    """Run operator `name` and its Python kernel on copies of args; (result, python result, args after,
    python args after)."""
    a1 = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    a2 = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    return getattr(OPS, name)(*a1), getattr(OPS, "_python_" + name)(*a2), a1, a2


def _same(x, y):
    if isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x.view(torch.uint8) if x.dtype.is_floating_point else x,
                           y.view(torch.uint8) if y.dtype.is_floating_point else y)
    else:
        assert x == y


def test_the_cpu_kernels_are_the_compiled_ones():
    for name in _ops.OPERATORS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"unitscope::{name}", "CPU"), name
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"unitscope::_python_{name}", "CPU"), name
    assert unitscope._torch_ops.torch_version == torch.__version__


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.integers(1, 9),
       st.integers(1, 9), st.sampled_from(DTYPES), st.integers(0, 3), st.booleans(), st.booleans(),
       st.booleans(), st.booleans(), st.integers(0, 2 ** 31))
def test_gradcam_bits_equal_the_python_kernel(B, K, h, w, H, W, dtype, targets, relu, align, normalize,
                                              transposed, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, K, w, h, generator=g).to(dtype).transpose(2, 3) if transposed else \
        torch.randn(B, K, h, w, generator=g).to(dtype)
    G = torch.randn(B, K, h, w, generator=g).to(dtype) if targets == 0 else None
    Wt = None if targets == 0 else torch.randn(B, targets, K, generator=g, dtype=torch.float64)
    args = (A, G, Wt, relu, H, W, align, normalize, None, None)
    got, want, _, _ = _both("gradcam", args)
    _same(got, want)
    out = torch.full((B, max(targets, 1), H, W), 7.0)
    _, _, a1, a2 = _both("gradcam_out", (A, G, Wt, relu, align, normalize, None, 1, out))
    _same(a1[-1], a2[-1])
    if B:
        _same(a1[-1], got)


def _tally_case(seed, B, dtype, pix_dtype, with_img, with_ann, union_mode, ge):
    g = torch.Generator().manual_seed(seed)
    K, C, NC, S = 4, 7, 3, 9
    A = torch.randn(B, K, 3, 4, generator=g).to(dtype)
    thr = float32_thresholds(torch.randn(K, generator=g) * 0.5, ge)
    pix = None if pix_dtype is None else torch.randint(0, C, (B, 2, S, S), generator=g).to(pix_dtype)
    img = torch.randint(0, C, (B, 2), generator=g) if with_img else None
    ann = torch.rand(B, NC, generator=g) > 0.3 if with_ann else None
    cat = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    counts = (torch.randint(0, 5, (K, C), generator=g), torch.randint(0, 5, (K, NC), generator=g),
              torch.randint(0, 5, (C,), generator=g), torch.randint(0, 5, (K,), generator=g))
    return (A, thr, pix, img, ann, cat, *counts, S, S, False, ge, union_mode, None, None)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31), st.integers(0, 3), st.sampled_from(DTYPES),
       st.sampled_from([None, torch.uint8, torch.int16, torch.int32, torch.int64]), st.booleans(), st.booleans(),
       st.integers(0, 2), st.booleans())
def test_tally_counts_equal_the_python_kernel(seed, B, dtype, pix_dtype, with_img, with_ann, union_mode, ge):
    _, _, a1, a2 = _both("tally_", _tally_case(seed, B, dtype, pix_dtype, with_img, with_ann, union_mode, ge))
    for x, y in zip(a1[6:10], a2[6:10]):
        _same(x, y)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31), st.sampled_from(DTYPES), st.booleans(), st.integers(0, 3))
def test_quantile_updates_equal_the_python_kernels(seed, dtype, negate, outer):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(outer, 3, 50, generator=g).to(dtype)
    eq = ExactQuantile(3, 0.9, 300)
    for _ in range(2):  # the second update starts from a threshold the first one set
        _, _, a1, a2 = _both("exact_quantile_update_", (x, eq._buf, eq._fill, eq._thr, eq._nan, eq.m, negate, None, 2))
        for x1, x2 in zip(a1[1:5], a2[1:5]):  # the buffers' unused tails are the same clone of empty()
            _same(x1, x2)
        eq._buf, eq._fill, eq._thr, eq._nan = a1[1:5]
    qs = QuantileSketch(3, size=8192)
    _, _, a1, a2 = _both("quantile_sketch_update_", (x, *qs._s.values(), qs.nb, None, None))
    for x1, x2 in zip(a1[1:8], a2[1:8]):
        _same(x1, x2)


def _calls(monkeypatch, module, name):
    """Record the calls of module.name (the Python kernels' body) while still running it."""
    seen = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_other_backends_and_the_environment_go_to_the_python_kernel(monkeypatch):
    seen = _calls(monkeypatch, tally_mod, "count_batch")
    args = _tally_case(1, 2, torch.float32, torch.int16, True, False, 0, False)
    monkeypatch.delenv("UNITSCOPE_BACKEND", raising=False)
    _both("tally_", args)
    assert seen == ["cpp"]  # only the Python kernel's own call: the operator ran in C++
    for backend in ("torch", "numba", "cpp"):
        if backend not in unitscope.backends():
            continue
        seen.clear()
        a = list(args)
        a[15] = backend
        got, _, a1, a2 = _both("tally_", tuple(a))
        assert seen == ([backend, backend] if backend != "cpp" else ["cpp"])
        for x, y in zip(a1[6:10], a2[6:10]):
            _same(x, y)
    seen.clear()
    monkeypatch.setenv("UNITSCOPE_BACKEND", "torch")
    OPS.tally_(*[x.clone() if isinstance(x, torch.Tensor) else x for x in args])
    assert seen == ["torch"]
    monkeypatch.setenv("UNITSCOPE_BACKEND", "cpp")
    seen.clear()
    OPS.tally_(*[x.clone() if isinstance(x, torch.Tensor) else x for x in args])
    assert seen == []


def test_gradcam_calls_go_to_the_kernel_of_their_operator(monkeypatch):
    seen = _calls(monkeypatch, _ops, "_run")
    A, G = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    OPS.gradcam(A, G, None, True, 6, 6, False, False, None, None)
    OPS.gradcam_out(A, G, None, True, False, False, None, None, torch.empty(2, 1, 6, 6))
    assert seen == []  # C++ throughout, Autograd kernel included
    OPS._python_gradcam(A, G, None, True, 6, 6, False, False, None, None)
    OPS._python_gradcam_out(A, G, None, True, False, False, None, None, torch.empty(2, 1, 6, 6))
    assert seen == ["cpp", "cpp"]  # the Python kernels, what a build without the C++ ones runs
    seen.clear()
    OPS.gradcam(A, G, None, True, 6, 6, False, False, "numba" if "numba" in unitscope.backends() else "torch",
                None)
    assert len(seen) == 1


def test_gradcam_backward_goes_through_the_python_autograd_kernel():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    G = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    out = OPS.gradcam(A, G, None, True, 6, 6, False, False, None, None)
    assert out.grad_fn is not None
    out.sum().backward()
    assert A.grad is not None and G.grad is not None
    with torch.no_grad():
        assert OPS.gradcam(A, G, None, True, 6, 6, False, False, None, None).grad_fn is None
    buf = torch.empty(2, 1, 6, 6)
    with pytest.raises(RuntimeError, match="don't support automatic differentiation"):
        OPS.gradcam_out(A, G, None, True, False, False, None, None, buf)


def _message(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 (the type and text are compared)
        return type(e), str(e)
    raise AssertionError("no error")


@pytest.mark.parametrize("case", ["nan threshold", "label too large", "negative label", "num_threads", "backend",
                                  "union_mode"])
def test_tally_errors_are_the_python_kernels_and_change_nothing(case):
    args = list(_tally_case(3, 2, torch.float32, torch.int16, True, True, 0, False))
    if case == "nan threshold":
        args[1] = args[1].clone()
        args[1][2] = float("nan")
    elif case == "label too large":
        args[2] = args[2].clone()
        args[2][1, 0, 3, 3] = 7
    elif case == "negative label":
        args[3] = args[3].clone()
        args[3][0, 1] = -1
    elif case == "num_threads":
        args[16] = 0
    elif case == "backend":
        args[15] = "fortran"
    else:
        args[14] = 3
    before = [t.clone() for t in args[6:10]]
    err = _message(lambda: OPS.tally_(*args))
    assert err == _message(lambda: OPS._python_tally_(*args))
    assert err[0] in (ValueError, TypeError)
    for x, y in zip(args[6:10], before):
        assert torch.equal(x, y)


def test_wrong_arguments_reach_the_python_checks():
    A = torch.randn(2, 3, 4, 4)
    assert _message(lambda: OPS.gradcam(A, torch.randn(2, 3, 4, 5), None, True, 4, 4, False, False, None, None)) \
        == _message(lambda: OPS._python_gradcam(A, torch.randn(2, 3, 4, 5), None, True, 4, 4, False, False, None, None))
    eq = ExactQuantile(3, 0.9, 40)
    x = torch.randn(2, 3, 10).to(torch.int32)
    assert _message(lambda: OPS.exact_quantile_update_(x, eq._buf, eq._fill, eq._thr, eq._nan, eq.m, False, None, 1)) \
        == _message(lambda: OPS._python_exact_quantile_update_(x, eq._buf, eq._fill, eq._thr, eq._nan, eq.m, False,
                                                                None, 1))


@pytest.mark.parametrize("which", ["exact fill", "sketch top"])
def test_a_tampered_state_gets_the_python_kernels_error_and_stays(which):
    x = torch.randn(2, 3, 10)
    if which == "exact fill":
        eq = ExactQuantile(3, 0.9, 40)
        args = [x, eq._buf, eq._fill.clone(), eq._thr, eq._nan, eq.m, False, None, 1]
        args[2][1] = eq._buf.shape[1] + 5  # a fill level past the buffer's end
        name = "exact_quantile_update_"
    else:
        qs = QuantileSketch(3, size=8192)
        args = [x, *(v.clone() for v in qs._s.values()), qs.nb, None, 1]
        args[3][2] = 600  # a window top past the coarse buckets
        name = "quantile_sketch_update_"
    before = [a.clone() for a in args[1:] if isinstance(a, torch.Tensor)]
    err = _message(lambda: getattr(OPS, name)(*args))
    assert err == _message(lambda: getattr(OPS, "_python_" + name)(*args))
    assert err[0] is ValueError
    for a, b in zip([a for a in args[1:] if isinstance(a, torch.Tensor)], before):
        assert torch.equal(a.view(torch.uint8) if a.is_floating_point() else a,
                           b.view(torch.uint8) if b.is_floating_point() else b)


def test_the_kernels_run_without_the_gil():
    """A long tally in one thread leaves the interpreter to the others."""
    g = torch.Generator().manual_seed(0)
    K, C, S = 256, 40, 112
    args = (torch.randn(16, K, 7, 7, generator=g), float32_thresholds(torch.zeros(K), False),
            torch.randint(0, C, (16, 1, S, S), generator=g, dtype=torch.int16), None, None,
            torch.zeros(C, dtype=torch.int64), torch.zeros(K, C, dtype=torch.int64),
            torch.zeros(K, 1, dtype=torch.int64), torch.zeros(C, dtype=torch.int64), torch.zeros(K, dtype=torch.int64),
            S, S, False, False, 1, None, 1)
    t0 = time.perf_counter()
    OPS.tally_(*args)
    alone = time.perf_counter() - t0
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())

    t = threading.Thread(target=count)
    t.start()
    try:
        time.sleep(0.01)
        n0 = len(ticks)
        t0 = time.perf_counter()
        OPS.tally_(*args)
        took = time.perf_counter() - t0
        during = [x for x in ticks[n0:] if t0 <= x <= t0 + took]
    finally:
        done.set()
        t.join()
    assert took > 0.3 * alone
    # the counting thread ran throughout the call, not only in the switch intervals around it
    assert len(during) > 100, (len(during), took)


def test_loading_follows_the_build_and_the_environment(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert "was built for torch" in _ops._load_compiled_kernels()
    monkeypatch.setenv("UNITSCOPE_NO_TORCH_OPS", "1")
    assert _ops._load_compiled_kernels() == "disabled by UNITSCOPE_NO_TORCH_OPS"
    env = dict(os.environ, UNITSCOPE_NO_TORCH_OPS="1")
    code = ("import torch, unitscope.kernels._ops as o; "
            "print(bool(o.COMPILED_KERNELS_MISSING), torch._C._dispatch_has_kernel_for_dispatch_key("
            "'unitscope::tally_', 'CPU'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
