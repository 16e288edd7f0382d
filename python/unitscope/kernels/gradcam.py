"""unitscope.kernels.gradcam: the Grad-CAM reduction (Selvaraju et al., ICCV 2017) through every backend."""
from __future__ import annotations

import numpy as np
import torch

from unitscope import _backend
from unitscope import _tensors as T
from unitscope.reference.gradcam import gradcam as reference_gradcam

_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def gradcam(activations: T.ArrayLike, gradients: T.ArrayLike | None = None, *, weights: T.ArrayLike | None = None,
            relu: bool = True, out_size: T.Size2D | None = None, align_corners: bool = False, normalize: bool = False,
            backend: str | None = None, num_threads: int | None = None,
            out: torch.Tensor | None = None) -> T.ArrayLike:
    """Class activation maps from a layer's activations and either its gradients or channel weights.

    Args:
        activations (Tensor[B, K, h, w] or ndarray): the layer output; float32, float16, bfloat16 or
            float64, rounded to float32 on every backend.
        gradients (same shape and dtype as activations, optional): d score / d activations; the
            channel weights are their spatial mean (one target per image).
        weights (Tensor[B, K] or Tensor[B, T, K], optional): channel weights given directly, e.g.
            for T targets at once. Exactly one of gradients and weights.
        relu (bool): clamp the weighted sum at 0 (Grad-CAM); off for signed maps.
        out_size (int or (H, W), optional): resize bilinearly in the same pass, as
            F.interpolate(mode="bilinear", align_corners=align_corners).
        normalize (bool): min-max normalize each map to [0, 1]; a constant map becomes 0.
        backend ("cuda" | "cpp" | "numba" | "torch" | None): None picks by device.
        num_threads (int, optional): CPU threads in [1, max(64, 4 x cores)]; default
            torch.get_num_threads().
        out (Tensor, optional): a preallocated contiguous float32 tensor of the result's shape on the
            input's device, written in place and returned (a warm buffer saves faulting in fresh
            pages every call). Not differentiable: inputs that require grad (with grad enabled)
            raise RuntimeError, as torch's own out= functions do. Not with NumPy activations.

    Returns:
        float32 Tensor[B, H, W] (Tensor[B, T, H, W] for 3-d weights), on the input's device; a
        NumPy array when activations was one. Accumulation is float32 for every input dtype.
    """
    A, was_numpy = T.as_tensor(activations, "activations")
    T.check_ndim(A, 4, "activations", "(B, K, h, w)")
    T.check_float(A, "activations", _ACT_DTYPES)
    B, K, h, w = A.shape
    if K == 0 or h == 0 or w == 0:
        raise ValueError(f"activations must have K, h, w >= 1, got shape {tuple(A.shape)}")
    if (gradients is None) == (weights is None):
        raise ValueError("give exactly one of gradients (B, K, h, w) and weights (B, K) or (B, T, K), "
                         f"got {'both' if gradients is not None else 'neither'}")
    G = W = None
    if gradients is not None:
        G, _ = T.as_tensor(gradients, "gradients")
        T.check_shape(G, A.shape, "gradients", "(B, K, h, w)")
        if G.dtype != A.dtype:
            raise TypeError(f"gradients must have the dtype of activations ({A.dtype}), got {G.dtype}")
        T.check_same_device(A, "activations", G, "gradients")
        targets, squeeze = 1, True
    else:
        W, _ = T.as_tensor(weights, "weights")
        T.check_float(W, "weights")
        T.check_same_device(A, "activations", W, "weights")
        if W.dim() == 2:
            T.check_shape(W, (B, K), "weights", "(B, K)")
            targets, squeeze = 1, True
        elif W.dim() == 3:
            if W.shape[0] != B or W.shape[2] != K or W.shape[1] < 1:
                raise ValueError(f"weights must have shape (B, T, K) = ({B}, T, {K}), got {tuple(W.shape)}")
            targets, squeeze = W.shape[1], False
        else:
            raise ValueError(f"weights must have shape (B, K) or (B, T, K), got {tuple(W.shape)}")
    H, Wd = (h, w) if out_size is None else T.size_2d(out_size, "out_size")
    if num_threads is not None:
        _backend.num_threads(num_threads)  # checked whichever backend runs

    if W is not None:
        W = W.reshape(B, targets, K)
    if out is not None:
        shape = (B, H, Wd) if squeeze else (B, targets, H, Wd)
        _check_out(out, shape, A.device, was_numpy, A, G, W)
        torch.ops.unitscope.gradcam_out(A, G, W, bool(relu), bool(align_corners), bool(normalize), backend, num_threads,
                         out.view(B, targets, H, Wd))
        return out
    maps = torch.ops.unitscope.gradcam(A, G, W, bool(relu), H, Wd, bool(align_corners), bool(normalize), backend, num_threads)
    maps = maps[:, 0] if squeeze else maps
    return maps.numpy() if was_numpy else maps


def _check_out(out, shape, device, was_numpy, *inputs) -> None:
    """out= must be a contiguous float32 tensor of the result's shape on the inputs' device."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
    if was_numpy:
        raise TypeError("out is for tensor inputs; activations is a numpy.ndarray (pass a tensor, or no out)")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have the result's shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != torch.float32:
        raise TypeError(f"out must be float32, got {str(out.dtype).replace('torch.', '')}")
    if out.device != device:
        raise ValueError(f"out must be on the device of activations ({device}), got {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"out must be contiguous, got strides {out.stride()} for shape {tuple(out.shape)}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*inputs, out)):
        raise RuntimeError("gradcam(out=...) does not support automatic differentiation, but an input "
                           "requires grad; call it without out= (or under torch.no_grad())")


def run(name, A, G, W, relu, H, Wd, align_corners, normalize, num_threads, out=None):
    """The Grad-CAM maps (B, T, H, Wd) float32 from backend `name`; W is None or (B, T, K) (what the
    operators torch.ops.unitscope.gradcam and gradcam_out call, kernels/_ops.py). `out`, if given, is
    a checked contiguous float32 (B, T, H, Wd) tensor that receives the maps."""
    A, G, W = (None if t is None else t.detach() for t in (A, G, W))
    B, K, h, w = A.shape
    targets = 1 if W is None else W.shape[1]
    if name in ("torch", "numba") and out is not None:  # computed, then copied in
        return out.copy_(run(name, A, G, W, relu, H, Wd, align_corners, normalize, num_threads))
    if name == "torch":
        maps = reference_gradcam(A, G, weights=W, relu=relu, out_size=(H, Wd), align_corners=align_corners,
                                 normalize=normalize)
        return maps[:, None] if G is not None else maps
    if name == "numba":
        from unitscope._numba.gradcam import gradcam_numba

        act = A.float().contiguous().numpy()
        grad = G.float().contiguous().numpy() if G is not None else np.zeros_like(act[:, :, :1, :1])
        wts = (W.float().reshape(B, targets, K).contiguous().numpy() if W is not None
               else np.zeros_like(act[:, None, :, 0, 0]))  # unused placeholders (never act * 0: inf * 0 is NaN)
        _backend.set_numba_threads(num_threads)
        return torch.from_numpy(gradcam_numba(act, grad, wts, G is not None, bool(relu), H, Wd,
                                              bool(align_corners), bool(normalize)))
    return _compiled(name, A, G, W, B, targets, K, h, w, H, Wd, relu, align_corners, normalize, num_threads, out)


def _check_raw(A, G, W) -> None:
    """What the compiled kernels read through raw pointers, checked again here: the operators
    (kernels/_ops.py) can be called without the front end's checks."""
    if A.dim() != 4 or A.dtype not in T.DTYPE_CODE:
        raise ValueError(f"activations must be a (B, K, h, w) float16/bfloat16/float32/float64 tensor, "
                         f"got {tuple(A.shape)} {A.dtype}")
    if (G is None) == (W is None):
        raise ValueError("exactly one of gradients and weights must be given")
    if G is not None and (G.shape != A.shape or G.dtype != A.dtype or G.device != A.device):
        raise ValueError(f"gradients must match activations {tuple(A.shape)} {A.dtype} on {A.device}, "
                         f"got {tuple(G.shape)} {G.dtype} on {G.device}")
    if W is not None and (W.dim() != 3 or W.shape[0] != A.shape[0] or W.shape[2] != A.shape[1]
                          or W.device != A.device or not W.is_floating_point()):
        raise ValueError(f"weights must be a floating (B, T, K) = ({A.shape[0]}, T, {A.shape[1]}) tensor on "
                         f"{A.device}, got {tuple(W.shape)} {W.dtype} on {W.device}")


def _compiled(name, A, G, W, B, targets, K, h, w, H, Wd, relu, align_corners, normalize, num_threads, out):
    _check_raw(A, G, W)
    C = _backend.compiled_module()
    A = A.contiguous()
    G = G.contiguous() if G is not None else None
    Wc = W.to(torch.float32).reshape(B, targets, K).contiguous() if W is not None else None
    if out is None:
        out = torch.empty((B, targets, H, Wd), dtype=torch.float32, device=A.device)
    if B == 0:
        return out
    code = T.DTYPE_CODE[A.dtype]
    if name == "cpp":
        C.gradcam_cpu(T.ptr(A), T.ptr(G), T.ptr(Wc), T.ptr(out), code, B, targets, K, h, w, H, Wd,
                      bool(relu), bool(align_corners), bool(normalize), _backend.num_threads(num_threads))
    else:
        maps = B * targets
        workspace = torch.empty(maps * K + maps * h * w + 2 * maps, dtype=torch.float32, device=A.device)
        C.gradcam_cuda(T.ptr(A), T.ptr(G), T.ptr(Wc), T.ptr(out), T.ptr(workspace), code, B, targets, K, h, w,
                       H, Wd, bool(relu), bool(align_corners), bool(normalize), *T.cuda_launch(A))
    return out
