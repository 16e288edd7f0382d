"""Each unit's top-k images by maximum activation, with their activation maps (for the report).

Mergeable like the kernels' states (update / merge / state_dict / load_state_dict), so
unitscope.distributed.all_merge combines it across processes. Ties in the maximum go to the lower
image index, so the result never depends on batch size, order or the number of processes.
"""
from __future__ import annotations

import torch


class TopKImages:
    """values (K, k) float32 (-inf = empty slot), index (K, k) int64 (-1 = empty), maps (K, k, h, w);
    also each unit's overall minimum and maximum (K,) (a unit with minimum == maximum is dead)."""

    def __init__(self, num_units: int, k: int, map_size: tuple[int, int], device=None):
        if k < 0:
            raise ValueError(f"topk must be >= 0, got {k}")
        self.k = k
        h, w = map_size
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
        flat = acts.detach().reshape(B, K, h * w)
        low, peak = torch.aminmax(flat, dim=2)                                 # (B, K) each
        peak = torch.nan_to_num(peak.float(), nan=float("-inf")).T.contiguous()  # (K, B)
        low = torch.nan_to_num(low.float(), nan=float("inf")).T
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

    def merge(self, other: "TopKImages") -> "TopKImages":
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
        return {"values": self.values.cpu(), "index": self.index.cpu(), "maps": self.maps.cpu(),
                "minimum": self.minimum.cpu(), "maximum": self.maximum.cpu()}

    def load_state_dict(self, state: dict) -> None:
        dev = self.values.device
        self.values, self.index, self.maps = (state["values"].to(dev), state["index"].to(dev), state["maps"].to(dev))
        self.minimum, self.maximum = state["minimum"].to(dev), state["maximum"].to(dev)
