"""The few torch.distributed steps a dissection takes, each a no-op in one process: this rank and the
world size, gathering and broadcasting a plain value, merging a state across ranks."""
from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather(value, world: int) -> list:
    """[every rank's value] (all_gather_object); [value] in one process."""
    if world == 1:
        return [value]
    out = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def broadcast(value, world: int):
    """Rank 0's value, on every rank."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def merge_all(obj, world: int):
    """obj merged with every rank's (unitscope.distributed.all_merge); obj itself in one process."""
    if world == 1:
        return obj
    from unitscope.distributed import all_merge
    merged = all_merge(obj)
    return obj if merged is None else merged
