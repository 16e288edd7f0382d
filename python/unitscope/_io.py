"""Atomic file writes: each target is written under a unique temporary name in its own folder, then
os.replace'd onto it, so a reader sees the old file or the new one, never a part, and two writers
sharing a folder (two runs with one --out) never write into the same temporary file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)  # mkstemp creates files 0600: the targets get the usual 0666 & ~umask
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yield a list of unique temporary paths, one per target, each in its target's folder and ending
    with the target's suffix (so that PIL and NumPy pick the format from the name). When the block
    ends without an exception, each temporary replaces its target, in the order given; otherwise the
    temporaries are removed and the targets are untouched."""
    temps, done = [], 0
    try:
        for p in paths:
            p = Path(p)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + p.suffix, dir=p.parent)
            os.close(fd)
            temps.append(Path(tmp))
            os.chmod(tmp, 0o666 & ~_UMASK)
        yield list(temps)
        for tmp, p in zip(temps, paths):
            os.replace(tmp, p)
            done += 1
    finally:
        for tmp in temps[done:]:  # a replaced name may already belong to another writer's temporary
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """atomic_paths for one target: yields its temporary path."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def atomic_write_text(path, text: str, encoding="utf-8"):
    """Write text to path atomically (atomic_paths). Returns path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path
