"""Reading a dissection.json back (Dissection.load): every field checked, names kept as data; the
layers rebuilt as LayerDissections that give the same detectors, unique detectors, units and JSON as
the ones that were saved."""
from __future__ import annotations

import heapq
import json
from pathlib import Path

import numpy as np

from unitscope._checks import UNIONS
from unitscope.dissect.result import LayerDissection


def read_dissection(cls, path):
    """cls (Dissection) from the dissection.json at `path` (or `path`/dissection.json): see Dissection.load."""
    from unitscope.dissect.result import JSON_FORMAT, JSON_VERSION

    path = Path(path)
    if path.is_dir():
        path = path / "dissection.json"
    if not path.is_file():
        raise ValueError(f"path must be a dissection.json file or a folder holding one, got {str(path)!r}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise ValueError(f"{path}: not a dissection: {str(e)[:120]}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a dissection") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise ValueError(f"{path}: expected an object with a 'layers' list, as Dissection.to_json writes")
    version = doc.get("version", 1)
    if version != 1 and (doc.get("format") != JSON_FORMAT or type(version) is not int or
                         not 1 < version <= JSON_VERSION):
        raise ValueError(f"{path}: format {doc.get('format')!r:.60} version {version!r:.40} is not one this "
                         f"unitscope reads ({JSON_FORMAT!r} 1 to {JSON_VERSION})")
    name = doc.get("name", "")
    timings = doc.get("timings", {})
    if not isinstance(name, str):
        raise ValueError(f"{path}: 'name' must be a string, got {type(name).__name__}")
    if not isinstance(timings, dict) or not all(isinstance(k, str) and _number(v) for k, v in timings.items()):
        raise ValueError(f"{path}: 'timings' must map names to numbers, got {timings!r:.200}")
    layers = {}
    for i, entry in enumerate(doc["layers"]):
        where = f"{path.name}: layers[{i}]"
        ld = _layer_from_dict(entry, where) if version == 1 else _full_layer(entry, where)
        if ld.layer in layers:
            raise ValueError(f"{path.name}: layer {ld.layer!r} appears twice")
        layers[ld.layer] = ld
    if version == 1:
        settings = next(iter(layers.values())).settings if layers else {}
    else:
        settings = _settings(doc.get("settings"), path.name)
    return cls(layers, timings={k: float(v) for k, v in timings.items()}, settings=dict(settings), name=name)


def _full_layer(entry, where) -> LayerDissection:
    """A LayerDissection from a version-2 entry: every field from its "data"; the summary written
    beside it (units) must be the one these fields give."""
    from unitscope.dissect.result import _json_safe
    from unitscope.dissect.saved_full import read_layer_data

    if not isinstance(entry, dict) or not isinstance(entry.get("layer"), str):
        raise ValueError(f"{where}: expected an object with a string 'layer'")
    where = f"{where} ({entry['layer']!r:.80})"
    settings = _settings(entry.get("settings", {}), where)
    ld = LayerDissection(**read_layer_data(entry.get("data"), entry["layer"], settings, where))
    if json.loads(json.dumps(_json_safe(ld.units()))) != entry.get("units"):
        raise ValueError(f"{where}: 'units' is not what the layer's data gives (the file was edited or damaged)")
    return ld


_NONFINITE = {"inf": float("inf"), "+inf": float("inf"), "infinity": float("inf"), "+infinity": float("inf"),
              "-inf": float("-inf"), "-infinity": float("-inf"), "nan": float("nan")}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _threshold(v, where):
    """A threshold as written: a number (Infinity/NaN included), null (+inf) or 'inf'/'-inf'/'nan'."""
    if v is None:
        return float("inf")
    if isinstance(v, str) and v.strip().lower() in _NONFINITE:
        return _NONFINITE[v.strip().lower()]
    if not _number(v):
        raise ValueError(f"{where}: threshold must be a number, null or 'inf'/'-inf'/'nan', got {v!r:.80}")
    return float(v)


def _iou(v, where):
    if not _number(v) or not 0 <= v <= 1:
        raise ValueError(f"{where} must be a number in [0, 1], got {v!r:.80}")
    return float(v)


def _plain(v, depth: int = 0) -> bool:
    """A JSON value of at most 8 levels (a setting is a name, number or a small table)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return not isinstance(v, int) or isinstance(v, bool) or abs(v) < 2 ** 63
    if depth < 8 and isinstance(v, list):
        return all(_plain(x, depth + 1) for x in v)
    if depth < 8 and isinstance(v, dict):
        return all(_plain(x, depth + 1) for x in v.values())
    return False


def _settings(s, where) -> dict:
    if not isinstance(s, dict):
        raise ValueError(f"{where}: 'settings' must be an object, got {type(s).__name__}")
    if not _plain(s):
        raise ValueError(f"{where}: 'settings' must hold plain values (nested at most 8 deep, integers within int64)")
    checks = {"iou_threshold": lambda v: _number(v) and 0 <= v <= 1,
              "quantile": lambda v: _number(v) and 0 < v < 1,
              "threshold_op": lambda v: v in (">", ">="), "union": lambda v: isinstance(v, str) and v in UNIONS,
              "images": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2 ** 40,
              "topk": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "upsample": lambda v: isinstance(v, str), "dataset_root": lambda v: isinstance(v, str)}
    for key, ok in checks.items():
        if key in s and not ok(s[key]):
            raise ValueError(f"{where}: settings.{key} is not valid, got {s[key]!r:.80}")
    return dict(s)


def _layer_from_dict(entry, where) -> LayerDissection:
    """A LayerDissection from one entry of dissection.json's 'layers' (LayerDissection.to_dict)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("layer"), str):
        raise ValueError(f"{where}: expected an object with a string 'layer'")
    layer, units = entry["layer"], entry.get("units")
    where = f"{where} ({layer!r:.80})"
    settings = _settings(entry.get("settings", {}), where)
    if not isinstance(units, list) or not units:
        raise ValueError(f"{where}: 'units' must be a non-empty list")
    K = len(units)
    # per unit: (best (label, iou) per category, index of its best category, threshold)
    rows: list[tuple[list[tuple[str, float]], int, float] | None] = [None] * K
    categories: list[str] | None = None
    for i, u in enumerate(units):
        k = u.get("unit") if isinstance(u, dict) else None
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < K or rows[k] is not None:
            raise ValueError(f"{where}: units[{i}] must have a distinct 'unit' in [0, {K}), got {k!r:.80}")
        pc = u.get("per_category")
        if not isinstance(pc, dict) or not pc:
            raise ValueError(f"{where}: unit {k}'s 'per_category' must be a non-empty object")
        if categories is None:
            categories = list(pc)
        elif list(pc) != categories:
            raise ValueError(f"{where}: unit {k}'s categories {list(pc)!r:.200} differ from {categories!r:.200}")
        best: list[tuple[str, float]] = []
        for cat in categories:
            e = pc[cat]
            if not isinstance(e, dict) or not isinstance(e.get("label"), str):
                raise ValueError(f"{where}: unit {k}'s per_category[{cat!r:.80}] must hold a string 'label'")
            best.append((e["label"], _iou(e.get("iou"), f"{where}: unit {k}'s per_category[{cat!r:.80}].iou")))
        label, category, iou = u.get("label"), u.get("category"), _iou(u.get("iou"), f"{where}: unit {k}'s iou")
        if category not in categories or best[categories.index(category)][0] != label:
            raise ValueError(f"{where}: unit {k}'s best concept ({label!r:.80}, {category!r:.80}) is not its best "
                             "in that category")
        if iou != max(v for _, v in best) or best[categories.index(category)][1] != iou:
            raise ValueError(f"{where}: unit {k}'s iou {iou} is not the largest of its per-category IoUs")
        rows[k] = (best, categories.index(category), _threshold(u.get("threshold"), f"{where}: unit {k}'s"))
    # K distinct units in [0, K) filled every row, and the non-empty units set the categories
    full = [r for r in rows if r is not None]
    assert len(full) == K and categories is not None
    # labels: the distinct (category, name) pairs; their order settles ties between categories as the
    # original label numbers did (a unit's best label comes before every other label tied with it)
    ids: dict[tuple[int, str], int] = {}
    after: dict[tuple[int, str], set[tuple[int, str]]] = {}
    for _, u in sorted(enumerate(units), key=lambda t: t[0]):  # file order
        best, c, _ = full[u["unit"]]
        for key in [(c, best[c][0])] + [(ci, b[0]) for ci, b in enumerate(best)]:
            ids.setdefault(key, len(ids))
    for best, c, _ in full:
        top = (c, best[c][0])
        for ci, (lab, v) in enumerate(best):
            if ci != c and v == best[c][1]:
                after.setdefault(top, set()).add((ci, lab))
    order = _ordered(list(ids), after, where)
    ids = {key: n for n, key in enumerate(order)}
    C = len(ids)
    iou_matrix = np.full((K, C), -1.0)
    for k, (best, _, _) in enumerate(full):
        for ci, (lab, v) in enumerate(best):
            iou_matrix[k, ids[(ci, lab)]] = v
    thresholds = np.array([t for _, _, t in full], dtype=np.float32)
    dead = ~np.isfinite(thresholds)
    minus = lambda *shape: np.full(shape, -1, dtype=np.int64)  # noqa: E731  not recorded in the file
    return LayerDissection(
        layer=layer, thresholds=thresholds, iou=iou_matrix, intersection=minus(K, C),
        activation=minus(K, len(categories)), label_count=minus(C), activation_total=minus(K),
        images=settings.get("images", 0), label_names=[lab for _, lab in order], categories=categories,
        label_category=np.array([c for c, _ in order], dtype=np.int64), topk_index=minus(K, 0),
        topk_values=np.zeros((K, 0), np.float32), topk_maps=np.zeros((K, 0, 1, 1), np.float32),
        minimum=np.zeros(K, np.float32), settings=settings,
        # a version-1 file has no maxima: +inf keeps live units live and never `saturated` (unknown)
        maximum=np.where(dead, 0, np.inf).astype(np.float32))


def _ordered(keys: list, after: dict, where) -> list:
    """keys in their given order, moved only as far as needed for every key in after[a] to follow a
    (a stable topological sort); a cycle means the file contradicts itself."""
    rank = {key: n for n, key in enumerate(keys)}
    before = {key: 0 for key in keys}
    for later in after.values():
        for b in later:
            before[b] += 1
    ready = [rank[key] for key in keys if before[key] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        key = keys[heapq.heappop(ready)]
        out.append(key)
        for b in after.get(key, ()):
            before[b] -= 1
            if before[b] == 0:
                heapq.heappush(ready, rank[b])
    if len(out) != len(keys):
        raise ValueError(f"{where}: the units' best concepts contradict each other where IoUs tie")
    return out


