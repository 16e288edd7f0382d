"""The kernels as registered PyTorch operators, torch.ops.unitscope.* (torch.library.custom_op; see
docs/embedding.md): one implementation per device type (cpu: cpp > numba > torch, cuda: cuda > torch,
any other device: the torch reference), a fake kernel for tracing, and Grad-CAM's backward.

The front ends (kernels.gradcam, mask_iou, IoUTally, ExactQuantile, QuantileSketch) check every
argument's metadata and call these. What needs the values (NaN thresholds, label ranges, the backend
choice, thread counts) happens here, at run time, so a compiled graph holds each call as one node.
"""
from __future__ import annotations

import torch
from torch import Tensor

from unitscope import _backend
from unitscope.kernels import _gradcam_grad

_LIB = "unitscope"


def _pick(backend: str | None, device: torch.device, op: str) -> str:
    return _backend.select_backend(backend, device, op)


# ---- Grad-CAM (functional, differentiable) ----------------------------------------------------------
@torch.library.custom_op(f"{_LIB}::gradcam", mutates_args=())
def gradcam(activations: Tensor, gradients: Tensor | None, weights: Tensor | None, relu: bool,
            out_h: int, out_w: int, align_corners: bool, normalize: bool, backend: str | None,
            num_threads: int | None) -> Tensor:
    """(B, T, out_h, out_w) float32 maps; weights is None or (B, T, K); exactly one of gradients/weights."""
    from unitscope.kernels.gradcam import run

    return run(_pick(backend, activations.device, "gradcam"), activations, gradients, weights, relu, out_h, out_w,
               align_corners, normalize, num_threads)


@gradcam.register_fake
def _(activations, gradients, weights, relu, out_h, out_w, align_corners, normalize, backend, num_threads):
    T = 1 if weights is None else weights.shape[1]
    return activations.new_empty((activations.shape[0], T, out_h, out_w), dtype=torch.float32)


def _gradcam_setup(ctx, inputs, output):
    activations, gradients, weights, relu, out_h, out_w, align_corners, normalize, _, _ = inputs
    ctx.save_for_backward(activations, gradients, weights)
    ctx.flags = (relu, out_h, out_w, align_corners, normalize)


def _gradcam_backward(ctx, grad):
    A, G, W = ctx.saved_tensors
    gA, gG, gW = _gradcam_grad.backward(A, G, W, grad, *ctx.flags)
    return gA, gG, gW, None, None, None, None, None, None, None


gradcam.register_autograd(_gradcam_backward, setup_context=_gradcam_setup)


# ---- IoU tally (adds one batch's counts in place) ---------------------------------------------------
@torch.library.custom_op(f"{_LIB}::tally_", mutates_args=("intersection", "activation", "label", "activation_total"))
def tally_(activations: Tensor, thresholds: Tensor, pixel_labels: Tensor | None, image_labels: Tensor | None,
           annotated: Tensor | None, label_category: Tensor, intersection: Tensor, activation: Tensor,
           label: Tensor, activation_total: Tensor, out_h: int, out_w: int, align_corners: bool, ge: bool,
           union_mode: int, backend: str | None, num_threads: int | None) -> None:
    """Add one checked batch's counts (kernels/tally.py) to the four int64 count tensors.
    thresholds: (K,) float32 made exact by tally.float32_thresholds; union_mode: 0 category, 1 dataset,
    2 mask (tally.UNION_MODES)."""
    from unitscope.kernels import tally as K

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


@tally_.register_fake
def _(*args):
    return None


# ---- ExactQuantile (updates its candidate buffers in place) -----------------------------------------
@torch.library.custom_op(f"{_LIB}::exact_quantile_update_", mutates_args=("buf", "fill", "thr", "nan"))
def exact_quantile_update_(x: Tensor, buf: Tensor, fill: Tensor, thr: Tensor, nan: Tensor, m: int, negate: bool,
                           backend: str | None, num_threads: int | None) -> None:
    """x: (outer, K, inner) contiguous; buf (K, cap) float32, fill/nan (K,) int64, thr (K,) float32."""
    from unitscope.kernels.exact_quantile import feed

    feed(_pick(backend, x.device, "ExactQuantile"), x, buf, fill, thr, nan, m, negate, num_threads)


@exact_quantile_update_.register_fake
def _(*args):
    return None


# ---- QuantileSketch (updates its counts in place) ---------------------------------------------------
@torch.library.custom_op(f"{_LIB}::quantile_sketch_update_",
                         mutates_args=("coarse", "fine", "top", "zeros", "nan", "kmin", "kmax"))
def quantile_sketch_update_(x: Tensor, coarse: Tensor, fine: Tensor, top: Tensor, zeros: Tensor, nan: Tensor,
                            kmin: Tensor, kmax: Tensor, nb: int, backend: str | None,
                            num_threads: int | None) -> None:
    """x: (outer, K, inner) contiguous; the seven int64 count tensors of kernels/quantile_sketch.py."""
    from unitscope.kernels.quantile_sketch import feed

    state = {"coarse": coarse, "fine": fine, "top": top, "zeros": zeros, "nan": nan, "kmin": kmin, "kmax": kmax}
    feed(_pick(backend, x.device, "QuantileSketch"), x, state, nb, num_threads)


@quantile_sketch_update_.register_fake
def _(*args):
    return None


OPERATORS = ("gradcam", "tally_", "exact_quantile_update_", "quantile_sketch_update_")
