"""The kernels as registered PyTorch operators, torch.ops.unitscope.* (torch.library.Library; see
docs/embedding.md): one implementation for every device type (the backend is picked inside: cpu:
cpp > numba > torch, cuda: cuda > torch, any other device: the torch reference), a fake kernel for
tracing, and Grad-CAM's backward.

The front ends (kernels.gradcam, mask_iou, IoUTally, ExactQuantile, QuantileSketch) check every
argument's metadata and call these. What needs the values (NaN thresholds, label ranges, the backend
choice, thread counts) happens here, at run time, so a compiled graph holds each call as one node.

Each operator is a schema string, one implementation and one fake kernel, registered by _define (no
torch.library.custom_op: its Python wrappers cost 20-70 us a call, docs/embedding.md).
"""
from __future__ import annotations

import torch

from unitscope import _backend
from unitscope.kernels import _gradcam_grad, exact_quantile, quantile_sketch, tally
from unitscope.kernels.gradcam import _check_out
from unitscope.kernels.gradcam import run as _run

_LIB = torch.library.Library("unitscope", "DEF")  # kept alive: the registrations live as long as it


def _define(schema: str, impl, fake) -> torch._ops.OpOverload:
    """Register `name(args) -> returns`: `impl` for every device (CompositeExplicitAutograd, one Python
    kernel entry a call), `fake` for FakeTensor tracing; an operator that mutates arguments (declared
    `Tensor(a!)`) bumps their version counters in C++ (the fallback torch.library.custom_op uses too)."""
    name = schema.split("(", 1)[0]
    _LIB.define(schema, tags=(torch.Tag.pt2_compliant_tag,))
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"unitscope::{name}", fake, lib=_LIB)
    if "!)" in schema:
        assert _LIB.m is not None  # the C++ library object, set while _LIB is alive
        _LIB.m.register_ad_inplace_or_view_fallback(name)
    return getattr(torch.ops.unitscope, name).default


def _pick(backend: str | None, device: torch.device, op: str) -> str:
    return _backend.select_backend(backend, device, op)


def _nothing(*args):
    return None


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
    name = _pick(backend, activations.device, "IoUTally")
    K.check_values(thresholds, (pixel_labels, "pixel_labels"), (image_labels, "image_labels"),
                   num_labels=label.shape[0], check_label_range=name not in ("cpp", "numba"))
    cfg = K.TallyConfig(intersection.shape[0], label.shape[0], activation.shape[1], (out_h, out_w), align_corners,
                        ">=" if ge else ">", union, label_category)
    batch = K.Batch(activations.detach(), thresholds, thresholds, pixel_labels, image_labels, annotated)
    counts = {"intersection": intersection, "activation": activation, "label": label,
              "activation_total": activation_total}
    K.count_batch(name, cfg, batch, counts, num_threads)


tally_ = _define("tally_(Tensor activations, Tensor thresholds, Tensor? pixel_labels, Tensor? image_labels, "
                 "Tensor? annotated, Tensor label_category, Tensor(a!) intersection, Tensor(b!) activation, "
                 "Tensor(c!) label, Tensor(d!) activation_total, SymInt out_h, SymInt out_w, bool align_corners, "
                 "bool ge, int union_mode, str? backend, int? num_threads) -> ()", _tally, _nothing)


# ---- ExactQuantile (updates its candidate buffers in place) -----------------------------------------
def _exact_quantile_update(x, buf, fill, thr, nan, m, negate, backend, num_threads):
    """x: (outer, K, inner) contiguous; buf (K, cap) float32, fill/nan (K,) int64, thr (K,) float32."""
    exact_quantile.feed(_pick(backend, x.device, "ExactQuantile"), x, buf, fill, thr, nan, m, negate, num_threads)


exact_quantile_update_ = _define(
    "exact_quantile_update_(Tensor x, Tensor(a!) buf, Tensor(b!) fill, Tensor(c!) thr, Tensor(d!) nan, SymInt m, "
    "bool negate, str? backend, int? num_threads) -> ()", _exact_quantile_update, _nothing)


# ---- QuantileSketch (updates its counts in place) ---------------------------------------------------
def _quantile_sketch_update(x, coarse, fine, top, zeros, nan, kmin, kmax, nb, backend, num_threads):
    """x: (outer, K, inner) contiguous; the seven int64 count tensors of kernels/quantile_sketch.py."""
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


def _next_is_ours(keyset) -> bool:
    """True when the kernel below autograd would be our implementation on plain CPU/CUDA tensors (no
    FakeTensor, functionalization or other mode or subclass in between): then it is called directly,
    saving the dispatcher's second Python entry (~5 us)."""
    below = (keyset & _BELOW_AUTOGRAD).remove(_DK.ADInplaceOrView)
    return below.highestPriorityTypeId() in (_DK.CPU, _DK.CUDA)


def _gradcam_autograd(keyset, activations, gradients, weights, *flags):
    """The Autograd kernel: record the backward only when an input needs it."""
    if torch.is_grad_enabled() and torch._C._any_requires_grad(activations, gradients, weights):
        return _GradcamFunction.apply(keyset, activations, gradients, weights, *flags)
    if _next_is_ours(keyset):
        return _gradcam(activations, gradients, weights, *flags)
    with torch._C._AutoDispatchBelowAutograd():
        return gradcam.redispatch(keyset & _BELOW_AUTOGRAD, activations, gradients, weights, *flags)


def _gradcam_out_autograd(keyset, activations, gradients, weights, *rest):
    """As torch's own out= operators: no autograd through a caller's buffer."""
    if torch.is_grad_enabled() and torch._C._any_requires_grad(activations, gradients, weights, rest[-1]):
        raise RuntimeError("gradcam_out(): functions with out=... arguments don't support automatic "
                           "differentiation, but one of the arguments requires grad; call gradcam without out=")
    if _next_is_ours(keyset):
        return _gradcam_out(activations, gradients, weights, *rest)
    with torch._C._AutoDispatchBelowAutograd():
        return gradcam_out.redispatch(keyset & _BELOW_AUTOGRAD, activations, gradients, weights, *rest)


_LIB.impl("gradcam", _gradcam_autograd, "Autograd", with_keyset=True)
_LIB.impl("gradcam_out", _gradcam_out_autograd, "Autograd", with_keyset=True)

OPERATORS = ("gradcam", "gradcam_out", "tally_", "exact_quantile_update_", "quantile_sketch_update_")
