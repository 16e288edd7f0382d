"""pack_broden: a one-time conversion of a Broden dataset's label PNGs into one packed array
(`<root>/packed/labels.npy`, memory-mapped by BrodenDataset), so passes skip PNG decoding."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from unitscope.data.broden import PACKED_DIR, BrodenDataset, decode_label_png
from unitscope.data.broden_meta import BrodenFormatError


def pack_broden(root, *, progress: bool = False) -> Path:
    """Decode every label PNG named in index.csv once into `<root>/packed/labels.npy`
    (int16 or int32 [M, sh, sw], raw label numbers) with `paths.txt` (one PNG path per row) and
    `source.json` (index.csv's sha256; a changed index makes the pack stale and unused).
    All label maps must share one size. Files are written to temporaries and renamed at the end."""
    ds = BrodenDataset(root, packed=False)
    paths, sizes, where = [], set(), {}
    for row in ds.rows:
        for cat in ds.categories:
            for p in row.pixel.get(cat, []):
                if p not in where:
                    where[p] = row
                    paths.append(p)
                    sizes.add((row.sh, row.sw))
    if len(sizes) > 1:
        raise BrodenFormatError(f"pack_broden needs one label size, index.csv has {sorted(sizes)}")
    sh, sw = sizes.pop() if sizes else (1, 1)
    out = ds.root / PACKED_DIR
    out.mkdir(exist_ok=True)
    tmp = out / "labels.npy.tmp"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=ds.label_dtype, shape=(len(paths), sh, sw))
    it = paths
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(paths, desc="pack labels", unit="png")
    for k, p in enumerate(it):
        row = where[p]
        m = decode_label_png(ds._open_file(p, row), row.describe())
        if m.shape != (sh, sw):
            raise BrodenFormatError(f"{row.describe()}: label map {p!r} is {m.shape}, index.csv says {(sh, sw)}")
        if m.size and int(m.max()) >= ds.num_labels:
            raise BrodenFormatError(f"{row.describe()}: label map {p!r} holds label {int(m.max())}, out of "
                                    f"range: label.csv numbers 0..{ds.num_labels - 1}")
        arr[k] = m
    arr.flush()
    del arr
    (out / "paths.txt.tmp").write_text("".join(p + "\n" for p in paths), encoding="utf-8")
    digest = hashlib.sha256((ds.root / "index.csv").read_bytes()).hexdigest()
    (out / "source.json.tmp").write_text(json.dumps({"index_sha256": digest, "count": len(paths)}))
    os.replace(tmp, out / "labels.npy")
    os.replace(out / "paths.txt.tmp", out / "paths.txt")
    os.replace(out / "source.json.tmp", out / "source.json")
    return out
