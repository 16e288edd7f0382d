"""unitscope.kernels.tally: one batch of the upsample-threshold-IoU tally (network dissection, Bau et
al., CVPR 2017) through every backend. Checks a batch completely, then adds its counts in place;
the stateful front end is unitscope.IoUTally (kernels/iou_tally.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unitscope import _backend
from unitscope import _tensors as T
from unitscope._checks import UNIONS

LABEL_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
LABEL_CODE = {torch.uint8: 0, torch.int16: 1, torch.int32: 2, torch.int64: 3}
# union -> TallyArgs::union_mode (tally.h): which images' mask pixels count toward a category's union
UNION_MODES = {name: mode for mode, name in enumerate(UNIONS)}


def union_of_mode(union_mode) -> str:
    """The union name of a union_mode int (0, 1 or 2), or ValueError naming what was received."""
    if isinstance(union_mode, int) and not isinstance(union_mode, bool) and 0 <= union_mode < len(UNIONS):
        return UNIONS[union_mode]
    raise ValueError(f"union_mode must be 0 (category), 1 (dataset) or 2 (mask), got {union_mode!r}")


@dataclass
class TallyConfig:
    num_units: int
    num_labels: int
    num_categories: int
    out_size: tuple
    align_corners: bool
    threshold_op: str
    union: str
    label_category: torch.Tensor  # int64 (C,), on the tally's device


@dataclass
class Batch:
    activations: torch.Tensor           # (B, K, h, w) float, contiguous
    thresholds: torch.Tensor            # (K,) as given (float)
    thresholds32: torch.Tensor          # (K,) float32 equivalents, contiguous
    pixel_labels: torch.Tensor | None   # (B, L, Sh, Sw) int, contiguous, or None
    image_labels: torch.Tensor | None   # (B, L2) int, contiguous, or None
    annotated: torch.Tensor | None      # (B, NC) bool, contiguous, or None


def float32_thresholds(thresholds: torch.Tensor, ge: bool) -> torch.Tensor:
    """float32 t' with (v > t) == (v > t') (or >=) for every float32 v: the exact comparison with a
    threshold of any float dtype, made in float32 by the kernels. For ">" t' is the largest float32
    <= t, for ">=" the smallest float32 >= t."""
    t64 = thresholds.to(torch.float64)
    t32 = t64.to(torch.float32)
    if ge:
        step = torch.full_like(t32, float("inf"))
        t32 = torch.where(t32.to(torch.float64) < t64, torch.nextafter(t32, step), t32)
    else:
        step = torch.full_like(t32, float("-inf"))
        t32 = torch.where(t32.to(torch.float64) > t64, torch.nextafter(t32, step), t32)
    return t32.contiguous()


def _labels(x, name, layout, ndim, B, num_labels, device, check_range):
    if x is None:
        return None
    t, _ = T.as_tensor(x, name)
    T.check_ndim(t, ndim, name, layout)
    T.check_int(t, name, LABEL_DTYPES)
    if t.device != device:
        raise ValueError(f"{name} must be on the tally's device ({device}), got {t.device}")
    if t.shape[0] != B:
        raise ValueError(f"{name} must have B = {B} rows (the batch of activations), got shape {tuple(t.shape)}")
    if check_range and not torch.compiler.is_compiling():  # cpp and numba check while they read
        _check_label_range(t, name, num_labels)
    return t.contiguous()


def _check_label_range(t, name, num_labels):
    if t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_labels:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must hold labels in [0, num_labels) = [0, {num_labels}), got {bad}")


def _check_not_nan(t):
    if bool(torch.isnan(t).any()):
        raise ValueError(f"thresholds must not be NaN, got NaN for units {torch.nonzero(torch.isnan(t)).flatten().tolist()[:10]}")


def check_label_category(label_category: torch.Tensor, num_categories: int) -> None:
    """label_category[1:] in [0, num_categories), as tally_cpu checks it itself; for the CUDA
    kernel, which skips an out-of-range category rather than write out of bounds."""
    if label_category.numel() > 1:
        cat = label_category[1:]
        bad = torch.nonzero((cat < 0) | (cat >= num_categories)).flatten()
        if bad.numel():
            c = int(bad[0]) + 1
            raise ValueError(f"label_category must hold categories in [0, num_categories) = [0, {num_categories}), "
                             f"got {int(label_category[c])} for label {c}")


def check_values(thresholds32, *labels, num_labels, check_label_range) -> None:
    """The checks that read values, made when the operator torch.ops.unitscope.tally_ runs (also in
    a compiled graph): no NaN threshold; labels in [0, num_labels) unless the kernel checks them."""
    _check_not_nan(thresholds32)
    if check_label_range:
        for t, name in labels:
            if t is not None:
                _check_label_range(t, name, num_labels)


def check_batch(cfg: TallyConfig, device: torch.device, activations, thresholds, pixel_labels=None,
                image_labels=None, annotated=None, check_label_range=True) -> Batch:
    """Validate one batch (raise ValueError/TypeError naming the argument) before any count.

    check_label_range=False leaves the label range check (0 <= label < num_labels) to the kernel:
    the cpp and numba kernels make it in their first pass and raise before changing any count (a
    torch min/max over int16 labels costs more here than the whole tally)."""
    A, _ = T.as_tensor(activations, "activations")
    T.check_ndim(A, 4, "activations", "(B, K, h, w)")
    T.check_float(A, "activations")
    B, K, h, w = A.shape
    if K != cfg.num_units:
        raise ValueError(f"activations must have K = num_units = {cfg.num_units} channels, got shape {tuple(A.shape)}")
    if h < 1 or w < 1:
        raise ValueError(f"activations must have h, w >= 1, got shape {tuple(A.shape)}")
    if A.device != device:
        raise ValueError(f"activations must be on the tally's device ({device}), got {A.device}")
    t, _ = T.as_tensor(thresholds, "thresholds")
    T.check_float(t, "thresholds")
    T.check_shape(t, (K,), "thresholds", "(K,)")
    if t.device != device:
        raise ValueError(f"thresholds must be on the tally's device ({device}), got {t.device}")
    if not torch.compiler.is_compiling():  # traced, the operator checks it when it runs (check_values)
        _check_not_nan(t)
    Sh, Sw = cfg.out_size
    pix = _labels(pixel_labels, "pixel_labels", "(B, L, S_h, S_w)", 4, B, cfg.num_labels, device, check_label_range)
    if pix is not None and tuple(pix.shape[2:]) != (Sh, Sw):
        raise ValueError(f"pixel_labels must have shape (B, L, S_h, S_w) = ({B}, L, {Sh}, {Sw}) (out_size), "
                         f"got {tuple(pix.shape)}")
    img = _labels(image_labels, "image_labels", "(B, L2)", 2, B, cfg.num_labels, device, check_label_range)
    ann = None
    if annotated is not None:
        ann, _ = T.as_tensor(annotated, "annotated")
        if ann.dtype != torch.bool:
            raise TypeError(f"annotated must be a bool tensor, got {str(ann.dtype).replace('torch.', '')}")
        T.check_shape(ann, (B, cfg.num_categories), "annotated", "(B, num_categories)")
        if ann.device != device:
            raise ValueError(f"annotated must be on the tally's device ({device}), got {ann.device}")
        ann = ann.contiguous()
    if pix is not None and pix.shape[1] == 0:
        pix = None
    if img is not None and img.shape[1] == 0:
        img = None
    return Batch(A.contiguous(), t, float32_thresholds(t, cfg.threshold_op == ">="), pix, img, ann)


def count_batch(backend: str, cfg: TallyConfig, batch: Batch, counts: dict, num_threads=None) -> None:
    """Add the counts of a checked batch into `counts` (int64 tensors on the tally's device)."""
    A = batch.activations
    B, K, h, w = A.shape
    if B == 0:
        return
    Sh, Sw = cfg.out_size
    if backend == "torch":
        from unitscope.reference.tally import tally_counts

        got = tally_counts(A, batch.thresholds, batch.pixel_labels, batch.image_labels, batch.annotated,
                           num_labels=cfg.num_labels, label_category=cfg.label_category,
                           num_categories=cfg.num_categories, out_size=cfg.out_size,
                           align_corners=cfg.align_corners, threshold_op=cfg.threshold_op, union=cfg.union)
        for key in ("intersection", "activation", "label", "activation_total"):
            counts[key] += got[key].to(counts[key].device)
        return
    pix, img, ann = batch.pixel_labels, batch.image_labels, batch.annotated
    L = 0 if pix is None else pix.shape[1]
    L2 = 0 if img is None else img.shape[1]
    if backend == "numba":
        from unitscope._numba.tally import tally_numba
        _backend.set_numba_threads(num_threads)
        act = A.to(torch.float32).numpy()  # exact for float16/bfloat16; float64 rounds as the reference does
        pix_np = (pix if pix is not None else torch.zeros((B, 0, Sh, Sw), dtype=torch.int16)).numpy()
        img_np = (img.to(torch.int64) if img is not None else torch.zeros((B, 0), dtype=torch.int64)).numpy()
        ann_np = (ann if ann is not None else torch.zeros((B, cfg.num_categories), dtype=torch.bool)).numpy()
        tally_numba(act, batch.thresholds32.numpy(), pix_np, img_np, ann_np, ann is not None,
                    cfg.label_category.numpy(), Sh, Sw, cfg.align_corners, cfg.threshold_op == ">=",
                    UNION_MODES[cfg.union], counts["intersection"].numpy(), counts["activation"].numpy(),
                    counts["label"].numpy(), counts["activation_total"].numpy())
        return
    C = _backend.compiled_module()
    code_pix = LABEL_CODE[pix.dtype] if pix is not None else 0
    code_img = LABEL_CODE[img.dtype] if img is not None else 0
    common = (T.ptr(A), T.ptr(batch.thresholds32), T.ptr(pix), T.ptr(img), T.ptr(ann), T.ptr(cfg.label_category),
              T.ptr(counts["intersection"]), T.ptr(counts["activation"]), T.ptr(counts["label"]),
              T.ptr(counts["activation_total"]))
    sizes = (T.DTYPE_CODE[A.dtype], code_pix, code_img, B, K, h, w, Sh, Sw, L, L2, cfg.num_labels,
             cfg.num_categories, bool(cfg.align_corners), cfg.threshold_op == ">=", UNION_MODES[cfg.union])
    if backend == "cpp":
        C.tally_cpu(*common, *sizes, _backend.num_threads(num_threads))
    else:
        check_label_category(cfg.label_category, cfg.num_categories)
        n = C.tally_cuda_workspace_ints(B, Sh, Sw, L, L2, cfg.num_labels, cfg.num_categories)
        workspace = torch.empty(max(1, n), dtype=torch.int32, device=A.device)
        C.tally_cuda(*common, T.ptr(workspace), *sizes, *T.cuda_launch(A))
