"""Parsing of the Broden metadata files: index.csv, category.csv, label.csv, c_<category>.csv.

Every error names the file and its line (the header is line 1) and what was wrong, so a broken
dataset is fixed in one look. Paths in index.csv are checked to stay inside `<root>/images`.
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
        with open(path, newline="", encoding="utf-8") as f:
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
        raise BrodenFormatError(f"cannot read {path}: {e}") from e
    missing = [c for c in required if c not in header]
    if missing:
        raise BrodenFormatError(f"{path.name} lacks column(s) {missing}; its header is {header}")
    return header, rows


def _int(value: str, fname: str, line: int, column: str, minimum: int | None = None) -> int:
    try:
        v = int(value.strip())
    except ValueError:
        raise BrodenFormatError(f"{fname} line {line}: column {column!r} must be an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise BrodenFormatError(f"{fname} line {line}: column {column!r} must be >= {minimum}, got {v}")
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
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(rel) or os.path.isabs(norm) or norm == ".." or norm.startswith("../") or re.match(r"^[A-Za-z]:", rel):
        raise BrodenFormatError(f"{where}: path {rel!r} escapes the dataset's images/ folder")
    return norm


def read_categories(root: Path) -> list[str]:
    """Category names in category.csv order."""
    _, rows = _read_csv(root / "category.csv", ("name",))
    names = [r["name"].strip() for _, r in rows]
    for (line, _), n in zip(rows, names):
        if not n:
            raise BrodenFormatError(f"category.csv line {line}: empty category name")
    if len(set(names)) != len(names):
        raise BrodenFormatError(f"category.csv lists a category twice: {names}")
    return names


def read_labels(root: Path) -> tuple[list[str], dict[int, dict[str, int]]]:
    """(names indexed by label number, number -> {category: count} from the category column)."""
    _, rows = _read_csv(root / "label.csv", ("number", "name", "category"))
    entries = {}
    for line, r in rows:
        number = _int(r["number"], "label.csv", line, "number", minimum=0)
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
    fname = f"c_{category}.csv"
    _, rows = _read_csv(root / fname, ("code", "number", "coverage"))
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
        row = IndexRow(line=line, image=safe_relpath(r["image"], where), split=r["split"].strip(),
                       ih=_int(r["ih"], "index.csv", line, "ih", 1), iw=_int(r["iw"], "index.csv", line, "iw", 1),
                       sh=_int(r["sh"], "index.csv", line, "sh", 1), sw=_int(r["sw"], "index.csv", line, "sw", 1))
        for cat in categories:
            cell = r[cat].strip()
            if not cell:
                continue
            if _INT_LIST.match(cell):
                nums = [int(p) for p in cell.split(";")]
                bad = [n for n in nums if n < 0]
                if bad:
                    raise BrodenFormatError(f"{where}: column {cat!r} has negative label(s) {bad}")
                row.scalar[cat] = nums
            else:
                parts = [p.strip() for p in cell.split(";") if p.strip()]
                if any(re.match(r"^-?\d+$", p) for p in parts):
                    raise BrodenFormatError(f"{where}: column {cat!r} mixes label numbers and PNG paths: {cell!r}")
                row.pixel[cat] = [safe_relpath(p, f"{where}, column {cat!r}") for p in parts]
        out.append(row)
    return out
