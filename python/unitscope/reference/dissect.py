"""A straightforward network dissection in plain PyTorch: the definition unitscope.dissect() is
tested against. Keeps every activation in memory, thresholds with a float64 sort (torch.quantile's
formula), upsamples with reference.bilinear_resize and counts image by image, label by label.
Small datasets only.
"""
from __future__ import annotations

import numpy as np
import torch

from unitscope._model_state import ModelState
from unitscope.reference.bilinear import bilinear_resize


def quantile_linear(values: torch.Tensor, q: float) -> torch.Tensor:
    """values (K, n) -> (K,) float64: torch.nanquantile(values.double(), q, dim=1) ('linear', NaN
    ignored); past torch's 2^24-element limit, the same formula on a sorted copy."""
    values = values.double()
    if values.shape[1] <= 2 ** 24:
        return torch.nanquantile(values, q, dim=1)
    out = []
    for row in values:
        row = row[~torch.isnan(row)].sort().values
        pos = q * (row.numel() - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, row.numel() - 1)
        out.append(row[lo] + (row[hi] - row[lo]) * (pos - lo))
    return torch.stack(out)


def collect_activations(model, layers, dataset, preprocess=None, batch_size=16) -> dict:
    """{layer: float32[N, K, h, w]} for every image of the dataset, in index order."""
    modules = dict(model.named_modules())
    store = {layer: [] for layer in layers}
    # a copy at hook time: the layer's output as it returned it, before any later in-place operation
    handles = [modules[layer].register_forward_hook(
        lambda m, i, o, layer=layer: store[layer].append(o.detach().float().clone())) for layer in layers]
    saved = ModelState(model)
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
                if preprocess is not None:  # (None: the [0, 1] images, as unitscope.dissect)
                    x = preprocess(x)
                model(x)
    finally:
        saved.restore()
        for h in handles:
            h.remove()
    return {layer: torch.cat(v) for layer, v in store.items()}


def layer_counts(acts, thresholds, dataset, *, threshold_op=">", union="category", align_corners=False) -> dict:
    """Counts of one layer: acts float32[N, K, h, w], thresholds float32[K], over `dataset` (a
    BrodenDataset, index order). Returns intersection (K, C), activation (K, ncat), label (C,),
    activation_total (K,), images, iou (K, C) float64."""
    N, K = acts.shape[:2]
    C, ncat = dataset.num_labels, len(dataset.categories)
    cat_of = torch.from_numpy(dataset.label_category.clip(min=0))
    inter = torch.zeros((K, C), dtype=torch.int64)
    act = torch.zeros((K, ncat), dtype=torch.int64)
    label = torch.zeros(C, dtype=torch.int64)
    total = torch.zeros(K, dtype=torch.int64)
    thr = thresholds.float().view(K, 1, 1)
    for i in range(N):
        item = dataset[i]
        maps, scalars = item["pixel_labels"].long(), item["image_labels"].long()
        S = item["label_size"]
        up = bilinear_resize(acts[i], S, align_corners)
        mask = up > thr if threshold_op == ">" else up >= thr
        msum = mask.sum(dim=(1, 2))
        total += msum
        for ci in range(ncat):
            if union == "dataset" or (union == "category" and bool(item["annotated"][ci])):
                act[:, ci] += msum
        present = set(maps.unique().tolist()) | set(scalars.tolist())
        present.discard(0)
        in_mask = torch.zeros((K, ncat), dtype=torch.bool)  # union="mask": a label of the category in the mask
        for c in sorted(present):
            if c in scalars.tolist():
                region = torch.ones(S, dtype=torch.bool)
            else:
                region = (maps == c).any(dim=0)
            label[c] += int(region.sum())
            hits = (mask & region).sum(dim=(1, 2))
            inter[:, c] += hits
            in_mask[:, cat_of[c]] |= hits > 0
        if union == "mask":
            act += msum[:, None] * in_mask.to(torch.int64)
    denom = act[:, cat_of] + label[None, :] - inter
    iou = torch.where(denom > 0, inter.double() / denom.clamp(min=1).double(), torch.zeros((), dtype=torch.float64))
    return {"intersection": inter, "activation": act, "label": label, "activation_total": total,
            "images": N, "iou": iou}


def dissect(model, layers, dataset, *, quantile=0.995, threshold_op=">", union="category", align_corners=False,
            preprocess=None, thresholds=None) -> dict:
    """{layer: {"thresholds": float32[K], **layer_counts}}. `thresholds` ({layer: (K,)}) overrides
    the quantile (to compare counts alone)."""
    all_acts = collect_activations(model, layers, dataset, preprocess)
    out = {}
    for layer, a in all_acts.items():
        K = a.shape[1]
        if thresholds is not None and layer in thresholds:
            thr = thresholds[layer].float()
        else:
            thr = quantile_linear(a.transpose(0, 1).reshape(K, -1), quantile).float()
        out[layer] = {"thresholds": thr, **layer_counts(a, thr, dataset, threshold_op=threshold_op, union=union,
                                                        align_corners=align_corners)}
    return out
