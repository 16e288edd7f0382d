"""Parsing of the Broden metadata files: index.csv, category.csv, label.csv, c_<category>.csv.

Every error names the file and its line (the header is line 1) and what was wrong, so a broken
dataset is fixed in one look. Paths in index.csv are checked to stay inside `<root>/images`; names
are data (a category name never becomes a path outside the root); sizes are bounded before anything
is allocated (MAX_LABEL_NUMBER, MAX_PIXELS).
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

INDEX_FIXED = ("image", "split", "ih", "iw", "sh", "sw")
_INT_LIST = re.compile(r"^\s*-?\d+(\s*;\s*-?\d+)*\s*$")
_CAT_COUNT = re.compile(r"^([^()]+)\((\d+)\)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Label numbers are stored in PNGs as R + 256 * G with 8-bit channels, so no pixel label can exceed
# 65535; larger numbers (and the tables of that many labels they would make) are refused.
MAX_LABEL_NUMBER = 65535
# Image and label-map areas (ih * iw, sh * sw): PIL's default decompression-bomb limit, past which PIL
# would refuse the image anyway; checked before a batch of that size is allocated.
MAX_PIXELS = 89_478_485


class BrodenFormatError(ValueError):
    """A Broden file is missing, unreadable or malformed (the message names file and line)."""


@dataclass
class IndexRow:
    line: int                      # line number in index.csv (header = 1)
    image: str                     # path relative to images/
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    pixel: dict = field(default_factory=dict)   # category -> [png path, ...]
    scalar: dict = field(default_factory=dict)  # category -> [label number, ...]

    def describe(self) -> str:
        return f"index.csv line {self.line} (image {self.image!r})"


def _read_csv(path: Path, required: tuple) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row dict)]) with the required columns checked."""
    if not path.is_file():
        raise BrodenFormatError(f"missing Broden file {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a leading BOM is dropped
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise BrodenFormatError(f"{path} is empty (expected a header {','.join(required)})") from None
            rows = []
            for cells in reader:
                if not cells or all(not c.strip() for c in cells):
                    continue
                line = reader.line_num
                if len(cells) != len(header):
                    raise BrodenFormatError(
                        f"{path.name} line {line}: expected {len(header)} columns ({','.join(header)}), "
                        f"got {len(cells)}: {cells!r}")
                rows.append((line, dict(zip(header, cells))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _read_error(path, e) from e
    missing = [c for c in required if c not in header]
    if missing:
        raise BrodenFormatError(f"{path.name} lacks column(s) {missing}; its header is {header}")
    return header, rows


def _read_error(path: Path, e: Exception) -> BrodenFormatError:
    if isinstance(e, UnicodeDecodeError):
        return BrodenFormatError(f"cannot read {path}: it is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                                 f"offset {e.start}); save it as UTF-8")
    return BrodenFormatError(f"cannot read {path}: {e}")


def read_header(path: Path) -> list[str]:
    """The first row of a CSV file (stripped cells); [] for an empty file."""
    if not path.is_file():
        raise BrodenFormatError(f"missing Broden file {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _read_error(path, e) from e


def _int(value: str, fname: str, line: int, column: str, minimum: int | None = None,
         maximum: int | None = None) -> int:
    try:
        v = int(value.strip())
    except ValueError:
        raise BrodenFormatError(f"{fname} line {line}: column {column!r} must be an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise BrodenFormatError(f"{fname} line {line}: column {column!r} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise BrodenFormatError(f"{fname} line {line}: column {column!r} must be <= {maximum}, got {v}")
    return v


def _float(value: str, fname: str, line: int, column: str) -> float:
    try:
        return float(value.strip()) if value.strip() else 0.0
    except ValueError:
        raise BrodenFormatError(f"{fname} line {line}: column {column!r} must be a number, got {value!r}") from None


def safe_relpath(rel: str, where: str) -> str:
    """`rel` normalized, or BrodenFormatError when it is absolute or climbs out of images/."""
    rel = rel.strip()
    if not rel:
        raise BrodenFormatError(f"{where}: empty path")
    if _CONTROL.search(rel):
        raise BrodenFormatError(f"{where}: path {rel!r} contains a control character (NUL, newline, ...)")
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(rel) or os.path.isabs(norm) or norm == ".." or norm.startswith("../") or re.match(r"^[A-Za-z]:", rel):
        raise BrodenFormatError(f"{where}: path {rel!r} escapes the dataset's images/ folder")
    return norm


def category_file(root: Path, category: str) -> Path:
    """root / c_<category>.csv, refused when the name would make it a path outside the root (a
    separator, a control character, or a link that leads out)."""
    if not category or "/" in category or "\\" in category or _CONTROL.search(category):
        raise BrodenFormatError(f"category name {category!r} cannot name a file c_<category>.csv inside the "
                                "dataset (it is empty or holds a path separator or a control character)")
    path = root / f"c_{category}.csv"
    if path.exists() and not path.resolve().is_relative_to(root.resolve()):
        raise BrodenFormatError(f"{path} is a link that leads outside the dataset root {root}")
    return path


def read_categories(root: Path) -> list[str]:
    """Category names in category.csv order (each must be usable in the file name c_<category>.csv)."""
    _, rows = _read_csv(root / "category.csv", ("name",))
    names = [r["name"].strip() for _, r in rows]
    for (line, _), n in zip(rows, names):
        if not n:
            raise BrodenFormatError(f"category.csv line {line}: empty category name")
        try:
            category_file(root, n)
        except BrodenFormatError as e:
            raise BrodenFormatError(f"category.csv line {line}: {e}") from None
    if len(set(names)) != len(names):
        raise BrodenFormatError(f"category.csv lists a category twice: {names}")
    return names


def read_labels(root: Path) -> tuple[list[str], dict[int, dict[str, int]]]:
    """(names indexed by label number, number -> {category: count} from the category column).
    Numbers above MAX_LABEL_NUMBER are refused (the tables are sized by the largest number)."""
    _, rows = _read_csv(root / "label.csv", ("number", "name", "category"))
    entries = {}
    for line, r in rows:
        number = _int(r["number"], "label.csv", line, "number", minimum=0, maximum=MAX_LABEL_NUMBER)
        if number in entries:
            raise BrodenFormatError(f"label.csv line {line}: label number {number} appears twice")
        cats = {}
        text = r["category"].strip()
        for part in filter(None, (p.strip() for p in text.split(";"))):
            m = _CAT_COUNT.match(part)
            if m is None:
                raise BrodenFormatError(
                    f"label.csv line {line}: category must look like 'material(36);object(3)', got {text!r}")
            cats[m.group(1).strip()] = int(m.group(2))
        entries[number] = (r["name"].strip(), cats)
    size = max(entries, default=0) + 1
    names = [""] * size
    cat_counts = {}
    for number, (name, cats) in entries.items():
        names[number] = name
        cat_counts[number] = cats
    return names, cat_counts


def read_category_codes(root: Path, category: str, num_labels: int) -> dict[int, float]:
    """c_<category>.csv: global label number -> coverage of the label in this category."""
    path = category_file(root, category)
    fname = path.name
    _, rows = _read_csv(path, ("code", "number", "coverage"))
    coverage = {}
    for line, r in rows:
        _int(r["code"], fname, line, "code", minimum=0)
        number = _int(r["number"], fname, line, "number", minimum=0)
        if number >= num_labels:
            raise BrodenFormatError(
                f"{fname} line {line}: label number {number} is not in label.csv (numbers 0..{num_labels - 1})")
        coverage[number] = _float(r["coverage"], fname, line, "coverage")
    return coverage


def read_index(root: Path, categories: list[str], split: str | None) -> list[IndexRow]:
    """index.csv rows (of `split` when given) with the per-category cells of `categories` parsed."""
    header, rows = _read_csv(root / "index.csv", INDEX_FIXED)
    absent = [c for c in categories if c not in header]
    if absent:
        raise BrodenFormatError(f"index.csv has no column for categor{'y' if len(absent) == 1 else 'ies'} "
                                f"{absent}; its header is {header}")
    out = []
    for line, r in rows:
        if split is not None and r["split"].strip() != split:
            continue
        where = f"index.csv line {line} (image {r['image'].strip()!r})"
        ih, iw, sh, sw = (_int(r[c], "index.csv", line, c, 1, MAX_PIXELS) for c in ("ih", "iw", "sh", "sw"))
        for what, area in (("ih * iw", ih * iw), ("sh * sw", sh * sw)):
            if area > MAX_PIXELS:
                raise BrodenFormatError(f"{where}: {what} = {area} pixels, more than the limit "
                                        f"{MAX_PIXELS} (PIL's decompression-bomb bound)")
        row = IndexRow(line=line, image=safe_relpath(r["image"], where), split=r["split"].strip(),
                       ih=ih, iw=iw, sh=sh, sw=sw)
        for cat in categories:
            cell = r[cat].strip()
            if not cell:
                continue
            if _INT_LIST.match(cell):
                try:
                    nums = [int(p) for p in cell.split(";")]
                except ValueError:  # more digits than Python converts
                    nums = [MAX_LABEL_NUMBER + 1]
                bad = [n for n in nums if not 0 <= n <= MAX_LABEL_NUMBER]
                if bad:
                    raise BrodenFormatError(f"{where}: column {cat!r} has label(s) {bad} outside "
                                            f"0..{MAX_LABEL_NUMBER}")
                row.scalar[cat] = nums
            else:
                parts = [p.strip() for p in cell.split(";") if p.strip()]
                if any(re.match(r"^-?\d+$", p) for p in parts):
                    raise BrodenFormatError(f"{where}: column {cat!r} mixes label numbers and PNG paths: {cell!r}")
                row.pixel[cat] = [safe_relpath(p, f"{where}, column {cat!r}") for p in parts]
        out.append(row)
    return out
