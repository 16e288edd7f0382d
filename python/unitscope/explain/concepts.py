"""What explain() needs to know of a dissected layer, read from a LayerDissection / Dissection or from
a saved dissection.json (untrusted: every field is checked before use): each unit's threshold, best
concept and IoU, the detector IoU threshold, the mask rule, and where its top dataset images are."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unitscope._checks import IOU_THRESHOLD, align_corners, check_threshold_op

NO_CONCEPT = "no concept"


@dataclass
class UnitConcepts:
    """One dissected layer, K units.

    thresholds (float32[K]): each unit's activation threshold (its dissection quantile);
    labels, categories (lists of K str): each unit's best concept and its category;
    iou (float64[K]): that concept's IoU; iou_threshold (float): a unit is a detector of its concept
    when iou > iou_threshold; threshold_op ('>' or '>='): the mask rule; align_corners (bool): how the
    dissection upsampled maps; top_images: unit -> uint8 array (h, w, 3) of its top dataset images
    (None where unavailable); vocabulary: (label, category) pairs of the dataset's concepts that the
    dissection names (every label of a LayerDissection; from a JSON file, the units' best and
    per-category labels).
    """
    layer: str
    thresholds: np.ndarray
    labels: list
    categories: list
    iou: np.ndarray
    iou_threshold: float = IOU_THRESHOLD
    threshold_op: str = ">"
    align_corners: bool = False
    top_images: object = field(default=None, repr=False)
    vocabulary: tuple = field(default=(), repr=False)  # (label, category) of the concepts the dissection knew of

    @property
    def num_units(self) -> int:
        return int(self.thresholds.shape[0])

    def concept(self, k: int) -> tuple[str, str]:
        """(label, category) of unit k, or ('no concept', '') when it is not a detector."""
        if self.iou[k] > self.iou_threshold:
            return self.labels[k], self.categories[k]
        return NO_CONCEPT, ""

    def top_image(self, k: int):
        return self.top_images(k) if self.top_images is not None else None


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(value, what: str, where: str, lo: float = -math.inf, hi: float = math.inf, inf: bool = False) -> float:
    """A finite number in [lo, hi] (inf=True also accepts +inf: the threshold of a unit that never
    fires, written "inf" by Dissection.to_json), else ValueError naming it."""
    from unitscope.dissect.result import json_float

    v = json_float(value)
    ok = v is not None and (lo <= v <= hi or (inf and v == math.inf))
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        span = f"a finite number in [{lo:g}, {hi:g}]" + (' or "inf"' if inf else "")
        raise ValueError(f"{where}: {what} must be {span}, got {shown}")
    return v


def _settings(s: dict, where: str) -> dict:
    if not isinstance(s, dict):
        raise ValueError(f"{where}: settings must be a dict, got {type(s).__name__}")
    thr = _number(s.get("iou_threshold", IOU_THRESHOLD), "settings.iou_threshold", where)
    op = check_threshold_op(s.get("threshold_op", ">"), f"{where}: settings.threshold_op")
    return {"iou_threshold": float(thr), "threshold_op": op,
            "align_corners": align_corners(s.get("upsample"))}


def from_layer_dissection(ld) -> UnitConcepts:
    """UnitConcepts of a LayerDissection; top images are drawn from its dataset when it is still on disk."""
    from unitscope.dissect.report import unit_strip

    best, cat = ld.best_label, ld.best_category
    root = Path(ld.settings.get("dataset_root", "."))
    cache: dict = {}

    def top_images(k):
        try:
            strip = unit_strip(ld, k, root, cache)
        except (OSError, IndexError):  # the dataset moved or was deleted: no images, not an error
            return None
        return None if strip is None else np.asarray(strip)

    return UnitConcepts(layer=ld.layer, thresholds=np.asarray(ld.thresholds, dtype=np.float32),
                        labels=[ld.label_names[b] for b in best],
                        categories=[ld.categories[c] if c >= 0 else "" for c in cat],
                        iou=np.asarray(ld.best_iou, dtype=np.float64), top_images=top_images,
                        vocabulary=tuple((n, c) for n, c in zip(ld.label_names, _categories_of(ld))),
                        **_settings(ld.settings, f"dissection of {ld.layer!r}"))


def from_json(path, layer: str) -> UnitConcepts:
    """UnitConcepts of `layer` from a dissection.json written by Dissection.to_json. The report's
    strips of top images (<dir>/<layer>/unit_NNNN.jpg or <dir>/report/<layer>/unit_NNNN.jpg, written
    by save_report) are used when present."""
    from unitscope.dissect.result import report_files
    from unitscope.models.images import open_image

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dissection must be a Dissection, a LayerDissection or a dissection.json path; "
                         f"{str(path)!r} is not a file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"dissection file {str(path)!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"dissection file {str(path)!r} is nested too deeply to be a dissection") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list) or not all(isinstance(l, dict) for l in layers):
        raise ValueError(f"dissection file {str(path)!r} must hold {{'layers': [...]}} as written by Dissection.to_json")
    found = [l for l in layers if l.get("layer") == layer]
    if not found:
        names = [str(l.get("layer")) for l in layers]
        raise ValueError(f"layer {layer!r} is not in dissection file {str(path)!r}; its layers: {names}")
    entry, where = found[0], f"{path.name}, layer {layer!r}"
    units = entry.get("units")
    if not isinstance(units, list) or not units:
        raise ValueError(f"{where}: 'units' must be a non-empty list")
    K = len(units)
    thresholds = np.zeros(K, np.float32)
    iou = np.zeros(K, np.float64)
    labels, cats, seen, vocabulary = [""] * K, [""] * K, set(), set()
    for i, u in enumerate(units):
        k = u.get("unit") if isinstance(u, dict) else None
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < K or k in seen:
            raise ValueError(f"{where}: unit entry {i} must have a distinct 'unit' in [0, {K}), got {k!r}")
        seen.add(k)
        lab, cat = u.get("label"), u.get("category")
        # a float32 threshold: a larger value would silently become inf
        t = _number(u.get("threshold"), f"unit {k}'s threshold", where, -FLOAT32_MAX, FLOAT32_MAX, inf=True)
        v = _number(u.get("iou"), f"unit {k}'s iou", where, 0.0, 1.0)
        if not isinstance(lab, str) or not isinstance(cat, str):
            raise ValueError(f"{where}: unit {k}'s label and category must be strings, got {lab!r}, {cat!r}")
        thresholds[k], iou[k], labels[k], cats[k] = t, v, lab, cat
        vocabulary.add((lab, cat))
        per = u.get("per_category")
        if isinstance(per, dict):
            vocabulary.update((e["label"], c) for c, e in per.items()
                              if isinstance(c, str) and isinstance(e, dict) and isinstance(e.get("label"), str))
    # the report sits beside the JSON (save_report(dir)) or in report/ (`unitscope dissect --out dir`),
    # its folders named as save_report names them
    folder = report_files([str(l.get("layer")) for l in layers])[layer]["units"]
    strips = [path.parent / folder, path.parent / "report" / folder]

    def top_images(k):
        p = next((d / f"unit_{k:04d}.jpg" for d in strips if (d / f"unit_{k:04d}.jpg").is_file()), None)
        if p is None:
            return None
        try:
            with open_image(p, what="top-images strip") as im:  # header checked before decoding
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError):
            return None

    return UnitConcepts(layer=layer, thresholds=thresholds, labels=labels, categories=cats, iou=iou,
                        top_images=top_images, vocabulary=tuple(sorted(vocabulary)),
                        **_settings(entry.get("settings", {}), where))


def _categories_of(ld) -> list:
    """Each label's primary category name in a LayerDissection ('' where it has none)."""
    lc = getattr(ld, "label_category", None)
    if lc is None:
        return [""] * len(ld.label_names)
    return [ld.categories[int(c)] if 0 <= int(c) < len(ld.categories) else "" for c in lc]


# concepts in these categories describe a whole thing and can name what a class is; colours and textures cannot
THING_CATEGORIES = ("object", "part", "scene", "material")


def _words(text: str) -> set:
    """Lower-case words of 3+ letters, a plural 's' dropped: 'Egyptian cat' -> {'egyptian', 'cat'}."""
    import re

    words = re.findall(r"[a-z]{3,}", text.lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words}


def close_concepts(class_name: str, vocabulary) -> list:
    """The concepts of `vocabulary` ((label, category) pairs) whose name shares a word with
    `class_name` (the words of ImageNet's 'tabby, tabby cat' include 'cat'), among the categories that
    name things (THING_CATEGORIES; a category '' counts too). Empty: the dataset knows no concept
    close to the class, so the concepts an explanation names are only the nearest it has."""
    target = _words(class_name)
    return sorted({label for label, cat in vocabulary
                   if (cat in THING_CATEGORIES or not cat) and _words(label) & target})


def unit_concepts(dissection, layer: str) -> UnitConcepts:
    """Dissection | LayerDissection | path to dissection.json -> UnitConcepts of `layer`."""
    from unitscope.dissect.result import Dissection, LayerDissection

    if isinstance(dissection, LayerDissection):
        uc = from_layer_dissection(dissection)
    elif isinstance(dissection, Dissection):
        if layer not in dissection.layers:
            raise ValueError(f"layer {layer!r} is not in the dissection; its layers: {list(dissection.layers)}")
        uc = from_layer_dissection(dissection[layer])
    elif isinstance(dissection, (str, Path)):
        uc = from_json(dissection, layer)
    else:
        raise TypeError(f"dissection must be a Dissection, a LayerDissection or a dissection.json path, "
                        f"got {type(dissection).__name__}")
    if uc.layer != layer:
        raise ValueError(f"the dissection is of layer {uc.layer!r}, but layer={layer!r} is explained")
    return uc
