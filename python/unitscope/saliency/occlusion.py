"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014):
slide a window of baseline values over the image; a pixel's attribution is the mean drop of the
score over the windows that cover it."""
from __future__ import annotations

import torch

from unitscope.saliency.base import Attribution, check_choice, check_positive_int
from unitscope.saliency.baselines import check_baseline, make_baseline


def _pair(v, name):
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in v)):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {v!r}")
    return int(v[0]), int(v[1])


def window_starts(size, window, stride, last_window="shift"):
    """Top (or left) edges 0, stride, 2 stride, ... of windows covering [0, size).

    "shift": the starts up to size - window, plus size - window itself, so that the last window
    reaches the border inside the image. "crop" (Captum): ceil((size - window) / stride) + 1 starts
    k * stride; the last window may overhang the border and is cropped there (starts >= size dropped).
    """
    if window >= size:
        return [0]
    if last_window == "crop":
        n = -(-(size - window) // stride) + 1
        return [k * stride for k in range(n) if k * stride < size]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


class Occlusion(Attribution):
    """Occlusion map.

    Args:
        window (int or (h, w)): the occluding patch, clipped to the image size.
        stride (int or (h, w)): step between windows. With stride > window some pixels are never
            covered: they get 0.
        last_window ("shift" | "crop"): where the stride does not divide (size - window), "shift"
            (default) moves the last window back to end at the border; "crop" (Captum's Occlusion)
            keeps it at its multiple of the stride and crops the overhang.
        baseline: what the window shows instead ("gray" default; see baselines.make_baseline).
        batch_size (int): occluded images per forward pass.
        compile ("auto" | True | False): see Attribution.

    Returns float Tensor (B, H, W): mean over covering windows of S(x) - S(x occluded).
    """

    compilable = True

    def __init__(self, model, window=16, stride=8, baseline="gray", *, last_window="shift", batch_size=64,
                 input_range=(0.0, 1.0), output=None, preprocess=None, compile="auto"):
        super().__init__(model, output=output, preprocess=preprocess, compile=compile)
        self.last_window = check_choice(last_window, ("shift", "crop"), "last_window")
        self.window = _pair(window, "window")
        self.stride = _pair(stride, "stride")
        self.baseline = baseline
        self.input_range = input_range
        self.batch_size = check_positive_int(batch_size, "batch_size")
        check_baseline(baseline)

    @torch.no_grad()
    def _attribute(self, x, targets):
        B, C, H, W = x.shape
        T = targets.shape[1]
        wh, ww = min(self.window[0], H), min(self.window[1], W)
        tops = window_starts(H, wh, self.stride[0], self.last_window)
        lefts = window_starts(W, ww, self.stride[1], self.last_window)
        wins = [(t, l) for t in tops for l in lefts]
        P = len(wins)
        base = make_baseline(x, self.baseline, input_range=self.input_range)
        s0 = self.scores(x)
        self._check_target_range(s0, targets)
        acc = torch.promote_types(x.dtype, torch.float32)  # float32 at least, float64 for double input
        s0 = s0.gather(1, targets).to(acc)  # (B, T)
        total = torch.zeros((B, T, H, W), dtype=acc, device=x.device)
        count = torch.zeros((H, W), dtype=acc, device=x.device)
        for t, l in wins:
            count[t:t + wh, l:l + ww] += 1
        # occluded image (b, window p) at flat index b * P + p; slices crop overhanging windows
        for start, stop in self.batches(B * P, self.batch_size):
            idx = list(range(start, stop))
            xb = x[[i // P for i in idx]].clone()
            for j, i in enumerate(idx):
                b, (t, l) = i // P, wins[i % P]
                xb[j, :, t:t + wh, l:l + ww] = base[b, :, t:t + wh, l:l + ww]
            bi = torch.tensor([i // P for i in idx], device=x.device)
            drop = s0[bi] - self.scores(xb).to(acc).gather(1, targets[bi])  # (n, T)
            for j, i in enumerate(idx):
                b, (t, l) = i // P, wins[i % P]
                total[b, :, t:t + wh, l:l + ww] += drop[j][:, None, None]
        return (total / count.clamp(min=1)).to(x.dtype)  # pixels no window covers (stride > window) get 0
