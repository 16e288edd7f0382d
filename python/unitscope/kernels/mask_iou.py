"""unitscope.kernels.mask_iou: per-class IoU of thresholded score maps against an integer label map,
for segmentation metrics, on the IoU tally kernel (torch.ops.unitscope.tally_) with no dissection
conventions: class 0 is a class, an optional ignore_index, scalar or per-class thresholds."""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch import Tensor

from unitscope import _tensors as T
from unitscope.kernels.tally import LABEL_DTYPES, TallyConfig, check_batch


class MaskIoU(NamedTuple):
    """What mask_iou returns; counts add over batches (sum them, then iou = intersection / union)."""

    iou: Tensor           # (K,) float64: intersection / union, NaN where union is 0
    intersection: Tensor  # (K,) int64
    union: Tensor         # (K,) int64


def mask_iou(scores: T.ArrayLike, labels: T.ArrayLike, thresholds: float | Tensor = 0.5, *,
             ignore_index: int | None = None, threshold_op: str = ">", align_corners: bool = False,
             backend: str | None = None, num_threads: int | None = None) -> MaskIoU:
    """IoU of each class's mask with its label, over every pixel of the batch.

    Args:
        scores (Tensor[B, K, h, w], float16/bfloat16/float32/float64): one map per class (logits,
            probabilities, or one-hot hard masks); resized bilinearly to the labels' size as
            F.interpolate(mode="bilinear", align_corners=align_corners) (reference/bilinear.py).
        labels (Tensor[B, S_h, S_w], uint8/int16/int32/int64): the class of each pixel, 0..K-1, or
            ignore_index.
        thresholds (float or Tensor[K] float): class k's mask is resized score > thresholds[k]
            (">=" with threshold_op=">="), compared exactly in the thresholds' precision.
        ignore_index (int, optional): label of pixels left out of every count.
        backend, num_threads: as for every kernel (None picks by device / torch.get_num_threads()).

    Returns:
        MaskIoU(iou, intersection, union), each (K,) on the scores' device: intersection[k] counts the
        pixels in class k's mask and labelled k; union[k] those in the mask or labelled k (ignored
        pixels in neither). Exact int64 counts; one kernel call (no per-class loop).
    """
    A, _ = T.as_tensor(scores, "scores")
    T.check_ndim(A, 4, "scores", "(B, K, h, w)")
    T.check_float(A, "scores")
    lab, _ = T.as_tensor(labels, "labels")
    T.check_ndim(lab, 3, "labels", "(B, S_h, S_w)")
    T.check_int(lab, "labels", LABEL_DTYPES)
    B, K = A.shape[:2]
    if lab.shape[0] != B:
        raise ValueError(f"labels must have B = {B} rows (the batch of scores), got shape {tuple(lab.shape)}")
    if min(lab.shape[1:]) < 1 or K < 1:
        raise ValueError(f"scores must have K >= 1 and labels S_h, S_w >= 1, got {tuple(A.shape)} and {tuple(lab.shape)}")
    T.check_same_device(A, "scores", lab, "labels")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if threshold_op not in (">", ">="):
        raise ValueError(f"threshold_op must be '>' or '>=', got {threshold_op!r}")
    if isinstance(thresholds, numbers.Real) and not isinstance(thresholds, bool):
        thresholds = torch.full((K,), float(thresholds), dtype=torch.float64, device=A.device)
    elif not isinstance(thresholds, Tensor):
        raise TypeError(f"thresholds must be a float or a (K,) = ({K},) tensor, got {type(thresholds).__name__}")
    lab64 = lab.to(torch.int64)
    ignored = torch.zeros_like(lab64, dtype=torch.bool) if ignore_index is None else lab64 == int(ignore_index)
    valid = (lab64 >= 0) & (lab64 < K) & ~ignored  # an ignore_index in [0, K) leaves that class unlabelled
    if not torch.compiler.is_compiling():  # traced, the kernel refuses the out-of-range code set below
        bad = ~valid & ~ignored
        if bool(bad.any()):
            raise ValueError(f"labels must hold classes in [0, K) = [0, {K})"
                             f"{'' if ignore_index is None else f' or ignore_index = {ignore_index}'}, "
                             f"got {int(lab[bad][0])}")
    # tally labels: 0 none (unused), 1..K the classes, K+1 ignored, K+2 invalid (refused by the kernel)
    code = torch.where(valid, lab64 + 1, torch.where(ignored, K + 1, K + 2))
    C = K + 2
    cfg = TallyConfig(K, C, 1, tuple(lab.shape[1:]), bool(align_corners), threshold_op, "dataset",
                      torch.zeros(C, dtype=torch.int64, device=A.device))
    batch = check_batch(cfg, A.device, A, thresholds, code[:, None], check_label_range=False)
    def z(*s):
        return torch.zeros(s, dtype=torch.int64, device=A.device)

    inter, act, label, total = z(K, C), z(K, 1), z(C), z(K)
    torch.ops.unitscope.tally_(batch.activations, batch.thresholds32, batch.pixel_labels, None, None,
                               cfg.label_category, inter, act, label, total, cfg.out_size[0], cfg.out_size[1],
                               cfg.align_corners, threshold_op == ">=", True, backend, num_threads)
    classes = torch.arange(K, device=A.device)
    intersection = inter[classes, classes + 1]
    in_mask = total - inter[:, K + 1]            # mask pixels that are not ignored
    union = in_mask + label[1:K + 1] - intersection
    iou = intersection.double() / union.double()  # 0 / 0 = NaN where a class is in neither
    return MaskIoU(iou, intersection, union)
