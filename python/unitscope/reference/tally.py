"""The upsample-threshold-IoU tally of network dissection (Bau et al., CVPR 2017) in plain PyTorch:
the definition of the counts every backend of unitscope.IoUTally reproduces exactly. It resizes one
image's K maps at a time (K x S_h x S_w floats), which the fused kernels never do.
"""
from __future__ import annotations

import torch

from unitscope._checks import check_union
from unitscope.reference.bilinear import bilinear_resize


def pixel_label_sets(pixel_labels: torch.Tensor | None, image_labels: torch.Tensor | None, b: int,
                     P: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image b's labels without repeats: (per-pixel labels int64[P, L], 0 where a label is a repeat
    of an earlier map's label at that pixel or is one of the image's labels; unique nonzero image
    labels int64[n])."""
    img = torch.zeros(0, dtype=torch.int64)
    if image_labels is not None:
        img = torch.unique(image_labels[b].to(torch.int64).cpu())
        img = img[img != 0]
    if pixel_labels is None or pixel_labels.shape[1] == 0:
        return torch.zeros((P, 0), dtype=torch.int64), img
    lab = pixel_labels[b].to(torch.int64).cpu().reshape(pixel_labels.shape[1], P).t()  # (P, L)
    lab = torch.sort(lab, dim=1).values
    repeat = torch.zeros_like(lab, dtype=torch.bool)
    repeat[:, 1:] = lab[:, 1:] == lab[:, :-1]
    lab = torch.where(repeat | torch.isin(lab, img), torch.zeros_like(lab), lab)
    return lab, img


def tally_counts(activations, thresholds, pixel_labels=None, image_labels=None, annotated=None, *,
                 num_labels: int, label_category, num_categories: int, out_size, align_corners=False,
                 threshold_op=">", union="category"):
    """Counts of one batch.

    Args:
        activations (Tensor[B, K, h, w], float): resized to out_size with reference.bilinear_resize.
        thresholds (Tensor[K], float): unit k's mask is resized > thresholds[k] (or >=), the
            comparison made exactly (float64).
        pixel_labels (Tensor[B, L, S_h, S_w], int, optional): 0 = none; one label at one pixel counts
            once however many maps carry it.
        image_labels (Tensor[B, L2], int, optional): labels that cover every pixel of the image.
        annotated (Tensor[B, num_categories], bool, optional): default: a category is annotated in
            an image where any of its labels occurs (pixel or image label).
        label_category (Tensor[C], int): category of each label (entry 0 unused).
        union: "category" counts unit pixels toward activation[k, cat] only in images annotated for
            cat; "dataset" in every image; "mask" (NetDissect-Lite's) only in images where a pixel of
            unit k's mask carries a label of cat (after the one-label-once-per-pixel rule) or the
            image has an image label of cat (`annotated` is not used).

    Returns:
        dict of int64 CPU tensors: intersection (K, C), activation (K, num_categories), label (C,),
        activation_total (K,), images (0-d).
    """
    check_union(union)
    B, K = activations.shape[:2]
    Sh, Sw = out_size
    P = Sh * Sw
    C = num_labels
    cat_of = torch.as_tensor(label_category).to(torch.int64).cpu().clone()
    cat_of[0] = 0  # label 0 is never counted
    thr = thresholds.to(torch.float64).cpu()[:, None]
    inter = torch.zeros(K * C, dtype=torch.int64)
    act = torch.zeros((K, num_categories), dtype=torch.int64)
    label = torch.zeros(C, dtype=torch.int64)
    total = torch.zeros(K, dtype=torch.int64)
    for b in range(B):
        up = bilinear_resize(activations[b].cpu(), (Sh, Sw), align_corners).reshape(K, P).to(torch.float64)
        mask = up > thr if threshold_op == ">" else up >= thr  # (K, P)
        n = mask.sum(dim=1)
        lab, img = pixel_label_sets(pixel_labels, image_labels, b, P)
        # intersections with pixel labels: one bincount over the (unit, label) pairs of masked pixels
        k_idx, p_idx = torch.nonzero(mask, as_tuple=True)
        masked = lab[p_idx]  # (pixels of all masks, L)
        pairs = k_idx[:, None] * C + masked
        inter += torch.bincount(pairs[masked != 0], minlength=K * C)
        for c in img.tolist():  # an image label covers every pixel
            inter[torch.arange(K) * C + c] += n
        present = lab[lab != 0]
        label += torch.bincount(present, minlength=C)
        label[img] += P
        total += n
        if union == "dataset":
            act += n[:, None]
        elif union == "mask":  # the categories of the labels inside each unit's mask, and the image's
            in_mask = k_idx[:, None] * num_categories + cat_of[masked]
            seen = torch.bincount(in_mask[masked != 0], minlength=K * num_categories).reshape(K, num_categories) > 0
            seen[:, cat_of[img]] = True
            act += n[:, None] * seen.to(torch.int64)
        else:
            if annotated is not None:
                ann = annotated[b].cpu().to(torch.bool)
            else:
                ann = torch.zeros(num_categories, dtype=torch.bool)
                ann[cat_of[torch.cat([present, img])]] = True
            act += n[:, None] * ann[None, :].to(torch.int64)
    return {"intersection": inter.reshape(K, C), "activation": act, "label": label,
            "activation_total": total, "images": torch.tensor(B, dtype=torch.int64)}
