"""Layer integrated gradients (Captum's LayerIntegratedGradients): integrated gradients in the space
of a hidden layer's output, so that the attributions belong to the layer's units (B, K, h, w)."""
from __future__ import annotations

import torch

from unitscope.hooks import LayerCapture, _first_tensor
from unitscope.saliency.integrated_gradients import IntegratedGradients


class LayerIntegratedGradients(IntegratedGradients):
    """LIG_u(x) = (A_u(x) - A_u(x')) * integral_0^1 dS_c/dA_u (A(x') + a (A(x) - A(x'))) da.

    A is the layer's output; along the path the forward runs on x and the layer's output is replaced
    by A(x') + a (A(x) - A(x')), as Captum does by default (attribute_to_layer_input=False).

    Args:
        layer (str or nn.Module): as for the CAM methods ("name@k" for a module's k-th call).
        baseline, steps, method, batch_size, input_range, seed, output, preprocess: as for
            IntegratedGradients (method "captum_trapezoid" is Captum's "riemann_trapezoid").

    Call: method(x, target, return_gap=False) -> float Tensor shaped like the layer's output
    (B, K, h, w), with a T axis after B for (B, T) targets. gap = sum(attributions) - (S(x) - S(x'))
    is the completeness error; it is a quadrature error only when every path from the input to the
    output passes through the layer.
    """

    def __init__(self, model, layer, *, baseline="black", steps=50, method="gauss_legendre", batch_size=32,
                 input_range=(0.0, 1.0), seed=0, output=None, preprocess=None):
        super().__init__(model, baseline=baseline, steps=steps, method=method, batch_size=batch_size,
                         channel=None, input_range=input_range, seed=seed, output=output, preprocess=preprocess)
        cap = LayerCapture(model, layer)  # resolves the layer now: a bad name fails here
        self.layer_name, self.layer = cap.spec, cap.module
        self._call = cap.call or 0

    def layer_output(self, x):
        """The layer's output for input x, without gradients."""
        with torch.no_grad(), LayerCapture(self.model, self.layer_name) as cap:
            self.scores(x, eager=True)
        return cap.output.detach()

    def layer_gradient(self, x, points, target):
        """d score[b, target[b]] / d A at A = points, the layer's output replaced by points (B, ...).
        (A layer that does not run was refused by layer_output, which always runs first.)"""
        points = points.detach().requires_grad_(True)
        calls = [0]

        def replace(module, inputs, out):
            n, calls[0] = calls[0], calls[0] + 1
            if n != self._call:
                return None
            _, rebuild = _first_tensor(self.layer_name, out)
            return rebuild(points)  # same shape: points are made from this layer's outputs for x

        handle = self.layer.register_forward_hook(replace)
        try:
            with torch.enable_grad():
                s = self.scores(x.detach(), eager=True)
        finally:
            handle.remove()
        self._check_target_range(s, target[:, None])
        (g,) = torch.autograd.grad(s.gather(1, target[:, None]).sum(), points)
        return g

    def _integrate(self, x, targets):
        B, T = targets.shape
        base = self.make_baseline(x.detach())
        a_x, a_b = self.layer_output(x.detach()), self.layer_output(base)
        delta = a_x - a_b
        S = len(self.alphas)
        shape = (-1,) + (1,) * (a_x.dim() - 1)
        alphas = torch.tensor(self.alphas, dtype=a_x.dtype, device=x.device)
        wts = torch.tensor(self.weights, dtype=torch.float32, device=x.device)
        attr = torch.zeros((B * T,) + a_x.shape[1:], dtype=torch.float32, device=x.device)
        # path point p = (image b, target t, node s) at flat index (b * T + t) * S + s, as IntegratedGradients
        for start, stop in self.batches(B * T * S, self.batch_size):
            p = torch.arange(start, stop, device=x.device)
            b, t, s = p // (T * S), (p // S) % T, p % S
            pts = a_b[b] + alphas[s].view(shape) * delta[b]
            g = self.layer_gradient(x.detach()[b], pts, targets[b, t]).float() * wts[s].view(shape)
            attr.index_add_(0, b * T + t, g)
        attr = (attr.view((B, T) + a_x.shape[1:]) * delta[:, None].float()).to(a_x.dtype)
        with torch.no_grad():
            s_x = self.scores(x.detach(), eager=True).double().gather(1, targets)
            s_b = self.scores(base, eager=True).double().gather(1, targets)
        gap = attr.double().flatten(2).sum(dim=2) - (s_x - s_b)
        return attr, gap
