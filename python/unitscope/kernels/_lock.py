"""One lock per state object (IoUTally, ExactQuantile, QuantileSketch): the compiled kernels release
the GIL, so two Python threads updating or merging one object would interleave their writes."""
from __future__ import annotations

import contextlib
import threading

import torch


class Locked:
    """Mixin: ``with self._locked():`` around every read-modify-write of the state. Pickling and
    copying leave the lock out and give the copy its own."""

    _lock: threading.RLock

    def _locked(self):
        # a traced (torch.compile / export) call has no threads to exclude, and a lock cannot be traced
        if torch.compiler.is_compiling():
            return contextlib.nullcontext()
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", threading.RLock())
        return lock

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()
