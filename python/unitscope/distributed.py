"""Merge streaming states across torch.distributed ranks (gloo or nccl).

``all_merge(obj)`` works for any object with ``state_dict()``, ``load_state_dict(state)`` and
``merge(other)`` (ExactQuantile, QuantileSketch, tallies): every rank ends with the bitwise same
state, equal to what one process merging the ranks' states in rank order would hold.
"""
from __future__ import annotations

import copy

import torch


def _to_cpu(state):
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state


def all_merge(obj, group=None):
    """Replace obj's state, on every rank, by the merge of all ranks' states (rank 0 first).

    Args:
        obj: any object with state_dict(), load_state_dict(state) and merge(other); every rank must
            pass an object of the same configuration.
        group: a torch.distributed process group (default: the world).

    Returns obj. Without an initialized process group (or with one rank) obj is returned unchanged.
    The states travel as pickled CPU tensors through all_gather_object, which works on gloo and on
    nccl (there it uses the current CUDA device, as torch.distributed requires).
    """
    for name in ("state_dict", "load_state_dict", "merge"):
        if not callable(getattr(obj, name, None)):
            raise TypeError(f"all_merge needs an object with state_dict(), load_state_dict() and merge(); "
                            f"{type(obj).__name__} has no {name}()")
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    world = dist.get_world_size(group)
    if world == 1:
        return obj
    states = [None] * world
    dist.all_gather_object(states, _to_cpu(obj.state_dict()), group=group)
    merged = copy.deepcopy(obj)
    merged.load_state_dict(states[0])
    for state in states[1:]:
        part = copy.deepcopy(obj)
        part.load_state_dict(state)
        merged.merge(part)
    obj.load_state_dict(merged.state_dict())
    return obj
