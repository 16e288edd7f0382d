"""File and cell names made from names that come from data (layers, labels, categories): safe,
distinct file stems and report paths, and CSV cells a spreadsheet shows as text."""
from __future__ import annotations

import hashlib

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_RESERVED = {"index", "compare"}  # the report's own page and the comparison's files


def csv_cell(value):
    """A text cell that a spreadsheet shows as text: a leading ' before = + - @ tab or CR when more
    follows (the usual defence against formula injection; a lone '-', Broden's name of label 0, stays);
    other values unchanged."""
    if isinstance(value, str) and len(value) > 1 and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _safe(name: str) -> str:
    """Letters, digits, '-', '_' and '.' kept, the rest '_'; no leading '.'; at most 80 characters;
    a digest of the name appended when anything was changed (so different names stay different)."""
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "_" for ch in name)
    safe = ("_" + safe[1:] if safe.startswith(".") else safe)[:80] or "_"
    if safe != name or safe.lower() in _RESERVED:
        safe += "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return safe


# files a report folder holds besides the layers' own (the index page, the command's JSON, compare())
_OTHER_FILES = ("index.html", "dissection.json", "compare.csv", "compare.png")


def report_files(names) -> dict:
    """{name: {"page": <stem>.html, "chart": <stem>_unique.png, "units": folder of the unit strips,
    "csv": tally_<stem>.csv}}, stems from file_stems(). Every path is distinct from every other,
    also where file systems ignore case: a strips folder whose name is some file's (layers `blk` and
    `blk.html`, or `x` and `x_unique.png`) is `<stem>_units` (numbered if that is taken too)."""
    stems = file_stems(names)
    files = {f.lower() for f in _OTHER_FILES}
    for s in stems.values():
        files.update({f"{s}.html".lower(), f"{s}_unique.png".lower(), f"tally_{s}.csv".lower()})
    out, taken = {}, set(files)
    for name, s in stems.items():
        folder, n = s, 1
        while folder.lower() in taken:
            n += 1
            folder = f"{s}_units" if n == 2 else f"{s}_units-{n}"
        taken.add(folder.lower())
        out[name] = {"page": f"{s}.html", "chart": f"{s}_unique.png", "units": folder, "csv": f"tally_{s}.csv"}
    return out


def file_stems(names) -> dict:
    """{name: file stem}: _safe(name), made distinct also where file systems ignore case (a
    numbered suffix for the rare names whose stems still coincide)."""
    out, taken = {}, set()
    for name in names:
        stem, n = _safe(name), 1
        while stem.lower() in taken:
            n += 1
            stem = f"{_safe(name)}-{n}"
        taken.add(stem.lower())
        out[name] = stem
    return out
