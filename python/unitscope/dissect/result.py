"""Dissection results: per layer, each unit's threshold, best concept and IoU, detectors, unique
detectors per category, and exports (NetDissect-Lite's tally.csv columns, JSON). Names from the
dataset or the model are data: CSV cells are escaped against formulas, file names are made safe and
distinct."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unitscope._checks import IOU_THRESHOLD
from unitscope.dissect.names import csv_cell, file_stems, report_files  # noqa: F401 (their home before names.py)


@dataclass
class LayerDissection:
    """One layer's dissection. K units, C labels (label numbers of the dataset), ncat categories.

    thresholds (float32[K]); iou (float64[K, C]); intersection (int64[K, C]); activation
    (int64[K, ncat]): mask pixels counted toward each category's union; label_count (int64[C]);
    activation_total (int64[K]); label_category (int64[C], -1 = not a concept of the dissected
    categories); topk_index (int64[K, k], -1 = empty), topk_values (float32[K, k]) and topk_maps
    (float32[K, k, h, w]): each unit's most activating images and their maps; minimum, maximum
    (float32[K]): each unit's extreme activations. A dead unit (minimum == maximum: constant, e.g.
    all zeros) is never a detector, whatever its IoU (with '>=' its mask would be every pixel).
    ties (int64[K] or None where unknown, e.g. a run resumed from an older checkpoint): each unit's
    raw activations exactly equal to its threshold (see `plateau`); `saturated`: threshold == maximum.
    """
    layer: str
    thresholds: np.ndarray
    iou: np.ndarray
    intersection: np.ndarray
    activation: np.ndarray
    label_count: np.ndarray
    activation_total: np.ndarray
    images: int
    label_names: list
    categories: list
    label_category: np.ndarray
    topk_index: np.ndarray
    topk_values: np.ndarray
    topk_maps: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    image_paths: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    ties: np.ndarray | None = None

    @classmethod
    def from_counts(cls, layer, thresholds, tally, topk, *, label_names, categories, label_category,
                    image_paths, settings):
        n = lambda t: t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)  # noqa: E731
        return cls(layer=layer, thresholds=n(thresholds).astype(np.float32), iou=n(tally["iou"]).astype(np.float64),
                   intersection=n(tally["intersection"]), activation=n(tally["activation"]),
                   label_count=n(tally["label"]), activation_total=n(tally["activation_total"]),
                   images=int(tally["images"]), label_names=list(label_names), categories=list(categories),
                   label_category=np.asarray(label_category, dtype=np.int64), topk_index=n(topk["index"]),
                   topk_values=n(topk["values"]), topk_maps=n(topk["maps"]),
                   minimum=n(topk["minimum"]), maximum=n(topk["maximum"]), image_paths=list(image_paths),
                   settings=dict(settings),
                   ties=None if tally.get("ties") is None else n(tally["ties"]).astype(np.int64))

    @property
    def num_units(self) -> int:
        return int(self.thresholds.shape[0])

    def _masked(self, category: int | None = None) -> np.ndarray:
        """IoU with non-concepts (and other categories' labels) at -1 so they are never picked."""
        ok = self.label_category >= 0 if category is None else self.label_category == category
        return np.where(ok[None, :], self.iou, -1.0)

    @property
    def dead(self) -> np.ndarray:
        """bool[K]: units whose activation is the same everywhere (or never finite)."""
        return ~(self.maximum > self.minimum)

    @property
    def saturated(self) -> np.ndarray:
        """bool[K]: units whose threshold equals their maximum activation: with '>' their mask is
        always empty (the top 1 - quantile of their activations is one tied value)."""
        return self.thresholds == self.maximum

    @property
    def plateau(self) -> np.ndarray:
        """bool[K]: units with more activations equal to their threshold (`ties`) than a fifth of the
        top 1 - quantile share of their activations: for them the masks of '>' and '>=' differ by a
        plateau (all False where ties are unknown)."""
        if self.ties is None:
            return np.zeros(self.num_units, dtype=bool)
        h, w = self.topk_maps.shape[-2:]
        return plateau(self.ties, self.settings.get("quantile", 0.995), self.images * h * w)

    @property
    def best_label(self) -> np.ndarray:
        """int64[K]: each unit's label number of highest IoU over all dissected categories."""
        return self._masked().argmax(axis=1)

    @property
    def best_iou(self) -> np.ndarray:
        """float64[K]: the best label's IoU (0 for dead units)."""
        return np.where(self.dead, 0.0, np.maximum(self._masked().max(axis=1), 0.0))

    @property
    def best_category(self) -> np.ndarray:
        return self.label_category[self.best_label]

    def best_in_category(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64[ncat, K], ious float64[ncat, K]): each unit's best label in each category."""
        labels, ious = [], []
        for c in range(len(self.categories)):
            m = self._masked(c)
            labels.append(m.argmax(axis=1))
            ious.append(np.where(self.dead, 0.0, np.maximum(m.max(axis=1), 0.0)))
        return np.stack(labels), np.stack(ious)

    def _threshold(self, iou_threshold):
        return self.settings.get("iou_threshold", IOU_THRESHOLD) if iou_threshold is None else iou_threshold

    def detectors(self, iou_threshold: float | None = None) -> list[dict]:
        """Units whose best IoU is above the threshold, best first: dicts unit/label/category/iou."""
        thr = self._threshold(iou_threshold)
        best, iou, cat = self.best_label, self.best_iou, self.best_category
        units = [k for k in np.argsort(-iou, kind="stable") if iou[k] > thr]
        return [{"unit": int(k), "label": self.label_names[best[k]], "category": self.categories[cat[k]],
                 "iou": float(iou[k])} for k in units]

    def unique_detectors(self, iou_threshold: float | None = None, rule: str = "best") -> dict:
        """{category: number of distinct concepts}. rule='best' (default; the paper's count and
        NetDissect-Lite's bar graph): each detector unit counts its overall best label only, so a unit
        adds at most one concept; rule='category': a concept counts if it is some unit's best label
        within its own category with IoU above the threshold (a unit may add one per category)."""
        thr = self._threshold(iou_threshold)
        found: dict[str, set] = {c: set() for c in self.categories}
        if rule == "category":
            labels, ious = self.best_in_category()
            for c, cat in enumerate(self.categories):
                found[cat].update(int(l) for l, v in zip(labels[c], ious[c]) if v > thr)
        elif rule == "best":
            for d in self.detectors(thr):
                found[d["category"]].add(d["label"])
        else:
            raise ValueError(f"rule must be 'category' or 'best', got {rule!r}")
        return {c: len(s) for c, s in found.items()}

    def units(self) -> list[dict]:
        """Per unit (sorted by best IoU, best first): threshold, best label/category/IoU and the best
        label and IoU in every category."""
        labels, ious = self.best_in_category()
        best, iou, cat = self.best_label, self.best_iou, self.best_category
        rows = []
        for k in np.argsort(-iou, kind="stable"):
            rows.append({"unit": int(k), "threshold": float(self.thresholds[k]), "label": self.label_names[best[k]],
                         "category": self.categories[cat[k]], "iou": float(iou[k]),
                         "per_category": {c: {"label": self.label_names[labels[ci, k]], "iou": float(ious[ci, k])}
                                          for ci, c in enumerate(self.categories)}})
        return rows

    def to_csv(self, path=None) -> str:
        """NetDissect-Lite's tally.csv: unit (numbered from 1, NetDissect-Lite's convention), category,
        label, score, then per category <cat>-label, <cat>-truth (label pixels), <cat>-activation (the
        unit's mask pixels in that category's union), <cat>-intersect, <cat>-iou; then ties (activations
        equal to the threshold, empty where unknown), saturated (1 where the threshold equals the
        unit's maximum activation, else 0) and unit_0based
        (the unit numbered from 0, as in the HTML report, JSON, console and Python); rows sorted by
        score. Text cells starting with = + - @ tab or CR get a leading ' (no spreadsheet formulas);
        lines end in CRLF (RFC 4180), so that a CR or LF inside a name is quoted. Returns the text."""
        labels, ious = self.best_in_category()
        best, iou, cat = self.best_label, self.best_iou, self.best_category
        saturated = self.saturated
        header = ["unit", "category", "label", "score"]
        for c in self.categories:
            header += [f"{c}-label", f"{c}-truth", f"{c}-activation", f"{c}-intersect", f"{c}-iou"]
        header += ["ties", "saturated", "unit_0based"]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([csv_cell(h) for h in header])
        for k in np.argsort(-iou, kind="stable"):
            row = [k + 1, csv_cell(self.categories[cat[k]]), csv_cell(self.label_names[best[k]]), f"{iou[k]:.6f}"]
            for ci in range(len(self.categories)):
                lab = labels[ci, k]
                row += [csv_cell(self.label_names[lab]), int(self.label_count[lab]), int(self.activation[k, ci]),
                        int(self.intersection[k, lab]), f"{ious[ci, k]:.6f}"]
            row += ["" if self.ties is None else int(self.ties[k]), int(saturated[k]), int(k)]
            w.writerow(row)
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8", newline="")
        return text

    def to_dict(self, full: bool = False) -> dict:
        """The layer's summary (units, unique detectors, detectors, settings) and under "data" every
        field, arrays as base64 (saved_full.py), so that Dissection.load restores this object; full:
        also the IoU matrix and label names as JSON lists."""
        from unitscope.dissect.saved_full import layer_data

        d = {"layer": self.layer, "units": self.units(), "unique_detectors": self.unique_detectors(),
             "detectors": len(self.detectors()), "settings": self.settings, "data": layer_data(self)}
        if full:
            d["iou"] = self.iou.tolist()
            d["label_names"] = self.label_names
        return d


class Dissection:
    """Results of unitscope.dissect(): `dissection[layer]` is a LayerDissection; `timings` holds
    seconds spent in data loading, forward, threshold pass and tally pass."""

    def __init__(self, layers: dict, timings: dict | None = None, settings: dict | None = None, name: str = ""):
        self.layers = dict(layers)
        self.timings = dict(timings or {})
        self.settings = dict(settings or {})
        self.name = name

    def __getitem__(self, layer: str) -> LayerDissection:
        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} in this dissection; layers: {list(self.layers)}")
        return self.layers[layer]

    def __iter__(self):
        return iter(self.layers.values())

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        parts = [f"{l.layer}: {l.num_units} units, {len(l.detectors())} detectors" for l in self]
        return f"Dissection({'; '.join(parts)})"

    def detectors(self, iou_threshold=None) -> dict:
        return {l.layer: l.detectors(iou_threshold) for l in self}

    def unique_detectors(self, iou_threshold=None, rule="best") -> dict:
        return {l.layer: l.unique_detectors(iou_threshold, rule) for l in self}

    def file_stems(self) -> dict:
        """{layer: the name its files get} (file_stems(): safe and distinct, see there)."""
        return file_stems(list(self.layers))

    def to_csv(self, directory) -> list[Path]:
        """One tally_<stem>.csv per layer in `directory` (report_files()); returns the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        files = report_files(list(self.layers))
        for l in self:
            p = directory / files[l.layer]["csv"]
            l.to_csv(p)
            paths.append(p)
        return paths

    def to_json(self, path=None, full: bool = False) -> str:
        """{"format", "version", "name", "timings", "settings", "layers": [LayerDissection.to_dict(full)]}
        as strict JSON: a float that JSON cannot hold is written as a string, "inf" (the threshold of
        a unit with no finite activation, which never fires), "-inf" or "nan" (json_float() reads
        them back). Version 2 (JSON_VERSION) holds every field (Dissection.load restores an equal
        object); version 1 files (no format/version) held only the summary."""
        doc = {"format": JSON_FORMAT, "version": JSON_VERSION, "name": self.name, "timings": self.timings,
               "settings": self.settings, "layers": [l.to_dict(full) for l in self]}
        text = json.dumps(_json_safe(doc), indent=1, allow_nan=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def save_report(self, directory, **kw):
        from unitscope.dissect.report import save_report
        return save_report(self, directory, **kw)

    @classmethod
    def load(cls, path) -> Dissection:
        """The Dissection a dissection.json (Dissection.to_json, `unitscope dissect --out DIR`) was written
        from, or DIR/dissection.json for a folder. The file is untrusted: every field is checked
        (types, shapes, ranges; names are kept as data) and a bad one raises ValueError naming it.

        A version-2 file (what to_json writes now) gives back an object equal to the one that wrote
        it, field by field (arrays bit for bit: pixel counts, top images and maps, minimum/maximum,
        ties; so dead, saturated and plateau too), besides name, timings and settings; its summary
        ('units') must agree with its data. A version-1 file (no "version", the summary only) gives
        what it records: each unit's threshold, best label/category/IoU and best label/IoU in every
        category, so detectors(), unique_detectors(), units(), compare(), explain() and the report's
        tables agree; the pixel counts not recorded there are -1, there are no top images, the iou
        matrix holds only each unit's best IoU per category (other labels -1), and a unit counts as
        dead only when its threshold is not finite. A non-finite threshold of a version-1 file is
        read from `Infinity`/`NaN`, null (+inf) or the strings "inf", "-inf", "nan" (any case).
        """
        from unitscope.dissect.saved import read_dissection

        return read_dissection(cls, path)


JSON_FORMAT = "unitscope dissection"
JSON_VERSION = 2  # 1: no format/version, the layers' summary only; 2: every field under each layer's "data"
_NONFINITE = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def _json_safe(v):
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def json_float(v):
    """A number of a dissection.json as a float: JSON numbers as they are, and the strings "inf",
    "-inf" and "nan" that Dissection.to_json writes for what JSON numbers cannot hold; None for
    anything else (a bool, another string, a number beyond float range)."""
    if isinstance(v, str):
        return _NONFINITE.get(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return None


def plateau(ties, quantile: float, values: int) -> np.ndarray:
    """bool[K]: ties (int[K], activations equal to the threshold) above a fifth of the top
    1 - quantile share of `values` activations per unit."""
    return np.asarray(ties) > 0.2 * (1.0 - quantile) * values
