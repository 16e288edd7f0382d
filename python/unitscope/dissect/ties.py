"""Per unit, how many activations equal its threshold exactly (the tie mass): where it is large the
mask rules '>' and '>=' differ by a plateau of values. Mergeable like the kernels' states, so
unitscope.distributed.all_merge sums it across processes and a checkpoint can hold it."""
from __future__ import annotations

import torch

from unitscope.kernels import _state as S


class ThresholdTies:
    """count (int64[K]): activations (raw, not upsampled) equal to their unit's threshold so far."""

    def __init__(self, thresholds: torch.Tensor):
        if not isinstance(thresholds, torch.Tensor) or thresholds.dim() != 1 or thresholds.numel() < 1:
            raise ValueError(f"thresholds must be a (K,) tensor with K >= 1, got {thresholds!r:.80}")
        self.thresholds = thresholds.float()
        self.count = torch.zeros(thresholds.shape[0], dtype=torch.int64, device=thresholds.device)

    def update(self, acts: torch.Tensor) -> None:
        """acts (B, K, h, w) float32 on the thresholds' device."""
        if acts.dim() != 4 or acts.shape[1] != self.count.shape[0]:
            raise ValueError(f"acts must have shape (B, {self.count.shape[0]}, h, w), got {tuple(acts.shape)}")
        self.count += (acts == self.thresholds[None, :, None, None]).sum(dim=(0, 2, 3))

    def merge(self, other: ThresholdTies) -> ThresholdTies:
        self.count = self.count + other.count.to(self.count.device)
        return self

    def state_dict(self) -> dict:
        return S.with_digest({"count": self.count.cpu()})

    def load_state_dict(self, state: dict) -> None:
        """Replace the count by a state_dict() of a ThresholdTies of the same K (keys, dtype, shape,
        0 <= count <= MAX_COUNT, then the digest checked)."""
        what = "ThresholdTies"
        S.check_keys(state, ("count",), what)
        count = S.tensor(state, "count", what, tuple(self.count.shape), torch.int64, self.count.device)
        S.check_range(count, "count", what, 0, S.MAX_COUNT)
        S.check_digest(state, what)
        self.count = count.to(self.count.device)
