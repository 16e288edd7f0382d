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
            backend: str | None = None, num_threads: int | None = None) -> T.ArrayLike:
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
    out = torch.ops.unitscope.gradcam(A, G, W, bool(relu), H, Wd, bool(align_corners), bool(normalize), backend,
                                      num_threads)
    out = out[:, 0] if squeeze else out
    return out.numpy() if was_numpy else out


def run(name, A, G, W, relu, H, Wd, align_corners, normalize, num_threads):
    """The Grad-CAM maps (B, T, H, Wd) float32 from backend `name`; W is None or (B, T, K) (what the
    operator torch.ops.unitscope.gradcam calls, kernels/_ops.py)."""
    A, G, W = (None if t is None else t.detach() for t in (A, G, W))
    B, K, h, w = A.shape
    targets = 1 if W is None else W.shape[1]
    if name == "torch":
        out = reference_gradcam(A, G, weights=W, relu=relu, out_size=(H, Wd), align_corners=align_corners,
                                normalize=normalize)
        return out[:, None] if G is not None else out
    if name == "numba":
        from unitscope._numba.gradcam import gradcam_numba

        act = A.float().contiguous().numpy()
        grad = G.float().contiguous().numpy() if G is not None else np.zeros_like(act[:, :, :1, :1])
        wts = (W.float().reshape(B, targets, K).contiguous().numpy() if W is not None
               else np.zeros_like(act[:, None, :, 0, 0]))  # unused placeholders (never act * 0: inf * 0 is NaN)
        _backend.set_numba_threads(num_threads)
        return torch.from_numpy(gradcam_numba(act, grad, wts, G is not None, bool(relu), H, Wd,
                                              bool(align_corners), bool(normalize)))
    return _compiled(name, A, G, W, B, targets, K, h, w, H, Wd, relu, align_corners, normalize, num_threads)


def _compiled(name, A, G, W, B, targets, K, h, w, H, Wd, relu, align_corners, normalize, num_threads):
    C = _backend.compiled_module()
    A = A.contiguous()
    G = G.contiguous() if G is not None else None
    Wc = W.to(torch.float32).reshape(B, targets, K).contiguous() if W is not None else None
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
