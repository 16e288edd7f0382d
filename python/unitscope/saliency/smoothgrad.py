"""SmoothGrad (Smilkov et al., 2017): average a gradient map over copies of the image with Gaussian
noise added, to remove the high-frequency noise of raw gradients."""
from __future__ import annotations

import torch

from unitscope._compile import check_compile
from unitscope.saliency.base import Attribution, check_input, check_positive_int, warn_if_training


class SmoothGrad(Attribution):
    """Mean of method(x + N(0, sigma^2)) over n_samples noisy copies.

    Args:
        method (Attribution): any per-image method (VanillaGradient, GradientTimesInput,
            GuidedBackprop, IntegratedGradients, ...); its own reductions apply to each sample, as in
            the paper (e.g. |gradient| maps are averaged).
        n_samples (int): noisy copies per image.
        noise (float): sigma as a fraction of each image's value range (x.max() - x.min()); the
            paper recommends 0.1 to 0.2. 0 gives exactly the wrapped method's map.
        batch_size (int): noisy copies per call of the wrapped method, which bounds memory.
        seed (int or None): seeds the noise (a private generator; global RNG state is untouched).
        compile ("auto" | True | False): for the wrapped method's forward (see Attribution);
            default False (forward+backward ran slower compiled on a CPU).

    Returns what the wrapped method returns, averaged: e.g. (B, H, W) or (B, T, H, W).
    """

    def __init__(self, method, n_samples=25, noise=0.15, *, batch_size=32, seed=0, compile=False):
        if not isinstance(method, Attribution):
            raise TypeError(f"method must be a unitscope.saliency method, got {type(method).__name__}")
        super().__init__(method.model, output=method.output, preprocess=method.preprocess)
        self.method = method
        check_compile(compile)
        if method.compilable:  # the wrapped method's forward does the work (not guided backprop's hooks)
            method._runner.setting = compile
        self.n_samples = check_positive_int(n_samples, "n_samples")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
            raise ValueError(f"noise must be a finite number >= 0 (a fraction of the input range), got {noise!r}")
        self.noise = float(noise)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.seed = seed

    def plan_compile(self, calls_left: int) -> None:
        self.method.plan_compile(calls_left)

    def __call__(self, x, target=None):
        x = check_input(x)
        warn_if_training(self.model)
        targets, squeeze = self.resolve_targets(x, target)
        B, n = x.shape[0], self.n_samples
        gen = torch.Generator(device=x.device)
        if self.seed is not None:
            gen.manual_seed(int(self.seed))
        else:
            gen.seed()
        span = (x.detach().amax(dim=(1, 2, 3)) - x.detach().amin(dim=(1, 2, 3))).view(B, 1, 1, 1)
        sigma = self.noise * span
        # sample i of image b sits at flat index b * n + i; chunks of batch_size over that index
        total = None
        for start, stop in self.batches(B * n, self.batch_size):
            idx = torch.arange(start, stop, device=x.device) // n
            xb = x[idx]
            if self.noise > 0:
                noise = torch.randn(xb.shape, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)
                xb = xb + noise * sigma[idx]
            maps = self.method(xb, targets[idx])  # (chunk, T, ...)
            sums = torch.zeros((B,) + maps.shape[1:], dtype=maps.dtype, device=maps.device)
            sums.index_add_(0, idx, maps)
            total = sums if total is None else total + sums
        out = total / n
        return out[:, 0] if squeeze else out
