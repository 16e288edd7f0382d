"""DissectState: where a dissection is (stage, images done) and what it holds per layer; the only
place its layout is written, for checkpoints (to_dict/from_dict) and the passes alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch


class Stage(str, Enum):
    """THRESHOLD: pass 1 (quantiles, top-k) under way; TALLY: thresholds known, pass 2 under way;
    DONE: every count merged. The values are what a checkpoint stores."""
    THRESHOLD = "threshold"
    TALLY = "tally"
    DONE = "done"

    @property
    def order(self) -> int:
        return list(Stage).index(self)


# what each layer entry holds at each stage: (always, optional). A mid-pass tally checkpoint adds
# "tally" and "ties"; "ties" is absent from version 2 and 3 files and from the later saves of a run
# resumed from one (its ties are then unknown). "tie_share" (version 5, ties="random" only): each unit's
# share of tied cells drawn into the mask, counted before the tally.
LAYER_FIELDS = {Stage.THRESHOLD: ({"quantile", "topk"}, set()),
                Stage.TALLY: ({"thresholds", "topk"}, {"tally", "ties", "tie_share"}),
                Stage.DONE: ({"thresholds", "topk", "tally"}, {"ties", "tie_share"})}
FIELDS = ("stage", "done", "shapes", "layers", "compiled", "channels_last")


@dataclass
class LayerState:
    """One layer's running states, as state_dict()s (thresholds: float32[K], +inf for a unit with no
    finite activation)."""
    quantile: dict | None = None     # ExactQuantile / QuantileSketch, pass 1
    topk: dict | None = None         # TopKImages, pass 1 (merged from pass 2 on)
    thresholds: torch.Tensor | None = None
    tally: dict | None = None        # IoUTally, pass 2
    ties: dict | None = None         # ThresholdTies, pass 2
    tie_share: torch.Tensor | None = None  # float64[K] in [0, 1], ties="random" (TieCounts.shares)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class DissectState:
    """stage; done: images of this rank's shard counted in the current pass; shapes {layer: (K, h,
    w)}; layers {layer: LayerState}; compiled, channels_last: the forward variant every counted batch
    went through (channels_last None: not decided yet, or a version-2 checkpoint)."""
    stage: Stage = Stage.THRESHOLD
    done: int = 0
    shapes: dict | None = None
    layers: dict = field(default_factory=dict)
    compiled: bool = False
    channels_last: bool | None = None

    @property
    def variant_decided(self) -> bool:
        """Has a batch been counted (so the forward variant is the one recorded)?"""
        return self.stage is not Stage.THRESHOLD or self.done > 0

    @property
    def variant(self) -> tuple[bool, bool]:
        return bool(self.compiled), self.channels_last is True

    def layer(self, name: str) -> LayerState:
        return self.layers.setdefault(name, LayerState())

    def restart_tally(self) -> None:
        """Back to the start of pass 2 (the thresholds, top-k and tie shares kept, the counts dropped)."""
        self.stage, self.done = Stage.TALLY, 0
        for entry in self.layers.values():
            entry.tally = entry.ties = None

    def to_dict(self) -> dict:
        """The checkpoint's content, less its envelope (format, version, digest, key, probe)."""
        return {"stage": self.stage.value, "done": self.done, "shapes": self.shapes,
                "layers": {name: entry.to_dict() for name, entry in self.layers.items()},
                "compiled": self.compiled, "channels_last": self.channels_last}

    @classmethod
    def from_dict(cls, d: dict) -> DissectState:
        """From to_dict()'s layout, already validated (checkpoint.load_checkpoint)."""
        return cls(stage=Stage(d["stage"]), done=d["done"], shapes={k: tuple(v) for k, v in d["shapes"].items()},
                   layers={name: LayerState(**entry) for name, entry in d["layers"].items()},
                   compiled=d["compiled"], channels_last=d.get("channels_last"))
