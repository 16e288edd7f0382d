"""Dissection checkpoints: a key naming everything the result depends on, atomic writes, and a
refusal that says which parts of the key differ when a checkpoint belongs to another run."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the class, every state_dict entry's name/shape/dtype, and a strided sample of up
    to 4096 values per tensor plus its float64 sum (cheap; changes when any weight changes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to("cpu", torch.float64) if flat.is_floating_point() else flat[::step].to("cpu", torch.int64)
        h.update(sample.numpy().tobytes())
        if flat.is_floating_point():
            h.update(repr(float(flat.double().sum())).encode())
    return h.hexdigest()


def checkpoint_path(directory, rank: int, world: int) -> Path:
    return Path(directory) / (f"dissect-rank{rank}of{world}.pt" if world > 1 else "dissect.pt")


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, key: dict) -> dict | None:
    """The saved state when `path` exists and was written under `key`; None when absent.
    A checkpoint with another key raises ValueError naming each differing field."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"checkpoint {path} is unreadable ({first}); delete it to start over") from e
    saved = state.get("key", {}) if isinstance(state, dict) else {}
    diff = [k for k in sorted(set(saved) | set(key)) if saved.get(k) != key.get(k)]
    if diff:
        lines = "; ".join(f"{k}: checkpoint has {_short(saved.get(k))}, this run has {_short(key.get(k))}" for k in diff)
        raise ValueError(f"checkpoint {path} belongs to another dissection ({lines}). "
                         f"Use another checkpoint_dir or delete the file to start over.")
    return state


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
