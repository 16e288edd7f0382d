"""KernelSHAP (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017):
Shapley values of the superpixels from a weighted linear fit with the Shapley kernel."""
from __future__ import annotations

import math

import torch

from unitscope.saliency.superpixels import SuperpixelMethod, weighted_linear_fit


def shapley_kernel(M, k):
    """Shapley kernel weight of a coalition of size k out of M (0 < k < M)."""
    return (M - 1) / (math.comb(M, k) * k * (M - k))


class KernelSHAP(SuperpixelMethod):
    """KernelSHAP over superpixels (see SuperpixelMethod for segments, sampling and batching).

    Sampler: when 2^M - 2 <= n_samples every coalition except the empty and the full one is
    scored, weighted by the Shapley kernel, and the result is the exact Shapley values (of the game
    "superpixels on, the rest at the baseline"). Otherwise coalition sizes are drawn with
    probability proportional to the kernel's total weight per size and members uniformly (seeded),
    each sample with weight 1. The fit enforces sum(phi) = S(x) - S(baseline) exactly (efficiency)
    by eliminating the last superpixel, as in the paper.
    """

    def sample(self, M, gen):
        if M < 2:
            return torch.zeros((0, M), dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        if M < 30 and 2 ** M - 2 <= self.n_samples:
            codes = torch.arange(1, 2 ** M - 1)
            Z = ((codes[:, None] >> torch.arange(M)[None]) & 1).double()
            w = torch.tensor([shapley_kernel(M, int(k)) for k in Z.sum(1)], dtype=torch.float64)
            return Z, w
        sizes = torch.arange(1, M)
        p = torch.tensor([(M - 1) / (k * (M - k)) for k in sizes.tolist()], dtype=torch.float64)
        k = sizes[torch.multinomial(p / p.sum(), self.n_samples, replacement=True, generator=gen)]
        ranks = torch.rand((self.n_samples, M), generator=gen).argsort(dim=1).argsort(dim=1)
        Z = (ranks < k[:, None]).double()  # a uniform random subset of size k per row
        return Z, torch.ones(self.n_samples, dtype=torch.float64)

    def fit(self, Z, y, w, f_full, f_empty):
        """Z (n, M), y (n, T), f_full / f_empty (T,) -> phi (T, M), intercept f_empty (T,)."""
        M = Z.shape[1]
        total = f_full - f_empty  # (T,)
        if M == 1 or Z.shape[0] == 0:
            phi = torch.zeros((total.shape[0], M), dtype=torch.float64)
            phi[:, -1] = total
            return phi, f_empty
        # y - f_empty = sum_m phi_m z_m with phi_M = total - sum_{m<M} phi_m
        yt = y - f_empty[None] - Z[:, -1:] * total[None]
        Xt = Z[:, :-1] - Z[:, -1:]
        coef, _ = weighted_linear_fit(Xt, yt, w, ridge=0.0, intercept=False)  # (M-1, T)
        phi = torch.cat([coef, (total - coef.sum(0))[None]], dim=0)
        return phi.T, f_empty
