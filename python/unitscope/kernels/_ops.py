"""The kernels as registered PyTorch operators, torch.ops.unitscope.* (torch.library.Library; see
docs/embedding.md): one implementation for every device type (the backend is picked inside: cpu:
cpp > numba > torch, cuda: cuda > torch, any other device: the torch reference), a fake kernel for
tracing, and Grad-CAM's backward.

The front ends (kernels.gradcam, mask_iou, IoUTally, ExactQuantile, QuantileSketch) check every
argument's metadata and call these. What needs the values (NaN thresholds, label ranges, the backend
choice, thread counts) happens here, at run time, so a compiled graph holds each call as one node.

Each operator is a schema string, one implementation and one fake kernel, registered by _define (no
torch.library.custom_op: its Python wrappers cost 20-70 us a call, docs/embedding.md). Where
unitscope._torch_ops was built (torch importable at build time) and matches the running torch, it
registers C++ CPU kernels over the Python ones: they run the compiled CPU kernels without entering
Python and hand every other call to the Python kernel, kept as the operator unitscope::_python_<name>.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from unitscope import _backend
from unitscope.kernels import _gradcam_grad, exact_quantile, quantile_sketch, tally
from unitscope.kernels.gradcam import _check_out
from unitscope.kernels.gradcam import run as _run
from unitscope.reference import quantile_sketch as _sketch_ref

_LIB = torch.library.Library("unitscope", "DEF")  # kept alive: the registrations live as long as it


def _define(schema: str, impl, fake) -> torch._ops.OpOverload:
    """Register `name(args) -> returns`: `impl` for every device (CompositeExplicitAutograd, one Python
    kernel entry a call), `fake` for FakeTensor tracing; an operator that mutates arguments (declared
    `Tensor(a!)`) bumps their version counters in C++ (the fallback torch.library.custom_op uses too)."""
    name = schema.split("(", 1)[0]
    _LIB.define(schema, tags=(torch.Tag.pt2_compliant_tag,))
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    _LIB.define("_python_" + schema)  # what the C++ CPU kernels hand the calls they do not serve
    _LIB.impl("_python_" + name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"unitscope::{name}", fake, lib=_LIB)
    if "!)" in schema:
        assert _LIB.m is not None  # the C++ library object, set while _LIB is alive
        _LIB.m.register_ad_inplace_or_view_fallback(name)
    return getattr(torch.ops.unitscope, name).default


def _load_compiled_kernels() -> str:
    """Import unitscope._torch_ops, whose import registers the C++ CPU kernels of the operators; ''
    when it did, else why not. It links the libtorch it was built with, so it is imported only
    beside that torch version (named in the file _torch_ops.torch the build writes beside it)."""
    if os.environ.get("UNITSCOPE_NO_TORCH_OPS", "") not in ("", "0"):
        return "disabled by UNITSCOPE_NO_TORCH_OPS"
    if _backend._compiled()[0] is None:  # also makes torch's OpenMP runtime global (unitscope/_openmp.py)
        return _backend._compiled()[1]
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_torch_ops.torch")
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            built = f.read(100).strip()
    except OSError:
        return ("unitscope._torch_ops was not built: torch was not importable when unitscope was built "
                "(pip install --no-build-isolation . builds it)")
    if built != torch.__version__:
        return f"unitscope._torch_ops was built for torch {built!r}, this is torch {torch.__version__}: rebuild unitscope"
    try:
        importlib.import_module("unitscope._torch_ops")
    except ImportError as e:
        return f"unitscope._torch_ops not importable ({e})"
    return ""


def _pick(backend: str | None, device: torch.device, op: str) -> str:
    return _backend.select_backend(backend, device, op)


def _nothing(*args):
    return None


def _check_tensor(op: str, name: str, t, shape, dtypes, device) -> None:
    """A tensor the kernels read or write through its pointer: shape, dtype, device, contiguity.
    The operators can be called without the front ends' checks; a short count tensor would be
    written past its end."""
    if (isinstance(t, torch.Tensor) and t.shape == shape and t.dtype in dtypes and t.device == device
            and t.is_contiguous()):
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    want = "/".join(str(d).replace("torch.", "") for d in dtypes)
    raise ValueError(f"{op}: {name} must be a contiguous {want} tensor of shape {tuple(shape)} on {device}, "
                     f"got {str(t.dtype).replace('torch.', '')} {tuple(t.shape)} on {t.device}"
                     f"{'' if t.is_contiguous() else ' (not contiguous)'}")


def _check_values_tensor(op: str, x):
    """x: (outer, K, inner) floating, K >= 1; returned contiguous."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.dtype not in _FLOATS or x.shape[1] < 1:
        raise ValueError(f"{op}: x must be a float16/bfloat16/float32/float64 (outer, K, inner) tensor with K >= 1, "
                         f"got {getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    return x.contiguous()


_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_LABELS = (torch.uint8, torch.int16, torch.int32, torch.int64)
_F32, _I64 = (torch.float32,), (torch.int64,)


# ---- Grad-CAM (functional, differentiable) ----------------------------------------------------------
def _gradcam(activations, gradients, weights, relu, out_h, out_w, align_corners, normalize, backend, num_threads):
    """(B, T, out_h, out_w) float32 maps; weights is None or (B, T, K); exactly one of gradients/weights."""
    return _run(_pick(backend, activations.device, "gradcam"), activations, gradients, weights, relu, out_h, out_w,
               align_corners, normalize, num_threads)


def _gradcam_fake(activations, gradients, weights, relu, out_h, out_w, align_corners, normalize, backend, num_threads):
    T = 1 if weights is None else weights.shape[1]
    return activations.new_empty((activations.shape[0], T, out_h, out_w), dtype=torch.float32)


gradcam = _define("gradcam(Tensor activations, Tensor? gradients, Tensor? weights, bool relu, SymInt out_h, "
                  "SymInt out_w, bool align_corners, bool normalize, str? backend, int? num_threads) -> Tensor",
                  _gradcam, _gradcam_fake)


# ---- Grad-CAM into a caller's buffer (out: float32 (B, T, H, W), contiguous; not differentiable) ------
def _gradcam_out(activations, gradients, weights, relu, align_corners, normalize, backend, num_threads, out):
    _check_out_of_op(activations, weights, out)  # the kernel writes B*T*H*W floats through out's pointer
    _run(_pick(backend, activations.device, "gradcam"), activations, gradients, weights, relu, out.shape[2],
        out.shape[3], align_corners, normalize, num_threads, out=out)


def _check_out_of_op(activations, weights, out) -> None:
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise ValueError(f"out must be a (B, T, H, W) tensor, got {getattr(out, 'shape', type(out).__name__)}")
    T = 1 if weights is None else weights.shape[1]
    _check_out(out, (activations.shape[0], T, out.shape[2], out.shape[3]), activations.device, False)


def _gradcam_out_fake(activations, gradients, weights, relu, align_corners, normalize, backend, num_threads, out):
    _check_out_of_op(activations, weights, out)


gradcam_out = _define("gradcam_out(Tensor activations, Tensor? gradients, Tensor? weights, bool relu, "
                      "bool align_corners, bool normalize, str? backend, int? num_threads, Tensor(a!) out) -> ()",
                      _gradcam_out, _gradcam_out_fake)


# ---- IoU tally (adds one batch's counts in place) ---------------------------------------------------
def _tally(activations, thresholds, pixel_labels, image_labels, annotated, label_category, intersection, activation,
           label, activation_total, out_h, out_w, align_corners, ge, union_mode, backend, num_threads):
    """Add one checked batch's counts (kernels/tally.py) to the four int64 count tensors.
    thresholds: (K,) float32 made exact by tally.float32_thresholds; union_mode: 0 category, 1 dataset,
    2 mask (tally.UNION_MODES)."""
    K = tally
    union = K.union_of_mode(union_mode)
    activations = _check_tally_raw(activations, thresholds, pixel_labels, image_labels, annotated, label_category,
                                   intersection, activation, label, activation_total, out_h, out_w)
    name = _pick(backend, activations.device, "IoUTally")
    K.check_values(thresholds, (pixel_labels, "pixel_labels"), (image_labels, "image_labels"),
                   num_labels=label.shape[0], check_label_range=name not in ("cpp", "numba"))
    if name in ("numba", "torch"):  # the cpp and CUDA paths check it themselves (tally.count_batch)
        K.check_label_category(label_category, activation.shape[1])
    cfg = K.TallyConfig(intersection.shape[0], label.shape[0], activation.shape[1], (out_h, out_w), align_corners,
                        ">=" if ge else ">", union, label_category)
    batch = K.Batch(activations.detach(), thresholds, thresholds, pixel_labels, image_labels, annotated)
    counts = {"intersection": intersection, "activation": activation, "label": label,
              "activation_total": activation_total}
    K.count_batch(name, cfg, batch, counts, num_threads)


def _check_tally_raw(A, thr, pix, img, ann, category, inter, act, label, total, out_h, out_w):
    """The shapes the tally kernels index with, from activations (B, K, h, w) and the count tensors
    (K, C), (K, NC), (C,), (K,); activations returned contiguous."""
    op = "tally_"
    if not isinstance(A, torch.Tensor) or A.dim() != 4 or A.dtype not in _FLOATS or min(A.shape[1:]) < 1:
        raise ValueError(f"{op}: activations must be a floating (B, K, h, w) tensor with K, h, w >= 1, got "
                         f"{getattr(A, 'dtype', type(A).__name__)} {tuple(getattr(A, 'shape', ()))}")
    B, K = A.shape[:2]
    dev = A.device
    if not isinstance(label, torch.Tensor) or label.dim() != 1 or not isinstance(act, torch.Tensor) or act.dim() != 2:
        raise ValueError(f"{op}: label must be a (C,) and activation a (K, NC) tensor")
    C, NC = label.shape[0], act.shape[1]
    if C < 1 or NC < 1 or out_h < 1 or out_w < 1:
        raise ValueError(f"{op}: need C, NC, out_h, out_w >= 1, got {C}, {NC}, {out_h}, {out_w}")
    for name, t, shape, dtypes in (("thresholds", thr, (K,), _F32), ("label_category", category, (C,), _I64),
                                   ("intersection", inter, (K, C), _I64), ("activation", act, (K, NC), _I64),
                                   ("label", label, (C,), _I64), ("activation_total", total, (K,), _I64)):
        _check_tensor(op, name, t, shape, dtypes, dev)
    if pix is not None:
        _check_tensor(op, "pixel_labels", pix, (B, pix.shape[1] if pix.dim() == 4 else -1, out_h, out_w), _LABELS, dev)
    if img is not None:
        _check_tensor(op, "image_labels", img, (B, img.shape[1] if img.dim() == 2 else -1), _LABELS, dev)
    if ann is not None:
        _check_tensor(op, "annotated", ann, (B, NC), (torch.bool,), dev)
    return A.contiguous()


tally_ = _define("tally_(Tensor activations, Tensor thresholds, Tensor? pixel_labels, Tensor? image_labels, "
                 "Tensor? annotated, Tensor label_category, Tensor(a!) intersection, Tensor(b!) activation, "
                 "Tensor(c!) label, Tensor(d!) activation_total, SymInt out_h, SymInt out_w, bool align_corners, "
                 "bool ge, int union_mode, str? backend, int? num_threads) -> ()", _tally, _nothing)


# ---- ExactQuantile (updates its candidate buffers in place) -----------------------------------------
def _exact_quantile_update(x, buf, fill, thr, nan, m, negate, backend, num_threads):
    """x: (outer, K, inner); buf (K, cap) float32, fill/nan (K,) int64, thr (K,) float32."""
    op = "exact_quantile_update_"
    x = _check_values_tensor(op, x)
    K = x.shape[1]
    cap = buf.shape[1] if isinstance(buf, torch.Tensor) and buf.dim() == 2 else -1
    if not 1 <= m < cap:
        raise ValueError(f"{op}: need 1 <= m < cap (buf's second size), got m={m}, cap={cap}")
    for name, t, dtype in (("buf", buf, _F32), ("fill", fill, _I64), ("thr", thr, _F32), ("nan", nan, _I64)):
        _check_tensor(op, name, t, (K, cap) if name == "buf" else (K,), dtype, x.device)
    exact_quantile.feed(_pick(backend, x.device, "ExactQuantile"), x, buf, fill, thr, nan, m, negate, num_threads)


exact_quantile_update_ = _define(
    "exact_quantile_update_(Tensor x, Tensor(a!) buf, Tensor(b!) fill, Tensor(c!) thr, Tensor(d!) nan, SymInt m, "
    "bool negate, str? backend, int? num_threads) -> ()", _exact_quantile_update, _nothing)


# ---- QuantileSketch (updates its counts in place) ---------------------------------------------------
def _quantile_sketch_update(x, coarse, fine, top, zeros, nan, kmin, kmax, nb, backend, num_threads):
    """x: (outer, K, inner); the seven int64 count tensors of kernels/quantile_sketch.py."""
    op = "quantile_sketch_update_"
    x = _check_values_tensor(op, x)
    K = x.shape[1]
    if not 1 <= nb < _sketch_ref.COARSE:
        raise ValueError(f"{op}: nb must be in [1, {_sketch_ref.COARSE}), got {nb}")
    for name, t in (("coarse", coarse), ("fine", fine), ("top", top), ("zeros", zeros), ("nan", nan), ("kmin", kmin),
                    ("kmax", kmax)):
        shape = {"coarse": (K, _sketch_ref.COARSE), "fine": (K, nb * _sketch_ref.SUB)}.get(name, (K,))
        _check_tensor(op, name, t, shape, _I64, x.device)
    state = {"coarse": coarse, "fine": fine, "top": top, "zeros": zeros, "nan": nan, "kmin": kmin, "kmax": kmax}
    quantile_sketch.feed(_pick(backend, x.device, "QuantileSketch"), x, state, nb, num_threads)


quantile_sketch_update_ = _define(
    "quantile_sketch_update_(Tensor x, Tensor(a!) coarse, Tensor(b!) fine, Tensor(c!) top, Tensor(d!) zeros, "
    "Tensor(e!) nan, Tensor(f!) kmin, Tensor(g!) kmax, SymInt nb, str? backend, int? num_threads) -> ()",
    _quantile_sketch_update, _nothing)


# ---- autograd ---------------------------------------------------------------------------------------
class _GradcamFunction(torch.autograd.Function):
    """gradcam's forward below autograd; its backward, the exact derivative (kernels/_gradcam_grad.py)."""

    @staticmethod
    def forward(ctx, keyset, activations, gradients, weights, *flags):
        ctx.save_for_backward(activations, gradients, weights)
        ctx.flags = flags[:5]  # relu, out_h, out_w, align_corners, normalize
        with torch._C._AutoDispatchBelowAutograd():
            return gradcam.redispatch(keyset & _BELOW_AUTOGRAD, activations, gradients, weights, *flags)

    @staticmethod
    def backward(ctx, grad):
        A, G, W = ctx.saved_tensors
        return (None, *_gradcam_grad.backward(A, G, W, grad, *ctx.flags)) + (None,) * 7


_BELOW_AUTOGRAD = torch._C._after_autograd_keyset
_DK = torch._C.DispatchKey
_ANY_DEVICE = (_DK.CPU, _DK.CUDA)


def _next_is_ours(keyset, devices) -> bool:
    """True when the kernel below autograd would be our Python implementation: plain tensors (no
    FakeTensor, functionalization or other mode or subclass in between) on one of `devices` (the
    keys where the operator has no C++ kernel). Then it is called directly, saving the dispatcher's
    second Python entry (~5 us)."""
    below = (keyset & _BELOW_AUTOGRAD).remove(_DK.ADInplaceOrView)
    return below.highestPriorityTypeId() in devices


def _gradcam_autograd(keyset, activations, gradients, weights, *flags, op, devices):
    """The Autograd kernel of `op` (gradcam or _python_gradcam): record the backward only when an
    input needs it."""
    if torch.is_grad_enabled() and torch._C._any_requires_grad(activations, gradients, weights):
        return _GradcamFunction.apply(keyset, activations, gradients, weights, *flags)
    if _next_is_ours(keyset, devices):
        return _gradcam(activations, gradients, weights, *flags)
    with torch._C._AutoDispatchBelowAutograd():
        return op.redispatch(keyset & _BELOW_AUTOGRAD, activations, gradients, weights, *flags)


def _gradcam_out_autograd(keyset, activations, gradients, weights, *rest, op, devices):
    """As torch's own out= operators: no autograd through a caller's buffer."""
    if torch.is_grad_enabled() and torch._C._any_requires_grad(activations, gradients, weights, rest[-1]):
        raise RuntimeError("gradcam_out(): functions with out=... arguments don't support automatic "
                           "differentiation, but one of the arguments requires grad; call gradcam without out=")
    if _next_is_ours(keyset, devices):
        return _gradcam_out(activations, gradients, weights, *rest)
    with torch._C._AutoDispatchBelowAutograd():
        return op.redispatch(keyset & _BELOW_AUTOGRAD, activations, gradients, weights, *rest)


OPERATORS = ("gradcam", "gradcam_out", "tally_", "exact_quantile_update_", "quantile_sketch_update_")

COMPILED_KERNELS_MISSING = _load_compiled_kernels()
"""'' when the operators' CPU kernels are the C++ ones of unitscope._torch_ops, else why not."""

# The Python Autograd kernels: always on the _python_ operators (whose kernel below autograd is the
# Python one on every device); on the public operators only without unitscope._torch_ops, whose C++
# Autograd kernels (csrc/torch/op_gradcam.cpp) hand the calls that need autograd to the _python_ ones.
for _name, _kernel in (("gradcam", _gradcam_autograd), ("gradcam_out", _gradcam_out_autograd)):
    _py_op = getattr(torch.ops.unitscope, "_python_" + _name).default
    _LIB.impl("_python_" + _name, functools.partial(_kernel, op=_py_op, devices=_ANY_DEVICE), "Autograd",
              with_keyset=True)
    if COMPILED_KERNELS_MISSING:
        _op = getattr(torch.ops.unitscope, _name).default
        _LIB.impl(_name, functools.partial(_kernel, op=_op, devices=_ANY_DEVICE), "Autograd", with_keyset=True)
