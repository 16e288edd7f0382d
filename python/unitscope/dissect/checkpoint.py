"""Dissection checkpoint files: a DissectState with an envelope (a key naming everything the result
depends on, fingerprint.py; the probe statistics; format, version and a content digest), atomic
writes, and a loader that validates every field before use and refuses, with a CheckpointError
saying why, anything else."""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

import torch

from unitscope.dissect.fingerprint import probe_differs
from unitscope.dissect.state import FIELDS, LAYER_FIELDS, DissectState, Stage

FORMAT = "unitscope.dissect checkpoint"
VERSION = 5  # 3 added channels_last (version 2 files are read with channels_last = None); 4 added the
#             layers' "ties" beside "tally" and records the forward variant before the first batch;
#             5 added the layers' optional "tie_share" (ties="random")
READS = (2, 3, 4, 5)
STAGES = tuple(s.value for s in Stage)
_FIELDS = {"format", "version", "digest", "key", "probe", *FIELDS}
_FIELDS_V2 = _FIELDS - {"channels_last"}


class CheckpointError(ValueError):
    """A dissection checkpoint is unreadable, malformed, tampered with, or belongs to another run."""


# ---- files -------------------------------------------------------------------------------------
def checkpoint_path(directory, rank: int, world: int) -> Path:
    return Path(directory) / (f"dissect-rank{rank}of{world}.pt" if world > 1 else "dissect.pt")


def prepare_checkpoint_dir(path: Path) -> None:
    """Before any work: the checkpoint's folder exists (created) and is a writable folder; temporary
    files left by a killed save of this checkpoint (their process gone) are removed."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"checkpoint_dir {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"checkpoint_dir {str(folder)!r} cannot be created: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"checkpoint_dir {str(folder)!r} is not writable")
    for tmp in folder.glob(path.name + ".tmp*"):
        # <name>.tmp<pid>-<random> (a writer that may still run in this process) or <name>.tmp<pid> (older)
        pid, _, rest = tmp.name[len(path.name) + 4:].partition("-")
        if pid.isdigit() and ((int(pid) == os.getpid() and not rest) or not _alive(int(pid))):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def content_digest(obj, depth: int = 0) -> str:
    """sha256 over a canonical walk of a checkpoint's content (dict keys sorted; tensors by dtype,
    shape and bytes). Stored in the checkpoint, it catches a corrupted or hand-edited file before any
    field is used; it is no defence against a forger, which is why every field is validated too."""
    h = hashlib.sha256()
    _walk(obj, h, depth)
    return h.hexdigest()


def _walk(v, h, depth):
    if depth > 16:
        raise CheckpointError("nested more than 16 levels deep")
    if isinstance(v, torch.Tensor):
        if v.layout != torch.strided or v.is_quantized:
            raise CheckpointError(f"holds a {v.layout} tensor")
        t = v.detach().to("cpu").reshape(-1).contiguous()
        h.update(f"T{t.dtype}{tuple(v.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(v, dict):
        h.update(f"D{len(v)}:".encode())
        for k in sorted(v, key=lambda k: (type(k).__name__, repr(k))):
            _walk(k, h, depth + 1)
            _walk(v[k], h, depth + 1)
    elif isinstance(v, (list, tuple)):
        h.update(f"{type(v).__name__[0]}{len(v)}:".encode())
        for x in v:
            _walk(x, h, depth + 1)
    else:
        h.update(f"{type(v).__name__}:{v!r};".encode("utf-8", "surrogatepass"))


def save_checkpoint(path: Path, state: dict | DissectState, envelope: dict | None = None) -> None:
    """torch.save to a temporary file of its own in the same folder (<name>.tmp<pid>-<random>:
    unique per writer), fsync, then os.replace (atomic); the temporary file is removed if anything
    fails, and a full disk is said in one line (OSError ENOSPC; the previous checkpoint is kept).
    Adds the envelope's fields (key, probe), format, version and the content digest."""
    path = Path(path)
    state = dict(state.to_dict() if isinstance(state, DissectState) else state, **(envelope or {}))
    state.update(format=FORMAT, version=VERSION)
    state["digest"] = content_digest(state)
    fd, name = tempfile.mkstemp(prefix=f"{path.name}.tmp{os.getpid()}-", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        full = _disk_full(e)
        if full is None:
            raise
        raise OSError(full, f"no space left on the device of {path.parent}: the checkpoint was not saved (the "
                            "previous one is kept); free some space and rerun to resume") from None
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(e: BaseException | None):
    """ENOSPC or EDQUOT where e, or the error it was raised from or during (torch.save wraps a failed
    write in a RuntimeError), says the disk or quota is full; else None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e.errno
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


# ---- loading and validation --------------------------------------------------------------------
def load_checkpoint(path: Path, key: dict, probe: dict, shapes: dict, tolerance: float,
                    shard_images: int) -> DissectState | None:
    """The saved state when `path` exists, was written under `key`, and every field of its envelope
    is well formed; None when absent. Checks: format and version; the content digest; key equal field by field (the
    differing fields are named); the probe statistics within `tolerance`; stage; done in
    [0, shard_images]; shapes equal `shapes` ({layer: (K, h, w)}, the probe's); per layer exactly the entries of its stage;
    thresholds float32 (K,) without NaN. The kernel states inside are checked by their own
    load_state_dict (and the cross-field counts by dissect). Raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; delete it to start over")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a broken or foreign file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path} is unreadable ({first}); delete it to start over") from e

    def bad(what):
        return CheckpointError(f"checkpoint {path} is invalid: {what}; delete it to start over")

    if not isinstance(state, dict) or type(state.get("format")) is not str or state["format"] != FORMAT:
        raise bad("not a unitscope dissection checkpoint")
    if type(state.get("version")) is not int or state["version"] not in READS:
        raise bad(f"written in format version {_short(state.get('version'))}, this unitscope reads "
                  f"{', '.join(map(str, READS[:-1]))} and {READS[-1]}")
    fields = _FIELDS_V2 if state["version"] == 2 else _FIELDS
    if set(state) != fields:
        raise bad(f"fields {sorted(map(str, state))}, expected {sorted(fields)}")
    try:
        digest = content_digest({k: v for k, v in state.items() if k != "digest"})
    except CheckpointError as e:
        raise bad(str(e)) from None
    if not isinstance(state["digest"], str) or state["digest"] != digest:
        raise bad("its content does not match its digest (the file is corrupted or was edited)")
    saved = state["key"]
    if not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved) or not _plain(saved):
        raise bad("its key is not a dict of plain values")
    diff = [k for k in sorted(set(saved) | set(key)) if saved.get(k) != key.get(k)]
    if diff:
        lines = "; ".join(f"{k}: checkpoint has {_short(saved.get(k))}, this run has {_short(key.get(k))}" for k in diff)
        raise CheckpointError(f"checkpoint {path} belongs to another dissection ({lines}). "
                              f"Use another checkpoint_dir or delete the file to start over.")
    sp = state["probe"]
    if not isinstance(sp, dict) or set(sp) != set(probe):
        raise bad(f"probe must hold the layers {sorted(probe)}")
    for layer, now in probe.items():
        t = sp[layer]
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float64 or tuple(t.shape) != tuple(now.shape):
            raise bad(f"probe[{layer!r}] must be a float64 tensor of shape {tuple(now.shape)}, got {_kind(t)}")
    differs = probe_differs(sp, probe, tolerance)
    if differs:
        raise CheckpointError(
            f"checkpoint {path} belongs to another dissection: the model's outputs at {differs} on the probe "
            f"images differ from the checkpoint's by more than {tolerance} of their scale (other code, "
            "preprocess or data). Use another checkpoint_dir or delete the file to start over.")
    stage, done = state["stage"], state["done"]
    if type(stage) is not str or stage not in STAGES:
        raise bad(f"stage must be one of {STAGES}, got {_short(stage)}")
    if type(done) is not int or not 0 <= done <= shard_images:
        raise bad(f"done must be an int in [0, {shard_images}], got {_short(done)}")
    if type(state["compiled"]) is not bool:
        raise bad(f"compiled must be a bool (was the model compiled), got {_short(state['compiled'])}")
    channels_last = state.get("channels_last")  # (absent from version 2)
    if channels_last is not None and type(channels_last) is not bool:
        raise bad(f"channels_last must be a bool or None (the input format 'auto' kept), got {_short(channels_last)}")
    want = {layer: tuple(shape) for layer, shape in shapes.items()}
    got = state["shapes"]
    if not isinstance(got, dict) or set(got) != set(want) or \
            any(not isinstance(got[l], (tuple, list)) or any(type(x) is not int for x in got[l])
                or tuple(got[l]) != want[l] for l in want):
        raise bad(f"shapes must be {want}, got {_short(got)}")
    layers = state["layers"]
    if not isinstance(layers, dict) or set(layers) != set(want):
        raise bad(f"layers must hold the entries of {sorted(want)}")
    need, optional = LAYER_FIELDS[Stage(stage)]
    for layer, entry in layers.items():
        if not isinstance(entry, dict) or not need <= set(entry) <= need | optional:
            raise bad(f"layers[{layer!r}] must hold {sorted(need)}" + (f" and optionally {sorted(optional)}" if optional
                                                                        else "") + f" at stage {stage!r}")
        if "thresholds" in entry:
            t, K = entry["thresholds"], want[layer][0]
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (K,):
                raise bad(f"layers[{layer!r}]['thresholds'] must be float32 of shape ({K},), got {_kind(t)}")
            if bool(t.isnan().any()):
                raise bad(f"layers[{layer!r}]['thresholds'] holds NaN")
        if "tie_share" in entry:
            t, K = entry["tie_share"], want[layer][0]
            if state["version"] < 5 or not isinstance(t, torch.Tensor) or t.dtype != torch.float64 or \
                    tuple(t.shape) != (K,) or not bool(((t >= 0) & (t <= 1)).all()):
                raise bad(f"layers[{layer!r}]['tie_share'] must be float64 of shape ({K},) in [0, 1], got {_kind(t)}")
    return DissectState.from_dict(dict(state, channels_last=channels_last))


def _plain(v, depth: int = 0) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if depth < 8 and isinstance(v, (list, tuple)):
        return all(_plain(x, depth + 1) for x in v)
    if depth < 8 and isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x, depth + 1) for k, x in v.items())
    return False


def _kind(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"{v.dtype} {tuple(v.shape)}"
    return type(v).__name__


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
