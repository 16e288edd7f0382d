"""Each unit's top-k images by maximum activation, with their activation maps (for the report).

Mergeable like the kernels' states (update / merge / state_dict / load_state_dict), so
unitscope.distributed.all_merge combines it across processes. Ties in the maximum go to the lower
image index, so the result never depends on batch size, order or the number of processes.
NaN positions are ignored (the NaN policy in unitscope.kernels): an image's score is the maximum of
its map's non-NaN values, and a map with no value above -inf (e.g. all NaN) is never kept.
"""
from __future__ import annotations

import torch

from unitscope.kernels import _state as S


class TopKImages:
    """values (K, k) float32 (-inf = empty slot), index (K, k) int64 (-1 = empty), maps (K, k, h, w);
    also each unit's overall minimum and maximum (K,) of its non-NaN values (a unit with minimum ==
    maximum is dead; inf and -inf when it has none)."""

    def __init__(self, num_units: int, k: int, map_size: tuple[int, int], device=None):
        if k < 0:
            raise ValueError(f"topk must be >= 0, got {k}")
        if num_units < 1 or min(map_size) < 1:
            raise ValueError(f"num_units and map_size must be positive, got {num_units} and {tuple(map_size)}")
        self.k = k
        h, w = map_size
        self.num_units, self.map_size = num_units, (h, w)
        self.values = torch.full((num_units, k), float("-inf"), device=device)
        self.index = torch.full((num_units, k), -1, dtype=torch.int64, device=device)
        self.maps = torch.zeros((num_units, k, h, w), device=device)
        self.minimum = torch.full((num_units,), float("inf"), device=device)
        self.maximum = torch.full((num_units,), float("-inf"), device=device)

    def _select(self, values, index, maps_of):
        """Keep the k best of candidates values/index (K, n); maps_of(pos) gives (K, k, h, w) maps."""
        pos = self._order(values, index)[:, : self.k]
        self.values, self.index, self.maps = values.gather(1, pos), index.gather(1, pos), maps_of(pos)

    @staticmethod
    def _order(values, index):
        """(K, n) positions sorted by value descending, ties by lower image index."""
        order = torch.argsort(index, dim=1, stable=True)
        return order.gather(1, torch.argsort(-values.gather(1, order), dim=1, stable=True))

    def update(self, acts: torch.Tensor, image_index: torch.Tensor) -> None:
        """acts (B, K, h, w) float; image_index (B,) int64 dataset indices of the batch."""
        B, K, h, w = acts.shape
        if (K, h, w) != (self.num_units, *self.map_size):
            raise ValueError(f"acts must have shape (B, K, h, w) = (B, {self.num_units}, {self.map_size[0]}, "
                             f"{self.map_size[1]}), got {tuple(acts.shape)}")
        if image_index.dtype != torch.int64 or tuple(image_index.shape) != (B,) or bool((image_index < 0).any()):
            raise ValueError(f"image_index must be a (B,) = ({B},) int64 tensor of indices >= 0, got "
                             f"{image_index.dtype} of shape {tuple(image_index.shape)}")
        flat = acts.detach().reshape(B, K, h * w).float()
        nan = torch.isnan(flat)                                                # NaN positions are ignored
        peak = torch.where(nan, float("-inf"), flat).amax(dim=2).T.contiguous()  # (K, B); all NaN: -inf
        low = torch.where(nan, float("inf"), flat).amin(dim=2).T
        self.maximum = torch.maximum(self.maximum, peak.max(dim=1).values)
        self.minimum = torch.minimum(self.minimum, low.min(dim=1).values)
        if self.k == 0:
            return
        idx = image_index.to(self.index.device).expand(K, B)
        # the batch's own k best first (only they can enter the top k), then merge with the kept ones
        kk = min(self.k, B)
        pos = self._order(peak, idx)[:, :kk]                                   # (K, kk) batch positions
        units = acts.detach().float().transpose(0, 1)                          # (K, B, h, w)
        new_maps = units.gather(1, pos[..., None, None].expand(-1, -1, h, w))
        maps = torch.cat([self.maps, new_maps], 1)
        values = torch.cat([self.values, peak.gather(1, pos)], 1)
        index = torch.cat([self.index, idx.gather(1, pos)], 1)
        self._select(values, index, lambda p: maps.gather(1, p[..., None, None].expand(-1, -1, h, w)))

    def merge(self, other: TopKImages) -> TopKImages:
        self.maximum = torch.maximum(self.maximum, other.maximum.to(self.maximum.device))
        self.minimum = torch.minimum(self.minimum, other.minimum.to(self.minimum.device))
        if self.k == 0:
            return self
        h, w = self.maps.shape[2:]
        maps = torch.cat([self.maps, other.maps.to(self.maps.device)], 1)
        self._select(torch.cat([self.values, other.values.to(self.values.device)], 1),
                     torch.cat([self.index, other.index.to(self.index.device)], 1),
                     lambda pos: maps.gather(1, pos[..., None, None].expand(-1, -1, h, w)))
        return self

    def state_dict(self) -> dict:
        """{values, index, maps, minimum, maximum: CPU tensors, digest (kernels/_state.py)}."""
        return S.with_digest({"values": self.values.cpu(), "index": self.index.cpu(), "maps": self.maps.cpu(),
                              "minimum": self.minimum.cpu(), "maximum": self.maximum.cpu()})

    def load_state_dict(self, state: dict) -> None:
        """Replace the state by a state_dict() of a TopKImages of the same (num_units, k, map_size).
        Every field is checked (ValueError/TypeError naming it) before any is used: keys, dtypes,
        shapes, devices, index >= -1 and distinct per unit, -1 exactly where the value is -inf, no
        NaN value, slots in order (value descending, lower index first), each kept value the maximum
        of its map's non-NaN values, empty slots' maps 0, minimum/maximum bracketing the kept maps,
        then the digest."""
        what = "TopKImages"
        S.check_keys(state, ("values", "index", "maps", "minimum", "maximum"), what)
        K, k, (h, w), dev = self.num_units, self.k, self.map_size, self.values.device
        f32 = torch.float32
        values = S.tensor(state, "values", what, (K, k), f32, dev)
        index = S.tensor(state, "index", what, (K, k), torch.int64, dev)
        maps = S.tensor(state, "maps", what, (K, k, h, w), f32, dev)
        low = S.tensor(state, "minimum", what, (K,), f32, dev)
        high = S.tensor(state, "maximum", what, (K,), f32, dev)
        S.check_range(index, "index", what, -1, None)
        empty = index == -1
        checks = [("values", torch.isnan(values), "is NaN"),
                  ("values", empty != (values == float("-inf")), "must be -inf exactly where index is -1")]
        if k > 1:  # slot j + 1 must come after slot j: lower value, or the same value and a higher index
            v0, v1, i0, i1 = values[:, :-1], values[:, 1:], index[:, :-1], index[:, 1:]
            order = (v0 > v1) | ((v0 == v1) & (i0 < i1)) | empty[:, 1:]
            checks.append(("index", torch.nn.functional.pad(~order, (1, 0)),
                           "is out of order (value descending, then lower image index first)"))
            srt = torch.sort(torch.where(empty, -1 - torch.arange(k)[None, :], index), dim=1).values
            checks.append(("index", srt[:, 1:] == srt[:, :-1], "repeats an image"))
        if k:
            nan = torch.isnan(maps)
            peak = torch.where(nan, float("-inf"), maps).amax(dim=(2, 3))
            lows = torch.where(nan | empty[..., None, None], float("inf"), maps).flatten(1).amin(1)
            checks += [("maps", ~empty & (peak != values), "must have its slot's value as its maximum"),
                       ("maps", empty & (maps != 0).flatten(2).any(2), "of an empty slot must be 0"),
                       ("minimum", low > lows, "is above a kept map's minimum"),
                       ("maximum", high < values.amax(1), "is below a kept value")]
        checks += [("minimum", torch.isnan(low), "is NaN"), ("maximum", torch.isnan(high), "is NaN"),
                   ("minimum", (low > high) & ~((low == float("inf")) & (high == float("-inf"))), "is above maximum")]
        for key, bad, message in checks:
            pos = S.first_bad(bad)
            if pos is not None:
                S.fail(what, key, message, pos)
        S.check_digest(state, what)
        self.values, self.index, self.maps = values.to(dev), index.to(dev), maps.to(dev)
        self.minimum, self.maximum = low.to(dev), high.to(dev)
