"""Resuming a dissection: this rank's checkpoint loaded and validated (checkpoint.py checks its
envelope; here the kernel states are rebuilt, which check their own fields, and the counts are
checked against each other), then every rank agrees where to go on before any collective."""
from __future__ import annotations

import warnings

import torch

from unitscope.dissect.checkpoint import CheckpointError, load_checkpoint
from unitscope.dissect.fingerprint import model_fingerprint, probe_stats
from unitscope.dissect.ranks import gather
from unitscope.dissect.state import Stage
from unitscope.dissect.topk import TopKImages


def envelope(passes, key: dict, probe_acts: dict) -> dict:
    """The key (settings, files, model weights and code) and probe statistics every checkpoint carries."""
    fp = model_fingerprint(passes.feed.model)  # after a forward: lazy modules are initialized by now
    key = dict(key, model=fp["weights"], model_code=fp["code"],
               probe_tolerance=1e-3 if passes.config.autocast is None else 3e-2)
    return {"key": key, "probe": probe_stats(probe_acts)}


def resume(passes, ckpt, env: dict, rank: int, world: int):
    """The DissectState to go on from (None: start afresh), its running states rebuilt in `passes`."""
    feed = passes.feed
    lo, hi = feed.shard
    state, error = None, None
    try:
        state = load_checkpoint(ckpt, env["key"], env["probe"], feed.shapes, env["key"]["probe_tolerance"], hi - lo)
        if state is not None:
            _restore(passes, state, ckpt)
    except CheckpointError as e:
        error = e
    if world > 1:
        state = _agree(passes, state, error, rank, world)
    elif error is not None:
        raise error
    if state is None:
        passes.states = {name: {} for name in passes.states}
    return state


def _restore(passes, state, ckpt) -> None:
    """Build the running states from a validated checkpoint and check the counts against `done`:
    values and images counted, top-k indices in range, ties within the activations counted."""
    lo, _ = passes.feed.shard
    N, done, shapes, s = len(passes.ds), state.done, state.shapes, passes.states
    try:
        if state.stage is Stage.THRESHOLD:
            passes.make_threshold_states(shapes)
            for layer in passes.layers:
                K, h, w = shapes[layer]
                q = s["quantile"][layer]
                q.load_state_dict(state.layers[layer].quantile)
                seen = q.count.cpu()  # with or without NaN, by kernel: accept either
                if bool((seen != done * h * w).any()) and bool((seen + q.nan_count.cpu() != done * h * w).any()):
                    raise CheckpointError(f"layer {layer!r}: the quantile state counted {seen.tolist()[:4]}... "
                                          f"values per unit, expected done * h * w = {done * h * w}")
                s["topk"][layer].load_state_dict(state.layers[layer].topk)
                _check_topk(s["topk"][layer], layer, lo, lo + done)
            return
        for layer in passes.layers:
            K, h, w = shapes[layer]
            topk = TopKImages(K, passes.config.topk, (h, w), device=passes.device)
            topk.load_state_dict(state.layers[layer].topk)
            _check_topk(topk, layer, 0, N)
            state.layers[layer].topk = topk.state_dict()
        random = passes.config.ties == "random"
        for layer in passes.layers:
            share = state.layers[layer].tie_share
            if (share is not None) != random and (share is not None or done or state.stage is Stage.DONE):
                raise CheckpointError(f"layer {layer!r}: " + ("tie shares saved without ties='random'" if share is not None
                                                              else "ties='random' but no tie shares were saved"))
        with_tally = [layer for layer in passes.layers if state.layers[layer].tally is not None]
        if with_tally and len(with_tally) != len(passes.layers):
            raise CheckpointError(f"only layers {with_tally} have a tally")
        if not with_tally and done != 0:
            raise CheckpointError(f"done is {done} but no tally was saved")
        if not with_tally and any(state.layers[layer].ties is not None for layer in passes.layers):
            raise CheckpointError("threshold ties were saved without a tally")
        if not with_tally:
            return
        passes.make_tally_states(state)
        images = N if state.stage is Stage.DONE else done
        for layer in passes.layers:
            K, h, w = shapes[layer]
            entry, tally = state.layers[layer], s["tally"][layer]
            tally.load_state_dict(entry.tally)
            if tally.images != images:
                raise CheckpointError(f"layer {layer!r}: the tally counted {tally.images} images, expected {images}")
            if entry.ties is None:  # a version-3 checkpoint: the ties of the images counted so far are unknown
                s["ties"][layer] = None
                continue
            s["ties"][layer].load_state_dict(entry.ties)
            if bool((s["ties"][layer].count > images * h * w).any()):
                raise CheckpointError(f"layer {layer!r}: the threshold ties exceed the {images * h * w} "
                                      "activations counted")
    except Exception as e:  # the kernels' own checks (ValueError/TypeError) and anything else
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"checkpoint {ckpt} is invalid: {first}; delete it to start over") from e


def _check_topk(t: TopKImages, layer: str, start: int, stop: int) -> None:
    index = t.index.cpu()
    if index.dtype != torch.int64:
        raise CheckpointError(f"layer {layer!r}: top-k index must be int64, got {index.dtype}")
    kept = index >= 0
    if bool(((index < -1) | (kept & ((index < start) | (index >= stop)))).any()):
        raise CheckpointError(f"layer {layer!r}: top-k image indices must be -1 or in [{start}, {stop})")
    want = min(t.k, stop - start)
    if bool((kept.sum(1) != want).any()):
        raise CheckpointError(f"layer {layer!r}: every unit must keep {want} top-k images")
    s = torch.where(kept, index, -1 - torch.arange(index.shape[1]).expand_as(index)).sort(1).values
    if index.shape[1] > 1 and bool((s[:, 1:] == s[:, :-1]).any()):
        raise CheckpointError(f"layer {layer!r}: a unit keeps an image twice in its top-k")


def _agree(passes, state, error, rank, world):
    """Every rank learns every rank's checkpoint status before any collective: a refused checkpoint
    stops all ranks; in the first pass each rank goes on from where it is (its shard is its own
    until the merge); at differing stages the ranks ahead fall back (a finished rank redoes its
    share of the second pass) or, when some rank has not finished the first pass, all restart."""
    infos = gather((state.stage.value if state else "none", None if error is None else str(error)), world)
    refused = [(r, e) for r, (_, e) in enumerate(infos) if e is not None]
    if refused:
        if error is not None:
            raise error
        r, e = refused[0]
        raise CheckpointError(f"rank {r} refused its checkpoint, so every rank stops: {e}")
    stages = [s for s, _ in infos]
    if len({"threshold" if s == "none" else s for s in stages}) == 1:
        return state  # the same stage (no checkpoint = pass 1 from its start): each rank goes on
    lowest = min(stages, key=lambda s: -1 if s == "none" else Stage(s).order)
    said = ", ".join(f"rank {r}: {s}" for r, s in enumerate(stages))
    if lowest == "tally":
        if rank == 0:
            warnings.warn(f"dissect: the ranks' checkpoints are at different stages ({said}); ranks that "
                          "had finished redo their share of the second pass", stacklevel=4)
        if state.stage is Stage.DONE:
            state.restart_tally()
            passes.states["tally"], passes.states["ties"] = {}, {}
        return state
    if rank == 0:
        warnings.warn(f"dissect: the ranks' checkpoints are at different stages ({said}); every rank "
                      "restarts from the first pass", stacklevel=4)
    return None
