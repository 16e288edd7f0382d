"""The project's progress bars: tqdm (tqdm.auto: a widget in notebooks) on stderr. Written to a log
rather than a terminal, a bar is redrawn every 30 s instead of ten times a second, so the log gets a
few lines per bar and its final line once (tqdm draws it on the last step and again on close)."""
from __future__ import annotations

import sys


def progress_bar(iterable=None, **kwargs):
    """tqdm.auto.tqdm(iterable, **kwargs), with mininterval=30 s when its stream is not a terminal."""
    from tqdm.auto import tqdm  # tqdm.notebook's widget in Jupyter, else a text bar

    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if "notebook" not in tqdm.__module__ and not (isatty is not None and isatty()):
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(iterable, **kwargs)
