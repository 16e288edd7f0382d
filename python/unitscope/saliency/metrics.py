"""Localisation and faithfulness scores of saliency maps, with Quantus's definitions (quantus 0.6:
metrics/localisation/pointing_game.py, relevance_mass_accuracy.py, metrics/faithfulness/
faithfulness_correlation.py): the pointing game and relevance mass on (Broden-style) object masks,
and the faithfulness correlation between attribution sums and score drops."""
from __future__ import annotations

import torch

from unitscope.saliency.base import check_positive_int


def _pair(maps, masks):
    if not isinstance(maps, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise TypeError(f"maps and masks must be Tensors, got {type(maps).__name__} and {type(masks).__name__}")
    if maps.dim() < 2 or maps.shape[0] != masks.shape[0] or maps.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"maps (B, ..., H, W) and masks (B, H, W) must share B, H and W; got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")
    B = maps.shape[0]
    m = masks.bool()
    if maps.dim() == 4 and m.dim() == 3:  # (B, C, H, W) maps: the mask holds for every channel
        m = m[:, None].expand_as(maps)
    if m.shape != maps.shape:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit maps of shape {tuple(maps.shape)}")
    return maps.reshape(B, -1).double(), m.reshape(B, -1)


def pointing_game(maps, masks, weighted=False):
    """1.0 where a maximum of the map lies inside the mask, else 0.0; NaN for an empty mask.

    maps (B, H, W) or (B, C, H, W), masks (B, H, W) bool. weighted=True scores a hit as
    1 - mask size / image size (Quantus's `weighted`). Ties: any maximal location counts (Quantus).
    """
    a, s = _pair(maps, masks)
    hit = (s & (a == a.amax(dim=1, keepdim=True))).any(dim=1).double()
    if weighted:
        hit = torch.where(hit > 0, 1 - s.sum(dim=1) / s.shape[1], hit)
    return torch.where(s.any(dim=1), hit, torch.full_like(hit, float("nan")))


def relevance_mass(maps, masks, absolute=False):
    """Relevance mass accuracy: sum of the map inside the mask / sum of the map (NaN for an empty
    mask). absolute=True takes |map| first (Quantus's abs=True; its default is the signed map)."""
    a, s = _pair(maps, masks)
    if absolute:
        a = a.abs()
    out = (a * s).sum(dim=1) / a.sum(dim=1)
    return torch.where(s.any(dim=1), out, torch.full_like(out, float("nan")))


def faithfulness_correlation(method_or_scores, x, maps, target, *, subset_size=224, n_runs=100, seed=0,
                             batch_size=32):
    """Pearson correlation, per image, between the attribution summed over a random subset of input
    values and the drop of the class score when those values are set to the image's minimum
    (Quantus's "black" baseline), over n_runs random subsets of subset_size values.

    method_or_scores: an Attribution (its explained score, preprocess included) or a callable
        x (n, C, H, W) -> scores (n, N). maps: attributions (B, C, H, W) or (B, H, W) (then the same
        value for every channel, as Quantus broadcasts them). target (B,) ints. seed: the subsets'
        torch.Generator (Quantus draws from numpy's global generator).
    Returns float64 Tensor (B,); NaN where the drops or the sums do not vary.
    """
    check_positive_int(subset_size, "subset_size")
    check_positive_int(n_runs, "n_runs", minimum=2)
    check_positive_int(batch_size, "batch_size")
    score = method_or_scores.scores if hasattr(method_or_scores, "scores") else method_or_scores
    if not callable(score):
        raise TypeError(f"method_or_scores must be an Attribution or a callable, got {type(score).__name__}")
    B = x.shape[0]
    a = maps if maps.dim() == 4 else maps[:, None].expand(B, x.shape[1], *maps.shape[-2:])
    if tuple(a.shape) != tuple(x.shape):
        raise ValueError(f"maps must have the shape of x {tuple(x.shape)} or (B, H, W), got {tuple(maps.shape)}")
    n = x[0].numel()
    if subset_size > n:
        raise ValueError(f"subset_size must be at most the number of input values {n}, got {subset_size}")
    target = torch.as_tensor(target, device=x.device).long().view(B)
    gen = torch.Generator().manual_seed(seed)
    subsets = torch.stack([torch.stack([torch.randperm(n, generator=gen)[:subset_size] for _ in range(B)])
                           for _ in range(n_runs)])  # (runs, B, k)
    a = a.reshape(B, n).double()
    xf = x.reshape(B, n)
    low = xf.amin(dim=1, keepdim=True)
    with torch.no_grad():
        y = score(x).gather(1, target[:, None])[:, 0].double()
        drops = torch.empty(n_runs, B, dtype=torch.float64, device=x.device)
        pairs = [(r, b) for r in range(n_runs) for b in range(B)]
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            xp = torch.stack([xf[b].scatter(0, subsets[r, b].to(x.device), low[b].expand(subset_size))
                              for r, b in chunk]).view(len(chunk), *x.shape[1:])
            bs = torch.tensor([b for _, b in chunk], device=x.device)
            yp = score(xp).gather(1, target[bs][:, None])[:, 0].double()
            for (r, b), v in zip(chunk, yp):
                drops[r, b] = y[b] - v
    sums = torch.stack([a.gather(1, subsets[r].to(x.device)).sum(dim=1) for r in range(n_runs)])  # (runs, B)
    d, s = drops - drops.mean(0), sums - sums.mean(0)
    den = (d.pow(2).sum(0) * s.pow(2).sum(0)).sqrt()
    return torch.where(den > 0, (d * s).sum(0) / den.clamp(min=1e-300), torch.full_like(den, float("nan")))
