"""Cross-check of the saliency conventions (docs/guide-saliency.md) against Captum itself (the tests use the published
formulas and never import Captum): with the peer's convention selected, unitscope's map and Captum's
should agree to float32 rounding. Small random CNNs, CPU, a few seconds. Prints one line per check.

    python benchmarks/check_conventions_captum.py [--quick]
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from unitscope import saliency as S


def cnn(acts=(nn.ReLU, nn.ReLU), seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), acts[0](), nn.Conv2d(6, 8, 3, stride=2, padding=1), acts[1](),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


class Reused(nn.Module):
    """One ReLU module called twice (as EfficientNet's `_swish`)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.c2, self.relu, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU(), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.relu(self.c2(self.relu(self.c1(x)))).mean(dim=(2, 3)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer images and steps (a smoke run)")
    args = p.parse_args(argv)
    import captum.attr as C

    B = 2 if args.quick else 4
    x = torch.rand(B, 3, 14, 13, generator=torch.Generator().manual_seed(0))
    t = torch.arange(B) % 5
    rows = []

    def check(name, ours, theirs):
        ours, theirs = ours.detach(), theirs.detach()
        d = float((ours.double() - theirs.double()).abs().max())
        scale = float(theirs.double().abs().max())
        rows.append((name, d, scale))
        print(f"{name:58s} max|diff| {d:.2e}  (max|captum| {scale:.2e})", flush=True)

    net = cnn((nn.ReLU, nn.Tanh))
    steps = 5 if args.quick else 16
    for ours_m, cap_m in [("riemann_left", "riemann_left"), ("riemann_right", "riemann_right"),
                          ("riemann_middle", "riemann_middle"), ("captum_trapezoid", "riemann_trapezoid"),
                          ("gauss_legendre", "gausslegendre")]:
        a = S.IntegratedGradients(net, baseline=0.25, steps=steps, method=ours_m)(x, t)
        b = C.IntegratedGradients(net).attribute(x, baselines=0.25, target=t, n_steps=steps, method=cap_m)
        check(f"IG method={ours_m!r} vs Captum {cap_m!r}", a, b)
    for window, stride in [(4, 3), (5, 2), (3, 3)]:
        a = S.Occlusion(net, window, stride, baseline="black", last_window="crop")(x, t)
        b = C.Occlusion(net).attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                       baselines=0.0, target=t)[:, 0]
        check(f"Occlusion window {window} stride {stride} last_window='crop'", a, b)
    relu_net = cnn()
    a = S.GuidedGradCAM(relu_net, "3", upsample="nearest")(x, t)
    b = C.GuidedGradCam(relu_net, relu_net[3]).attribute(x, target=t)
    check("GuidedGradCAM upsample='nearest' vs Captum GuidedGradCam", a, b)
    mixed = cnn((nn.ReLU, nn.ELU))
    a = S.GuidedBackprop(mixed, activations="relu")(x, t)
    b = C.GuidedBackprop(mixed).attribute(x, target=t)
    check("GuidedBackprop activations='relu' (ReLU + ELU model)", a, b)
    gelu = cnn((nn.ReLU, nn.GELU))
    a = S.GuidedBackprop(gelu, activations="relu")(x, t)
    b = C.GuidedBackprop(gelu).attribute(x, target=t)
    check("GuidedBackprop activations='relu' (ReLU + GELU model)", a, b)
    r = Reused().eval()
    a = S.GradCAM(r, "relu@1", upsample=False, normalize=False)(x, t)
    b = C.LayerGradCam(r, r.relu).attribute(x, target=t, relu_attributions=True)[:, 0]
    check("GradCAM 'relu@1' vs Captum LayerGradCam(reused relu module)", a, b)
    worst = max(d / max(s, 1e-30) for _, d, s in rows)
    print(f"\nlargest relative difference: {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
