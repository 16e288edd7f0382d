"""Plain-PyTorch stand-ins for kernels being built on other branches (ExactQuantile,
QuantileSketch, IoUTally, distributed.all_merge): installed by conftest ONLY when unitscope lacks
the real ones, so these tests run before the kernels land and use the real kernels after."""
from __future__ import annotations

import copy

import torch

from unitscope.reference.bilinear import bilinear_resize
from unitscope.reference.dissect import quantile_linear


class ExactQuantile:
    def __init__(self, num_channels, q, total, *, dim=1, interpolation="linear", device=None, backend=None):
        self.K, self.q, self.total, self.dim = num_channels, q, total, dim
        self.values = torch.zeros((num_channels, 0), dtype=torch.float64)

    def update(self, x):
        x = x.movedim(self.dim, 0).reshape(self.K, -1).double().cpu()
        self.values = torch.cat([self.values, x], 1)

    def merge(self, other):
        self.values = torch.cat([self.values, other.values], 1)
        return self

    def result(self):
        if self.values.shape[1] != self.total:
            raise ValueError(f"saw {self.values.shape[1]} values, total={self.total}")
        return quantile_linear(self.values, self.q)

    def state_dict(self):
        return {"values": self.values.clone()}

    def load_state_dict(self, s):
        self.values = s["values"].clone()


class QuantileSketch(ExactQuantile):
    def __init__(self, num_channels, *, dim=1, size=None, device=None, seed=0):
        super().__init__(num_channels, 0.5, None, dim=dim)

    def quantile(self, q):
        return quantile_linear(self.values, q)


class IoUTally:
    def __init__(self, num_units, num_labels, *, label_category, num_categories, out_size, align_corners=False,
                 threshold_op=">", union="category", device=None, backend=None):
        self.K, self.C, self.ncat = num_units, num_labels, num_categories
        self.cat = torch.as_tensor(label_category).long().cpu()
        self.S, self.ac, self.op, self.union = tuple(out_size), align_corners, threshold_op, union
        self.intersection = torch.zeros((self.K, self.C), dtype=torch.int64)
        self.activation = torch.zeros((self.K, self.ncat), dtype=torch.int64)
        self.label = torch.zeros(self.C, dtype=torch.int64)
        self.activation_total = torch.zeros(self.K, dtype=torch.int64)
        self.images = 0

    def update(self, activations, thresholds, pixel_labels=None, image_labels=None, annotated=None):
        a = activations.float().cpu()
        thr = thresholds.float().cpu().view(-1, 1, 1)
        for b in range(a.shape[0]):
            up = bilinear_resize(a[b], self.S, self.ac)
            mask = up > thr if self.op == ">" else up >= thr
            msum = mask.sum((1, 2))
            self.activation_total += msum
            for ci in range(self.ncat):
                if self.union == "dataset" or bool(annotated[b, ci]):
                    self.activation[:, ci] += msum
            maps = pixel_labels[b].long().cpu()
            scal = image_labels[b].long().cpu().tolist()
            present = (set(maps.unique().tolist()) | set(scal)) - {0}
            for c in present:
                region = torch.ones(self.S, dtype=torch.bool) if c in scal else (maps == c).any(0)
                self.label[c] += int(region.sum())
                self.intersection[:, c] += (mask & region).sum((1, 2))
            self.images += 1

    def iou(self):
        d = self.activation[:, self.cat] + self.label[None] - self.intersection
        return torch.where(d > 0, self.intersection.double() / d.clamp(min=1).double(), torch.zeros((), dtype=torch.float64))

    def merge(self, o):
        for n in ("intersection", "activation", "label", "activation_total"):
            setattr(self, n, getattr(self, n) + getattr(o, n))
        self.images += o.images
        return self

    def state_dict(self):
        return {n: getattr(self, n).clone() for n in ("intersection", "activation", "label", "activation_total")} | {
            "images": self.images}

    def load_state_dict(self, s):
        for n in ("intersection", "activation", "label", "activation_total"):
            setattr(self, n, s[n].clone())
        self.images = int(s["images"])


def all_merge(obj):
    import torch.distributed as dist
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, obj.state_dict())
    obj.load_state_dict(states[0])
    for s in states[1:]:
        other = copy.deepcopy(obj)
        other.load_state_dict(s)
        obj.merge(other)
    return obj


def install():
    """Put the stand-ins where unitscope has no real implementation yet; returns their names."""
    import sys
    import types

    import unitscope
    used = []
    for name, obj in (("ExactQuantile", ExactQuantile), ("QuantileSketch", QuantileSketch), ("IoUTally", IoUTally)):
        if not hasattr(unitscope, name):
            setattr(unitscope, name, obj)
            used.append(name)
    try:
        import unitscope.distributed  # noqa: F401
    except ImportError:
        mod = types.ModuleType("unitscope.distributed")
        mod.all_merge = all_merge
        sys.modules["unitscope.distributed"] = mod
        unitscope.distributed = mod
        used.append("all_merge")
    return used
