"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): the input-gradient term |x * dS/dx| plus, for every
layer with a bias, |b * dS/dz| (z the layer's output), each channel post-processed (min-max to
[0, 1], bilinear to the input size) and summed over channels and layers. Not tied to one layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unitscope.saliency.base import Attribution


def _channel_maps(m, size, eps=1e-7, chunk=64):
    """(B, C, h, w) -> (B, H, W): each channel min-max scaled, (m - min) / (eps + max - min), resized
    bilinearly (align_corners=False), then summed over the channels (pytorch-grad-cam's order); in
    chunks of channels, so that C full-size maps never exist at once."""
    m = m - m.flatten(2).amin(dim=2)[:, :, None, None]
    m = m / (eps + m.flatten(2).amax(dim=2)[:, :, None, None])
    if tuple(m.shape[-2:]) == tuple(size):
        return m.sum(dim=1)
    return sum(F.interpolate(m[:, i:i + chunk], size=size, mode="bilinear", align_corners=False).sum(dim=1)
               for i in range(0, m.shape[1], chunk))


def _effective_bias(module):
    """The bias a Conv2d adds, or a BatchNorm2d's in eval mode: beta - mean * gamma / sqrt(var + eps)."""
    if isinstance(module, nn.BatchNorm2d):
        gamma = module.weight if module.weight is not None else 1.0
        return module.bias - module.running_mean * gamma / torch.sqrt(module.running_var + module.eps)
    return module.bias


class FullGrad(Attribution):
    """FullGrad saliency.

    Args:
        model, output, preprocess: see Attribution. The input-gradient term is taken in the model's
            input space (after preprocess), as the paper and pytorch-grad-cam do.
        normalize (bool): min-max scale the summed map to [0, 1] (default, as pytorch-grad-cam).

    The bias layers are the model's Conv2d modules with a bias and its BatchNorm2d modules with
    running statistics and a shift (pytorch-grad-cam matches the exact types, so it skips
    subclasses of Conv2d); a model with none is refused. Returns float Tensor (B, H, W).
    """

    def __init__(self, model, *, normalize=True, output=None, preprocess=None):
        super().__init__(model, output=output, preprocess=preprocess)
        self.normalize = bool(normalize)
        self.layers = [m for m in model.modules()
                       if (isinstance(m, nn.Conv2d) and m.bias is not None)
                       or (isinstance(m, nn.BatchNorm2d) and m.bias is not None and m.running_mean is not None)]
        if not self.layers:
            raise ValueError("FullGrad needs Conv2d or BatchNorm2d layers with a bias; the model has none")

    def _attribute(self, x, targets):
        outs = {}

        def keep(module, inputs, output):
            outs[module] = output
            return output.clone()  # an in-place op after the layer must not change the kept output

        with torch.no_grad():
            xin = self.preprocess(x) if self.preprocess is not None else x
        xin = xin.detach().requires_grad_(True)
        pre, self.preprocess = self.preprocess, None
        handles = [m.register_forward_hook(keep) for m in self.layers]
        try:
            with torch.enable_grad():
                s = self.scores(xin, eager=True)
        finally:
            self.preprocess = pre
            for h in handles:
                h.remove()
        self._check_target_range(s, targets)
        layers = [m for m in self.layers if m in outs]
        size = tuple(x.shape[-2:])
        maps = []
        T = targets.shape[1]
        for t in range(T):
            grads = torch.autograd.grad(s.gather(1, targets[:, t:t + 1]).sum(), [xin] + [outs[m] for m in layers],
                                        retain_graph=t < T - 1)
            total = _channel_maps((grads[0] * xin).abs().detach(), size)
            for m, g in zip(layers, grads[1:]):
                total = total + _channel_maps((_effective_bias(m).detach()[None, :, None, None] * g).abs(), size)
            maps.append(total)
        out = torch.stack(maps, dim=1)
        if self.normalize:
            flat = out.flatten(2)
            out = out - flat.amin(dim=2)[:, :, None, None]
            out = out / (1e-7 + out.flatten(2).amax(dim=2)[:, :, None, None])
        return out
