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


# ---- ties="random": a seeded share of the tied cells joins the mask ----------------------------------
TIES = ("op", "random")
_M1, _M2 = 0xBF58476D1CE4E5B9 - 2 ** 64, 0x94D049BB133111EB - 2 ** 64  # splitmix64's multipliers (int64)
_GOLDEN = 0x9E3779B97F4A7C15 - 2 ** 64


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 (multiplications wrap modulo 2^64)."""
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def cell_uniform(seed: int, image: torch.Tensor, unit: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1) for each (image, unit, cell) (int64 tensors of one shape): a counter-based
    hash of (seed, dataset image index, unit, flat cell index h * w) with 53 bits, so the draw of a
    cell never depends on the batch, the rank, the device or what was drawn before."""
    z = _mix(torch.full_like(image, seed))
    for part in (image, unit, cell):
        z = _mix(z ^ part)
    return _shr(z, 11).double() / float(2 ** 53)


class TieCounts:
    """Per unit, over this rank's images: valid (non-NaN) raw activations, those above the threshold
    and those equal to it. shares(): the share of tied cells that ties="random" includes."""

    def __init__(self, thresholds: torch.Tensor):
        self.thresholds = thresholds.float()
        K = thresholds.shape[0]
        self.counts = torch.zeros(3, K, dtype=torch.int64, device=thresholds.device)  # valid, above, tied

    def update(self, acts: torch.Tensor) -> None:
        t = self.thresholds[None, :, None, None]
        for row, hit in enumerate((~acts.isnan(), acts > t, acts == t)):
            self.counts[row] += hit.sum(dim=(0, 2, 3))

    def shares(self, quantile: float) -> torch.Tensor:
        """float64[K] in [0, 1]: ((1 - quantile) x valid - above) / tied, the share of the tied cells
        that brings the unit's activated raw cells to the quantile's mass (0 where none are tied)."""
        valid, above, tied = self.counts.cpu().double()
        need = (1.0 - quantile) * valid - above
        share = torch.where(tied > 0, need / tied.clamp(min=1), torch.zeros_like(need))
        return share.clamp(0.0, 1.0)


def include_ties(acts: torch.Tensor, thresholds: torch.Tensor, shares: torch.Tensor, image_index: torch.Tensor,
                 seed: int, op: str) -> torch.Tensor:
    """acts (B, K, h, w) with each cell equal to its unit's (finite) threshold drawn in with
    probability shares[k] (cell_uniform < share): under '>' the drawn cells are raised to the next
    float32 above the threshold; under '>=' the others are lowered to the next float32 below it. So
    both rules give the same mask, and a unit whose share is 0 ('>') or 1 ('>=') or that has no
    tied cell is left bit for bit as it was. image_index (B,): the images' dataset indices."""
    t = thresholds.float().to(acts.device)[None, :, None, None]
    share = shares.to(acts.device)
    moving = (share > 0) if op == ">" else (share < 1)
    tied = (acts == t) & torch.isfinite(t) & moving[None, :, None, None]
    pos = tied.nonzero(as_tuple=True)
    if pos[0].numel() == 0:
        return acts
    B, K, h, w = acts.shape
    draw = cell_uniform(seed, image_index.to(acts.device)[pos[0]], pos[1], pos[2] * w + pos[3]) < share[pos[1]]
    out = acts.clone()
    thr = t.expand_as(acts)[pos]
    if op == ">":
        out[pos] = torch.where(draw, torch.nextafter(thr, torch.full_like(thr, float("inf"))), thr)
    else:
        out[pos] = torch.where(draw, thr, torch.nextafter(thr, torch.full_like(thr, float("-inf"))))
    return out
