"""What LIME and KernelSHAP share: superpixel segmentation (a grid, SLIC from scikit-image, or your
own labels), scoring images with some superpixels replaced by a baseline, and weighted linear fits."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from unitscope.saliency.base import Attribution, check_input, check_positive_int, warn_if_training
from unitscope.saliency.baselines import check_baseline, make_baseline


def grid_segments(H, W, n_segments):
    """Labels (H, W) int64 of a grid of about n_segments square cells, row-major ids from 0."""
    cell = max(1, int(math.ceil(math.sqrt(H * W / n_segments))))
    cols = -(-W // cell)
    i = torch.arange(H)[:, None] // cell
    j = torch.arange(W)[None, :] // cell
    return (i * cols + j).long()


def slic_segments(image, n_segments, compactness):
    """SLIC superpixels of image (C, H, W) float -> labels (H, W) int64 (needs scikit-image)."""
    try:
        from skimage.segmentation import slic
    except ImportError as e:
        raise ImportError('segments="slic" needs scikit-image: pip install scikit-image') from e
    img = image.detach().float().cpu().permute(1, 2, 0).numpy()
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    labels = slic(img.astype(np.float64), n_segments=n_segments, compactness=compactness, start_label=0,
                  channel_axis=-1 if img.shape[2] > 1 else None)
    return torch.from_numpy(np.asarray(labels)).long()


def relabel(labels):
    """Any integer labels (H, W) -> contiguous ids 0..M-1 (in sorted order of the given ids), M."""
    uniq, inv = torch.unique(labels, return_inverse=True)
    return inv.reshape(labels.shape).long(), int(uniq.numel())


def weighted_linear_fit(Z, y, w, ridge=0.0, intercept=True):
    """Weighted (ridge) least squares, float64.

    Z (n, M), y (n, T), w (n,) >= 0 -> coef (M, T), intercept (T,) minimising
    sum_i w_i (y_i - b - Z_i coef)^2 + ridge |coef|^2 (the intercept is not penalised).
    """
    Z, y, w = Z.double(), y.double(), w.double()
    if intercept:
        ws = w.sum()
        zbar, ybar = (w[:, None] * Z).sum(0) / ws, (w[:, None] * y).sum(0) / ws
    else:
        zbar, ybar = torch.zeros(Z.shape[1], dtype=Z.dtype), torch.zeros(y.shape[1], dtype=y.dtype)
    sw = w.sqrt()[:, None]
    A, rhs = sw * (Z - zbar), sw * (y - ybar)
    if ridge > 0:
        M = Z.shape[1]
        A = torch.cat([A, math.sqrt(ridge) * torch.eye(M, dtype=A.dtype)])
        rhs = torch.cat([rhs, torch.zeros((M, y.shape[1]), dtype=rhs.dtype)])
    coef = torch.linalg.lstsq(A, rhs, driver="gelsd").solution
    return coef, ybar - zbar @ coef


@dataclass
class SuperpixelFit:
    """One image's explanation: segments (H, W) int64 ids 0..M-1, coefficients (T, M) float64 (one
    per superpixel and target), intercept (T,), the samples Z (n, M) and their scores y (n, T)."""
    segments: torch.Tensor
    coefficients: torch.Tensor
    intercept: torch.Tensor
    Z: torch.Tensor
    y: torch.Tensor


class SuperpixelMethod(Attribution):
    """Base of LIME and KernelSHAP.

    Args:
        segments ("grid" | "slic" | Tensor (H, W) or (B, H, W) of ints): the superpixels.
        n_segments (int): about how many superpixels for "grid" and "slic".
        compactness (float): SLIC's colour/space trade-off.
        n_samples (int): perturbed images per image.
        baseline: what switched-off superpixels show ("gray" default; see baselines.make_baseline).
        batch_size (int): perturbed images per forward pass.
        seed (int): seeds the sampler (a private CPU generator, restarted for each image: the same
            samples on every device and whatever the batch).

    Returns float32 Tensor (B, H, W): each pixel gets its superpixel's coefficient.
    `explain(x, target)` returns the per-image SuperpixelFit objects instead.
    """

    compilable = True

    def __init__(self, model, *, segments="slic", n_segments=50, compactness=10.0, n_samples=1000, baseline="gray",
                 batch_size=64, seed=0, input_range=(0.0, 1.0), output=None, preprocess=None, compile="auto"):
        super().__init__(model, output=output, preprocess=preprocess, compile=compile)
        if not isinstance(segments, torch.Tensor) and segments not in ("grid", "slic"):
            raise ValueError(f"segments must be 'grid', 'slic' or a Tensor of integer labels, got {segments!r}")
        self.segments = segments
        self.n_segments = check_positive_int(n_segments, "n_segments")
        self.compactness = float(compactness)
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        self.baseline = baseline
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = seed
        self.input_range = input_range
        check_baseline(baseline)

    def segment(self, x):
        """Labels (B, H, W) int64 (ids 0..M_b-1 per image) and the list of M_b."""
        B, _, H, W = x.shape
        if isinstance(self.segments, torch.Tensor):
            lab = self.segments
            if lab.dtype.is_floating_point or lab.dim() not in (2, 3) or tuple(lab.shape[-2:]) != (H, W) \
                    or (lab.dim() == 3 and lab.shape[0] != B):
                raise ValueError(f"segments must be integer labels of shape (H, W) = ({H}, {W}) or (B, H, W) = "
                                 f"({B}, {H}, {W}), got {tuple(lab.shape)} {lab.dtype}")
            labs = [lab if lab.dim() == 2 else lab[b] for b in range(B)]
        elif self.segments == "grid":
            labs = [grid_segments(H, W, self.n_segments)] * B
        else:
            labs = [slic_segments(x[b], self.n_segments, self.compactness) for b in range(B)]
        out = [relabel(lab.cpu()) for lab in labs]
        return torch.stack([o[0] for o in out]).to(x.device), [o[1] for o in out]

    def sample(self, M, gen):
        """Coalitions Z (n, M) float in {0, 1} and sample weights (n,). Subclasses implement."""
        raise NotImplementedError

    def fit(self, Z, y, w, f_full, f_empty):
        """coefficients (T, M) and intercept (T,) from samples. Subclasses implement."""
        raise NotImplementedError

    @torch.no_grad()
    def score_coalitions(self, xb, base_b, labels, Z, targets_b):
        """Scores (n, T) of image xb (C, H, W) with superpixel m shown where Z[:, m] = 1, else base_b."""
        out = [torch.zeros((0, targets_b.shape[0]), dtype=torch.float64)]  # no coalitions: (0, T)
        Zd = Z.to(xb.device, xb.dtype)
        for start, stop in self.batches(Z.shape[0], self.batch_size):
            mask = Zd[start:stop][:, labels][:, None]  # (n, 1, H, W)
            imgs = base_b[None] + mask * (xb - base_b)[None]
            s = self.scores(imgs)
            self._check_target_range(s, targets_b[None])
            out.append(s.gather(1, targets_b[None].expand(stop - start, -1)).double().cpu())
        return torch.cat(out)

    def explain(self, x, target=None):
        """One SuperpixelFit per image (targets as in __call__, always with a T axis)."""
        x = check_input(x)
        warn_if_training(self.model)
        targets, _ = self.resolve_targets(x, target)
        return self._explain(x, targets)

    def _explain(self, x, targets):
        if not torch.isfinite(x).all():
            raise ValueError(f"x must be finite for {type(self).__name__} (a linear fit to the model's scores), "
                             "got NaN or inf values")
        labels, Ms = self.segment(x)
        base = make_baseline(x.detach(), self.baseline, input_range=self.input_range)
        fits = []
        for b in range(x.shape[0]):
            M = Ms[b]
            gen = torch.Generator()  # the same seed for every image: a batch gives the single-image maps
            gen.manual_seed(int(self.seed))
            Z, w = self.sample(M, gen)
            y = self.score_coalitions(x[b].detach(), base[b], labels[b], Z, targets[b])
            ends = self.score_coalitions(x[b].detach(), base[b], labels[b],
                                         torch.stack([torch.ones(M), torch.zeros(M)]), targets[b])
            if not (torch.isfinite(y).all() and torch.isfinite(ends).all()):
                raise ValueError(f"the model's scores of image {b}'s perturbed copies are not finite (NaN or inf); "
                                 f"{type(self).__name__} cannot fit them")
            coef, icpt = self.fit(Z, y, w, ends[0], ends[1])
            fits.append(SuperpixelFit(labels[b], coef, icpt, Z, y))
        return fits

    def _attribute(self, x, targets):
        fits = self._explain(x, targets)
        return torch.stack([f.coefficients.to(x.device, torch.float32)[:, f.segments] for f in fits])
