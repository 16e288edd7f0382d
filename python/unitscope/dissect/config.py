"""DissectConfig: every setting of one dissect() call, checked once when it is made and frozen after;
what a checkpoint's key records of it, and what a result's settings show."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from unitscope._checks import IOU_THRESHOLD, UPSAMPLE, check_threshold_op, check_union, check_upsample
from unitscope._compile import check_compile
from unitscope.dissect.ties import TIES
from unitscope.models import IMAGENET_MEAN, IMAGENET_STD, Normalize

# the default preprocess: (B, 3, H, W) float in [0, 1] -> ImageNet mean/std normalized
imagenet_preprocess = Normalize(IMAGENET_MEAN, IMAGENET_STD)


def _unchanged(x):
    return x


def _int(value, name: str, least: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class DissectConfig:
    """dissect()'s settings (see there for each); ValueError/TypeError naming the first bad one."""
    quantile: float = 0.995
    iou_threshold: float = IOU_THRESHOLD
    threshold_op: str = ">"
    union: str = "category"
    exact: bool = True
    sketch_size: int | None = None
    upsample: str = "bilinear"
    batch_size: int = 32
    topk: int = 8
    tokens: bool = False
    autocast: torch.dtype | None = None
    cache_activations: bool | str = "auto"
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 50
    compile: bool | str = "auto"
    num_workers: int | str = "auto"
    progress: bool = True
    backend: str | None = None
    preprocess: object = None
    transform: Mapping = field(default_factory=dict)
    ties: str = "op"
    tie_seed: int = 0

    def __post_init__(self):
        q = self.quantile
        if not (isinstance(q, float) and 0.0 < q < 1.0):
            raise ValueError(f"quantile must be a float in (0, 1), got {q!r}")
        t = self.iou_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise ValueError(f"iou_threshold must be a number in [0, 1], got {t!r}")
        check_threshold_op(self.threshold_op)
        check_union(self.union)
        check_upsample(self.upsample)
        _int(self.batch_size, "batch_size", 1, "a positive int")
        _int(self.topk, "topk", 0, "an int >= 0")
        if self.autocast not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast must be None, torch.float16 or torch.bfloat16, got {self.autocast!r}")
        if self.cache_activations not in ("auto", True, False):
            raise ValueError(f"cache_activations must be 'auto', True or False, got {self.cache_activations!r}")
        _int(self.checkpoint_every, "checkpoint_every", 0, "an int >= 0 (0: only after each pass)")
        d = self.checkpoint_dir
        if d is not None and (not isinstance(d, (str, os.PathLike)) or "\0" in str(d)):
            raise ValueError(f"checkpoint_dir must be a folder path without NUL bytes, got {d!r}")
        check_compile(self.compile)
        if self.num_workers != "auto":
            _int(self.num_workers, "num_workers", 0, "'auto' or an int >= 0")
        if self.preprocess is not None and not callable(self.preprocess):
            raise TypeError(f"preprocess must be callable or None, got {type(self.preprocess).__name__}")
        if not isinstance(self.transform, Mapping):
            raise TypeError(f"transform must be a dict {{layer: callable}} or None, got {type(self.transform).__name__}")
        for layer, fn in self.transform.items():
            if not isinstance(layer, str) or not callable(fn):
                raise TypeError(f"transform must map layer names to callables, got {layer!r}: {type(fn).__name__}")
        object.__setattr__(self, "transform", dict(self.transform))
        if not isinstance(self.ties, str) or self.ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}, got {self.ties!r}")
        if isinstance(self.tie_seed, bool) or not isinstance(self.tie_seed, int) or not 0 <= self.tie_seed < 2 ** 63:
            raise ValueError(f"tie_seed must be an int in [0, 2**63), got {self.tie_seed!r}")

    @property
    def align_corners(self) -> bool:
        return UPSAMPLE[self.upsample]

    @property
    def model_input(self):
        """The preprocess applied to each [0, 1] batch (None: none, _checks.PREPROCESS_NONE)."""
        return self.preprocess if self.preprocess is not None else _unchanged

    def check_layers(self, layers: list) -> None:
        unknown = sorted(set(self.transform) - set(layers))
        if unknown:
            raise ValueError(f"transform names layers {unknown} that are not dissected (layers: {layers})")

    def key(self) -> dict:
        """The settings a checkpoint records (a resumed run must have the same)."""
        from unitscope.dissect.fingerprint import describe_callable

        out = {"quantile": self.quantile, "threshold_op": self.threshold_op, "union": self.union, "exact": self.exact,
               "sketch_size": self.sketch_size, "upsample": self.upsample, "topk": self.topk, "tokens": self.tokens,
               "autocast": str(self.autocast), "compile": self.compile,
               "preprocess": describe_callable(self.preprocess)}
        if self.transform:  # (absent without one: checkpoints of earlier versions keep resuming)
            out["transform"] = {layer: describe_callable(fn) for layer, fn in sorted(self.transform.items())}
        out.update(self._tie_settings())  # (likewise absent under the default rule)
        return out

    def _tie_settings(self) -> dict:
        return {"ties": self.ties, "tie_seed": self.tie_seed} if self.ties != "op" else {}

    def result_settings(self) -> dict:
        """The settings a Dissection shows (LayerDissection.settings adds images, dataset, compiled)."""
        return {"quantile": self.quantile, "threshold_op": self.threshold_op, "union": self.union,
                "exact": self.exact, "upsample": self.upsample, "topk": self.topk,
                "iou_threshold": self.iou_threshold, "ties": self.ties, **self._tie_settings()}
