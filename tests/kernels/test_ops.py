"""The kernels as registered operators (kernels/_ops.py): opcheck on every one, on every backend; a
function calling every kernel compiled with fullgraph=True (no graph break) gives eager's bits;
torch.export of a module that calls them; no tensor without data reaches the compiled code."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import unitscope
from unitscope import _tensors as T
from unitscope.kernels import (
    ExactQuantile,
    IoUTally,
    QuantileSketch,
    _ops,
    gradcam,
    mask_iou,
)
from unitscope.kernels.tally import float32_thresholds

BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba", "torch")]


def _gradcam_args(backend, grad=True, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    A = torch.randn(2, 3, 4, 5, generator=g, requires_grad=requires_grad)
    G = torch.randn(2, 3, 4, 5, generator=g, requires_grad=requires_grad)
    W = torch.randn(2, 2, 3, generator=g, requires_grad=requires_grad)
    return (A, G if grad else None, None if grad else W, True, 7, 6, False, True, backend, 1)


def _tally_args(backend):
    g = torch.Generator().manual_seed(2)
    A = torch.randn(2, 3, 4, 4, generator=g)
    thr = float32_thresholds(torch.tensor([0.0, 0.5, -0.5]), False)
    pix = torch.randint(0, 5, (2, 2, 8, 8), generator=g, dtype=torch.int16)
    img = torch.randint(0, 5, (2, 1), generator=g)
    ann = torch.tensor([[True, False], [True, True]])
    cat = torch.tensor([0, 0, 1, 1, 0])
    def z(*s):
        return torch.zeros(s, dtype=torch.int64)

    return (A, thr, pix, img, ann, cat, z(3, 5), z(3, 2), z(5), z(3), 8, 8, False, False, False, backend, 1)


def _exact_args(backend):
    eq = ExactQuantile(3, 0.9, 40)
    x = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(3))
    return (x, eq._buf.clone(), eq._fill.clone(), eq._thr.clone(), eq._nan.clone(), eq.m, not eq.top, backend, 1)


def _sketch_args(backend):
    qs = QuantileSketch(3, size=8192)
    x = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(4))
    return (x, *(v.clone() for v in qs._s.values()), qs.nb, backend, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_every_operator(backend):
    ops = torch.ops.unitscope
    torch.library.opcheck(ops.gradcam.default, _gradcam_args(backend, True, requires_grad=True))
    torch.library.opcheck(ops.gradcam.default, _gradcam_args(backend, False, requires_grad=True))
    for grad in (True, False):
        torch.library.opcheck(ops.gradcam_out.default, _gradcam_out_args(backend, grad))
    torch.library.opcheck(ops.tally_.default, _tally_args(backend))
    torch.library.opcheck(ops.exact_quantile_update_.default, _exact_args(backend))
    torch.library.opcheck(ops.quantile_sketch_update_.default, _sketch_args(backend))
    assert set(_ops.OPERATORS) == {"gradcam", "gradcam_out", "tally_", "exact_quantile_update_",
                                   "quantile_sketch_update_"}


def _gradcam_out_args(backend, grad):
    A, G, W, relu, H, Wd, ac, norm, backend, threads = _gradcam_args(backend, grad)
    out = torch.full((2, 1 if grad else 2, H, Wd), float("nan"))
    return (A, G, W, relu, ac, norm, backend, threads, out)


def _every_kernel(A, G, thr, labels, x, tally, eq, qs):
    """Calls each kernel through its user-facing front end."""
    cam = gradcam(A, G, out_size=(9, 7), normalize=True)
    cam_w = gradcam(A, weights=G.mean(dim=(2, 3)), relu=False, out_size=(5, 5))
    tally.update(A, thr, labels.clamp(max=4)[:, None])
    iou = mask_iou(A.softmax(1), labels, 0.3, ignore_index=255)
    eq.update(x)
    qs.update(x)
    return cam, cam_w, iou.intersection, iou.union


def _states(backend):
    cat = torch.zeros(5, dtype=torch.int64)
    return (IoUTally(3, 5, label_category=cat, num_categories=1, out_size=(8, 8), backend=backend),
            ExactQuantile(3, 0.8, 40, backend=backend), QuantileSketch(3, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_fullgraph_no_graph_break_and_eager_bits(backend, monkeypatch):
    monkeypatch.setenv("UNITSCOPE_BACKEND", backend)  # mask_iou and gradcam pick the backend by env
    g = torch.Generator().manual_seed(5)
    A, G = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    thr = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    labels[0, 0] = 255
    x = torch.randn(4, 3, 5, generator=g)
    eager_states, compiled_states = _states(backend), _states(backend)
    explained = torch._dynamo.explain(_every_kernel)(A, G, thr, labels, x, *_states(backend))
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(_every_kernel, fullgraph=True, backend="aot_eager")
    for _ in range(2):  # two batches: the states accumulate the same way
        want = _every_kernel(A, G, thr, labels, x, *eager_states)
        got = compiled(A, G, thr, labels, x, *compiled_states)
    for w, o in zip(want, got):
        assert torch.equal(w, o)
    for e, c in zip(eager_states, compiled_states):
        se, sc = e.state_dict(), c.state_dict()
        for k, v in se.items():
            assert torch.equal(v, sc[k]) if isinstance(v, torch.Tensor) else v == sc[k], k
    assert torch.equal(eager_states[1].result(), compiled_states[1].result())
    assert compiled_states[1].count.tolist() == [40, 40, 40]  # counted twice, not once per trace


def test_inductor_fullgraph_matches_eager():
    """The default compiler too (inductor): the operators stay opaque nodes, eager's bits come back."""
    A, G = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 6, 6))

    def f(A, G, labels):
        return gradcam(A, G, out_size=(6, 6)) * 2, mask_iou(A, labels, torch.tensor([0.0, 0.1, 0.2])).iou

    got = torch.compile(f, fullgraph=True)(A, G, labels)
    want = f(A, G, labels)
    assert all(torch.equal(w, o) for w, o in zip(want, got))


class _Metric(torch.nn.Module):
    """A segmentation metric whose counts are buffers, plus a Grad-CAM output."""

    def __init__(self):
        super().__init__()
        for name, shape in (("inter", (3, 5)), ("act", (3, 1)), ("lab", (5,)), ("tot", (3,))):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.int64))
        self.register_buffer("cat", torch.zeros(5, dtype=torch.int64))

    def forward(self, A, G, labels):
        thr = float32_thresholds(torch.full((3,), 0.25), False)
        torch.ops.unitscope.tally_(A, thr, labels, None, None, self.cat, self.inter, self.act, self.lab, self.tot,
                                   8, 8, False, False, True, None, None)
        return gradcam(A, G, out_size=(8, 8)), mask_iou(A, labels[:, 0], 0.25).iou


@pytest.mark.parametrize("strict", [True, False])
def test_torch_export_of_a_module_calling_the_kernels(strict):
    A, G = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    exported = torch.export.export(_Metric(), (A, G, labels), strict=strict)
    names = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert any("unitscope.gradcam" in n for n in names) and any("unitscope.tally_" in n for n in names), names
    eager, m = _Metric(), exported.module()
    want, got = eager(A, G, labels), m(A, G, labels)
    assert all(torch.equal(w, o) for w, o in zip(want, got))
    assert torch.equal(eager.inter, m.inter) and int(m.inter.sum()) > 0


@pytest.mark.parametrize("cls", [ExactQuantile, QuantileSketch])
def test_fake_tensor_never_reaches_compiled_code(cls):
    """A FakeTensor (data_ptr() 0) given to update() used to segfault in C++: now the operator's fake
    kernel or a clear error sees it, and the state is unchanged."""
    obj = ExactQuantile(3, 0.9, 60) if cls is ExactQuantile else QuantileSketch(3)
    before = obj.state_dict()
    fake = FakeTensorMode().from_tensor(torch.randn(4, 3, 5))
    with pytest.raises((AssertionError, ValueError, RuntimeError)):
        obj.update(fake)
    after = obj.state_dict()
    assert all(torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k] for k, v in before.items())


def test_no_pointer_without_storage():
    for t in (torch.empty(3, device="meta"), FakeTensorMode().from_tensor(torch.randn(3))):
        with pytest.raises(ValueError, match="without data"):
            T.ptr(t)
    C = unitscope._backend.compiled_module() if "cpp" in unitscope.backends() else None
    if C is not None:  # the bindings check every pointer too
        with pytest.raises(ValueError, match="x has no data"):
            C.exact_quantile_update_cpu(0, 0, 1, 3, 5, 1, 10, 2, 1, 1, 1, False, 1)
        with pytest.raises(ValueError, match="state buffers"):
            C.quantile_sketch_update_cpu(1, 0, 1, 3, 5, 0, 1, 1, 1, 1, 1, 1, 11, 1)
        with pytest.raises(ValueError, match="null pointer"):
            C.tally_cpu(1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 2, 1, False, False, False, 1)


def _to_cuda(args):
    return tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.cuda
def test_opcheck_every_operator_cuda():
    """The cuda implementations: opcheck on CUDA tensors, and the same results as the CPU's."""
    ops = torch.ops.unitscope
    for op, args in ((ops.gradcam.default, _gradcam_args("cuda", True)), (ops.gradcam.default, _gradcam_args("cuda", False)),
                     (ops.tally_.default, _tally_args("cuda")), (ops.exact_quantile_update_.default, _exact_args("cuda")),
                     (ops.quantile_sketch_update_.default, _sketch_args("cuda"))):
        cuda_args = _to_cuda(args)
        torch.library.opcheck(op, cuda_args)
        cpu_args = args[:-2] + ("torch", None)
        cuda_args = _to_cuda(args)
        got, want = op(*cuda_args), op(*cpu_args)
        if got is not None:
            assert torch.equal(got.cpu(), want)
        if op is ops.exact_quantile_update_.default:
            continue  # its buffers' layout differs by backend (compared through results in test_cuda.py)
        for g, w in zip(cuda_args, cpu_args):
            if isinstance(g, torch.Tensor) and g.dtype == torch.int64:
                assert torch.equal(g.cpu(), w)


@pytest.mark.cuda
def test_gradcam_backward_cuda_equals_cpu():
    A, G = (t.detach().cuda().requires_grad_() for t in _gradcam_args("cuda", True)[:2])
    out = gradcam(A, G, out_size=(7, 6), normalize=True, backend="cuda")
    gA, gG = torch.autograd.grad(out.sum(), (A, G))
    Ac, Gc = (t.detach().cpu().requires_grad_() for t in (A, G))
    want = torch.autograd.grad(gradcam(Ac, Gc, out_size=(7, 6), normalize=True, backend="torch").sum(), (Ac, Gc))
    torch.testing.assert_close(gA.cpu(), want[0])
    torch.testing.assert_close(gG.cpu(), want[1])


@pytest.mark.skipif("cpp" not in unitscope.backends(), reason="checks the compiled kernel's raw-pointer path")
@pytest.mark.parametrize("bad", ["short_gradients", "other_dtype", "weights_k", "both", "neither"])
def test_gradcam_operator_checks_what_the_kernel_reads(bad):
    # called directly, without kernels.gradcam's checks, the cpp kernel would read past a short tensor
    A = torch.rand(2, 5, 3, 3)
    G, W = torch.rand(2, 5, 3, 3), None
    if bad == "short_gradients":
        G = torch.rand(2, 5, 2, 2)
    elif bad == "other_dtype":
        G = G.double()
    elif bad == "weights_k":
        G, W = None, torch.rand(2, 1, 4)
    elif bad == "both":
        W = torch.rand(2, 1, 5)
    else:
        G = None
    with pytest.raises(ValueError, match="gradients|weights"):
        torch.ops.unitscope.gradcam(A, G, W, True, 8, 8, False, False, "cpp", None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["short_intersection", "activation_nc", "label_dtype", "thresholds_k", "pixels_size",
                                 "annotated_shape", "counts_not_contiguous", "category_too_large",
                                 "negative_category"])
def test_tally_operator_checks_the_counts_it_writes(backend, bad):
    # called directly, a short count tensor would be written past its end by the compiled kernels
    args = list(_tally_args(backend))
    if bad == "short_intersection":
        args[6] = torch.zeros(3, 4, dtype=torch.int64)
    elif bad == "activation_nc":
        args[7] = torch.zeros(2, 2, dtype=torch.int64)
    elif bad == "label_dtype":
        args[8] = torch.zeros(5, dtype=torch.int32)
    elif bad == "thresholds_k":
        args[1] = torch.zeros(2)
    elif bad == "pixels_size":
        args[2] = args[2][:, :, :7]
    elif bad == "annotated_shape":
        args[4] = torch.ones(2, 3, dtype=torch.bool)
    elif bad == "category_too_large":  # a category indexes the (K, NC) activation counts
        args[5] = torch.tensor([0, 0, 1, 2, 0])
    elif bad == "negative_category":
        args[5] = torch.tensor([0, 0, -1, 1, 0])
    else:
        args[6] = torch.zeros(5, 3, dtype=torch.int64).t()
    before = [t.clone() for t in args[6:10]]
    for op in (torch.ops.unitscope.tally_, torch.ops.unitscope._python_tally_):
        with pytest.raises(ValueError, match="tally_: .*must be|label_category must hold categories"):
            op(*args)
    for x, y in zip(args[6:10], before):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["short_buf", "m_too_large", "fill_dtype", "x_2d"])
def test_exact_quantile_operator_checks_its_state(backend, bad):
    args = list(_exact_args(backend))
    if bad == "short_buf":
        args[1] = args[1][:2]
    elif bad == "m_too_large":
        args[5] = args[1].shape[1]
    elif bad == "fill_dtype":
        args[2] = args[2].to(torch.int32)
    else:
        args[0] = args[0][0]
    with pytest.raises(ValueError, match="exact_quantile_update_: "):
        torch.ops.unitscope.exact_quantile_update_(*args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["short_fine", "nb", "kmax_k"])
def test_quantile_sketch_operator_checks_its_state(backend, bad):
    args = list(_sketch_args(backend))
    if bad == "short_fine":
        args[2] = args[2][:, :-1]
    elif bad == "nb":
        args[8] = 512
    else:
        args[7] = args[7][:2]
    with pytest.raises(ValueError, match="quantile_sketch_update_: "):
        torch.ops.unitscope.quantile_sketch_update_(*args)
