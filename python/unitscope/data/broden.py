"""BrodenDataset: a torch Dataset over a dataset in the Broden format (Bau et al., CVPR 2017).

Reads index.csv / category.csv / label.csv / c_<category>.csv (see broden_meta.py), decodes label
PNGs (label = R + 256 * G) or their packed copy (pack.py), and gives one dict per image.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from unitscope.data import broden_meta as meta
from unitscope.data.broden_meta import BrodenFormatError

PACKED_DIR = "packed"


class BrodenDataset(torch.utils.data.Dataset):
    """Images and pixel/image labels of a Broden-format dataset.

    Args:
        root: dataset folder holding index.csv, category.csv, label.csv, c_<category>.csv, images/.
        categories: categories to use (default: every category of category.csv that index.csv has a
            column for), in this order; `annotated` and `label_category` index into it.
        split: keep only rows whose `split` equals this ("train", "val"); None keeps all.
        resolution: resize images to this size (int or (H, W)), bilinear with antialiasing
            (models.images.resize_image); label maps keep their own (sh, sw) size. None keeps the
            stored image size. Images of 8 or 16 bits are scaled by their bit depth (read_image).
        packed: use the packed label arrays written by `pack_broden(root)` when they are present and
            match index.csv ("auto"), always (True: error if absent/stale) or never (False).

    Item (dict):
        image (Tensor[3, H, W], float32 in [0, 1]); pixel_labels (Tensor[L, sh, sw], int16/int32):
        one map per label PNG of the selected categories, 0 = no label; image_labels (Tensor[L2],
        int64): whole-image labels (scene, texture); annotated (Tensor[ncat], bool); index (int).
        A label whose categories are all outside `categories` is mapped to 0.

    Attributes: categories, label_names (C,), label_category (np.int64[C], primary category index
    per label, -1 for label 0 and labels outside the selected categories), num_labels (C).
    """

    def __init__(self, root, *, categories=None, split=None, resolution=None, packed="auto"):
        if "\0" in str(root):
            raise BrodenFormatError(f"dataset root {str(root)!r} contains a NUL byte")
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise BrodenFormatError(f"dataset root {str(root)!r} is not a directory")
        if packed not in ("auto", True, False):
            raise ValueError(f"packed must be 'auto', True or False, got {packed!r}")
        all_cats = meta.read_categories(self.root)
        header_cats = self._index_header_categories()
        if categories is None:
            categories = [c for c in all_cats if c in header_cats]
        else:
            if isinstance(categories, str):
                categories = [categories]
            categories = list(categories)
            unknown = [c for c in categories if c not in all_cats]
            if unknown:
                raise ValueError(f"categories must be among {all_cats} (category.csv), got unknown {unknown}")
            if len(set(categories)) != len(categories):
                raise ValueError(f"categories lists a category twice: {categories}")
        if not categories:
            raise ValueError("categories is empty: the dataset has no category to dissect")
        self.categories = categories
        self.split = split
        self.resolution = None if resolution is None else _size_2d(resolution)
        self.label_names, _ = meta.read_labels(self.root)
        self.num_labels = len(self.label_names)
        self.label_category = self._primary_categories()
        self.rows = meta.read_index(self.root, categories, split)
        if not self.rows:
            raise ValueError(f"dataset {self.root} has no rows" + (f" with split {split!r}" if split else ""))
        self._lut = np.where(self.label_category >= 0, np.arange(self.num_labels), 0)
        self.label_dtype = np.int16 if self.num_labels <= 32767 else np.int32
        self.fields = ("image", "labels")
        self._packed_setting = packed
        self._packed_rows = self._find_packed(packed)
        self._packed_maps = None  # memmap, opened lazily in each worker

    # ---- metadata ------------------------------------------------------------------------------
    def _index_header_categories(self) -> list[str]:
        path = self.root / "index.csv"
        header = meta.read_header(path)
        if not header:
            raise BrodenFormatError(f"{path} is empty (expected a header {','.join(meta.INDEX_FIXED)},...)")
        return [h for h in header if h not in meta.INDEX_FIXED]

    def _primary_categories(self) -> np.ndarray:
        """Per label, the selected category where its coverage is largest (NetDissect's rule; ties go
        to the category listed first); -1 for label 0 and labels in none of the selected categories."""
        best = np.full(self.num_labels, -1, dtype=np.int64)
        best_cov = np.full(self.num_labels, -np.inf)
        for ci, cat in enumerate(self.categories):
            for number, cov in meta.read_category_codes(self.root, cat, self.num_labels).items():
                if number > 0 and cov > best_cov[number]:
                    best[number], best_cov[number] = ci, cov
        return best

    def files(self) -> list[str]:
        """Every image and label PNG the selected rows read, relative to images/, in reading order."""
        out = []
        for row in self.rows:
            out.append(row.image)
            out += [p for c in self.categories for p in row.pixel.get(c, [])]
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 over the metadata files' bytes, the selection (categories, split, resolution), the
        size and modification time of every image and label PNG read (a re-encoded image changes it;
        so does a copy that does not keep times) and of the packed labels when they are used.
        Costs one stat per file (about a second for the real Broden's 63,305 rows)."""
        h = hashlib.sha256()
        files = ["index.csv", "category.csv", "label.csv"] + [meta.category_file(self.root, c).name
                                                              for c in self.categories]
        for name in files:
            h.update(name.encode())
            h.update((self.root / name).read_bytes())
        h.update(json.dumps([self.categories, self.split, self.resolution]).encode())
        h.update(file_stamps(self.root / "images", self.files()).encode())
        if self._packed_rows is not None:
            h.update(file_stamps(self.root / PACKED_DIR, ["labels.npy", "paths.txt", "source.json"]).encode())
        return h.hexdigest()

    def with_fields(self, *fields) -> BrodenDataset:
        """A shallow copy that loads only `fields` ("image", "labels") per item (faster passes)."""
        bad = [f for f in fields if f not in ("image", "labels")]
        if bad or not fields:
            raise ValueError(f"fields must be among ('image', 'labels'), got {fields}")
        other = copy.copy(self)
        other.fields = tuple(fields)
        other._packed_maps = None
        return other

    def image_path(self, i: int) -> Path:
        return self.root / "images" / self.rows[i].image

    def __len__(self) -> int:
        return len(self.rows)

    # ---- decoding ------------------------------------------------------------------------------
    def _open_file(self, rel: str, row: meta.IndexRow) -> Path:
        images = self.root / "images"
        path = (images / rel).resolve()
        if not path.is_relative_to(images.resolve()):
            raise BrodenFormatError(f"{row.describe()}: path {rel!r} escapes the dataset's images/ folder")
        if not path.is_file():
            raise BrodenFormatError(f"{row.describe()}: missing file {path}")
        return path

    def _image(self, row: meta.IndexRow) -> torch.Tensor:
        from unitscope.models.images import read_image, resize_image

        path = self._open_file(row.image, row)
        try:  # the header's size is checked against index.csv's ih, iw before decoding; no EXIF
            # rotation: the label maps are drawn on the stored pixel grid
            arr = read_image(path, exif=False, expect=(row.ih, row.iw))  # float32 (H, W, 3) in [0, 1]
        except (ValueError, OSError) as e:
            raise BrodenFormatError(f"{row.describe()}: {e}") from e
        x = torch.from_numpy(arr).permute(2, 0, 1)
        return resize_image(x[None], self.resolution)[0] if self.resolution is not None else x.contiguous()

    def _label_map(self, rel: str, row: meta.IndexRow) -> np.ndarray:
        if self._packed_rows is not None and rel in self._packed_rows:
            if self._packed_maps is None:
                self._packed_maps = np.load(self.root / PACKED_DIR / "labels.npy", mmap_mode="r")
            m = np.asarray(self._packed_maps[self._packed_rows[rel]])
        else:
            m = decode_label_png(self._open_file(rel, row), row.describe(), expect=(row.sh, row.sw))
        if m.shape != (row.sh, row.sw):
            raise BrodenFormatError(f"{row.describe()}: label map {rel!r} is {m.shape[0]}x{m.shape[1]}, "
                                    f"index.csv says sh={row.sh}, sw={row.sw}")
        low, top = (int(m.min()), int(m.max())) if m.size else (0, 0)
        if low < 0 or top >= self.num_labels:
            raise BrodenFormatError(f"{row.describe()}: label map {rel!r} holds label {low if low < 0 else top}, "
                                    f"out of range: label.csv numbers 0..{self.num_labels - 1}")
        return self._lut[m]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self.rows):
            raise IndexError(f"index {i} out of range for a dataset of {len(self.rows)} images")
        row = self.rows[i]
        item = {"index": i}
        if "image" in self.fields:
            item["image"] = self._image(row)
        if "labels" in self.fields:
            maps = [self._label_map(p, row) for c in self.categories for p in row.pixel.get(c, [])]
            pixel = np.stack(maps) if maps else np.zeros((0, row.sh, row.sw))
            item["pixel_labels"] = torch.from_numpy(pixel.astype(self.label_dtype))
            scalars = np.array([n for c in self.categories for n in row.scalar.get(c, [])], dtype=np.int64)
            if scalars.size and scalars.max() >= self.num_labels:
                raise BrodenFormatError(f"{row.describe()}: image label {int(scalars.max())} out of range: "
                                        f"label.csv numbers 0..{self.num_labels - 1}")
            item["image_labels"] = torch.from_numpy(self._lut[scalars].astype(np.int64))
            item["annotated"] = torch.tensor([c in row.pixel or c in row.scalar for c in self.categories])
            item["label_size"] = (row.sh, row.sw)
        return item

    # ---- packed labels -------------------------------------------------------------------------
    def _find_packed(self, packed):
        """{png path: row of labels.npy} when the pack is usable, else None (packed="auto") or an error
        (packed=True) saying why. Usable: written for this index.csv and label.csv, every PNG it came
        from unchanged (size and modification time), the array's header and paths.txt consistent."""
        if packed is False:
            return None
        why, rows = self._check_packed()
        if why is None:
            return rows
        if packed is True:
            raise ValueError(f"packed=True but the packed labels in {self.root / PACKED_DIR} cannot be used: "
                             f"{why}; run unitscope.data.pack_broden(root) again")
        return None

    def _check_packed(self):
        """(None, {path: row}) for a usable pack, else (why, None)."""
        folder = self.root / PACKED_DIR
        try:
            info = json.loads((folder / "source.json").read_text(encoding="utf-8"))
            paths = (folder / "paths.txt").read_text(encoding="utf-8").splitlines()
            arr = np.load(folder / "labels.npy", mmap_mode="r")
        except FileNotFoundError as e:
            return f"{Path(e.filename).name} is missing", None
        except (OSError, ValueError) as e:  # also JSON and .npy header errors, non-UTF-8 text
            return f"unreadable ({type(e).__name__}: {str(e)[:120]})", None
        if not isinstance(info, dict):
            return "source.json is not an object", None
        if info.get("index_sha256") != _sha256(self.root / "index.csv"):
            return "index.csv changed since packing", None
        if info.get("label_sha256") != _sha256(self.root / "label.csv"):
            return "label.csv changed since packing (or the pack is from an older unitscope)", None
        if info.get("count") != len(paths) or len(set(paths)) != len(paths):
            return "paths.txt does not list count distinct paths", None
        if info.get("pngs") != file_stamps(self.root / "images", paths):
            return "a label PNG changed (size or modification time) since packing", None
        sizes = {(r.sh, r.sw) for r in self.rows}
        if arr.dtype not in (np.int16, np.int32) or arr.ndim != 3 or arr.shape[0] != len(paths) or \
                (len(sizes) == 1 and arr.shape[1:] != next(iter(sizes))):
            return f"labels.npy holds {arr.dtype} {arr.shape}, not int16/int32 ({len(paths)}, sh, sw)", None
        return None, {p: k for k, p in enumerate(paths)}


def file_stamps(folder: Path, rels) -> str:
    """sha256 over (path, size, modification time in ns) of each file under `folder` (a missing or
    unreadable file counts as such, so that reading it later gives its own error)."""
    h = hashlib.sha256()
    for rel in rels:
        try:
            st = os.stat(folder / rel)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except (OSError, ValueError) as e:
            stamp = type(e).__name__
        h.update(f"{rel}\0{stamp}\0".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def decode_label_png(path: Path, where: str = "", expect=None) -> np.ndarray:
    """A Broden label PNG -> int32[h, w] label numbers (R + 256 * G). The header's size is checked
    first (models.images.open_image: at most MAX_PIXELS pixels, exactly expect=(h, w) when given)."""
    from unitscope.models.images import open_image

    try:
        with open_image(path, expect=expect, what="label PNG") as im:
            arr = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA") else im)
    except (ValueError, FileNotFoundError) as e:  # open_image's message names the file
        raise BrodenFormatError(f"{where + ': ' if where else ''}{e}") from e
    except Exception as e:
        raise BrodenFormatError(f"{where + ': ' if where else ''}cannot read label PNG {path}: {e}") from e
    return arr[..., 0].astype(np.int32) + 256 * arr[..., 1].astype(np.int32)


def collate_broden(items: list[dict]) -> dict:
    """Stack items into a batch: image (B, 3, H, W); pixel_labels (B, Lmax, sh, sw) zero-padded;
    image_labels (B, L2max) zero-padded; annotated (B, ncat); index (B,) int64."""
    out = {"index": torch.tensor([it["index"] for it in items], dtype=torch.int64)}
    if "image" in items[0]:
        shapes = {tuple(it["image"].shape) for it in items}
        if len(shapes) > 1:
            raise ValueError(f"images in one batch differ in size {sorted(shapes)}; "
                             "pass resolution= to BrodenDataset to resize them to one size")
        out["image"] = torch.stack([it["image"] for it in items])
    if "pixel_labels" in items[0]:
        sizes = {it["label_size"] for it in items}
        if len(sizes) > 1:
            raise ValueError(f"label maps in one batch differ in size {sorted(sizes)} (sh, sw); "
                             "dissection needs one label resolution per dataset")
        sh, sw = sizes.pop()
        L = max(1, max(it["pixel_labels"].shape[0] for it in items))
        pixel = torch.zeros((len(items), L, sh, sw), dtype=items[0]["pixel_labels"].dtype)
        for b, it in enumerate(items):
            pixel[b, : it["pixel_labels"].shape[0]] = it["pixel_labels"]
        L2 = max(1, max(it["image_labels"].shape[0] for it in items))
        scal = torch.zeros((len(items), L2), dtype=torch.int64)
        for b, it in enumerate(items):
            scal[b, : it["image_labels"].shape[0]] = it["image_labels"]
        out["pixel_labels"] = pixel
        out["image_labels"] = scal
        out["annotated"] = torch.stack([it["annotated"] for it in items])
    return out


def _size_2d(value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"resolution must be a positive int or (H, W), got {value!r}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
