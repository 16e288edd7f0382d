"""pack_broden: a one-time conversion of a Broden dataset's label PNGs into one packed array
(`<root>/packed/labels.npy`, memory-mapped by BrodenDataset), so passes skip PNG decoding."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unitscope._io import atomic_paths
from unitscope.data.broden import PACKED_DIR, BrodenDataset, _sha256, decode_label_png, file_stamps
from unitscope.data.broden_meta import BrodenFormatError


def pack_broden(root, *, progress: bool = False) -> Path:
    """Decode every label PNG named in index.csv once into `<root>/packed/labels.npy`
    (int16 or int32 [M, sh, sw], raw label numbers) with `paths.txt` (one PNG path per row) and
    `source.json` (sha256 of index.csv and label.csv, and a digest of each PNG's size and modification
    time: a changed index, label list or PNG makes the pack stale and unused). All label maps must
    share one size. Files are written to temporaries and renamed at the end; a failure removes them."""
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
    source = {"index_sha256": _sha256(ds.root / "index.csv"), "label_sha256": _sha256(ds.root / "label.csv"),
              "count": len(paths), "pngs": file_stamps(ds.root / "images", paths)}  # before reading them
    with atomic_paths(out / "labels.npy", out / "paths.txt", out / "source.json") as temps:
        arr = np.lib.format.open_memmap(temps[0], mode="w+", dtype=ds.label_dtype, shape=(len(paths), sh, sw))
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
        temps[1].write_text("".join(p + "\n" for p in paths), encoding="utf-8")
        temps[2].write_text(json.dumps(source))
    return out
