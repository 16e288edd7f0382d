"""The full record of a LayerDissection in dissection.json (format version 2): every array as
little-endian bytes in base64 with its dtype and shape, the names as JSON strings; written by
LayerDissection.to_dict, read back (every field checked as untrusted input) by Dissection.load."""
from __future__ import annotations

import base64
import binascii
import math

import numpy as np

# field: (dtype, shape as names of sizes). K units, C labels, N categories, k top images, h x w maps.
ARRAYS = {"thresholds": ("float32", ("K",)), "iou": ("float64", ("K", "C")),
          "intersection": ("int64", ("K", "C")), "activation": ("int64", ("K", "N")),
          "label_count": ("int64", ("C",)), "activation_total": ("int64", ("K",)),
          "label_category": ("int64", ("C",)), "topk_index": ("int64", ("K", "k")),
          "topk_values": ("float32", ("K", "k")), "topk_maps": ("float32", ("K", "k", "h", "w")),
          "minimum": ("float32", ("K",)), "maximum": ("float32", ("K",)), "ties": ("int64", ("K",))}
MAX_IMAGES = 2 ** 40   # more images than any dataset holds: a bigger number is a damaged file
MAX_SIZE = 2 ** 31     # any one dimension of an array


def encode(a: np.ndarray, dtype: str) -> dict:
    a = np.ascontiguousarray(np.asarray(a), dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def layer_data(ld) -> dict:
    """What LayerDissection.to_dict adds under "data": everything a LayerDissection holds."""
    arrays = {name: None if getattr(ld, name) is None else encode(getattr(ld, name), dtype)
              for name, (dtype, _) in ARRAYS.items()}
    return {"images": int(ld.images), "label_names": list(ld.label_names), "categories": list(ld.categories),
            "image_paths": list(ld.image_paths), "arrays": arrays}


def _decode(v, name: str, dtype: str, shape: tuple, where: str) -> np.ndarray:
    if not isinstance(v, dict) or set(v) != {"dtype", "shape", "base64"}:
        raise ValueError(f"{where}: data.arrays.{name} must be an object with dtype, shape and base64")
    if v["dtype"] != dtype:
        raise ValueError(f"{where}: data.arrays.{name} must have dtype {dtype}, got {v['dtype']!r:.40}")
    if v["shape"] != list(shape):
        raise ValueError(f"{where}: data.arrays.{name} must have shape {list(shape)}, got {v['shape']!r:.80}")
    if not isinstance(v["base64"], str):
        raise ValueError(f"{where}: data.arrays.{name}.base64 must be a string")
    try:
        raw = base64.b64decode(v["base64"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{where}: data.arrays.{name}.base64 is not valid base64") from None
    item = np.dtype(dtype).itemsize
    if len(raw) != math.prod(shape) * item:
        raise ValueError(f"{where}: data.arrays.{name} holds {len(raw)} bytes, its shape {list(shape)} needs "
                         f"{math.prod(shape) * item}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def _size(v, name: str, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SIZE:
        raise ValueError(f"{where}: {name} must be an int in [0, {MAX_SIZE}], got {v!r:.80}")
    return v


def _strings(v, name: str, where: str, distinct: bool = False) -> list:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"{where}: data.{name} must be a list of strings")
    if distinct and len(set(v)) != len(v):
        raise ValueError(f"{where}: data.{name} must be distinct, got {v!r:.200}")
    return list(v)


def _check(ok, name: str, what: str, where: str) -> None:
    if not bool(np.all(ok)):
        raise ValueError(f"{where}: data.arrays.{name} must be {what}")


def read_layer_data(data, layer: str, settings: dict, where: str) -> dict:
    """The LayerDissection fields (keyword arguments) from a layer's "data", every one checked:
    shapes agree (K from the thresholds, C from the label names, N from the categories, k, h and w
    from the top-k maps), counts >= 0, IoUs in [0, 1], thresholds and top-k values not NaN, top-k
    indices -1 or an image, label categories -1 or a category, image paths relative and inside
    the dataset's images/ folder. Names are kept as strings (data)."""
    from unitscope.data.broden_meta import safe_relpath

    if not isinstance(data, dict) or set(data) != {"images", "label_names", "categories", "image_paths", "arrays"}:
        raise ValueError(f"{where}: 'data' must be an object with images, label_names, categories, image_paths "
                         "and arrays")
    images = data["images"]
    if not isinstance(images, int) or isinstance(images, bool) or not 0 <= images <= MAX_IMAGES:
        raise ValueError(f"{where}: data.images must be an int in [0, {MAX_IMAGES}], got {images!r:.80}")
    label_names = _strings(data["label_names"], "label_names", where)
    categories = _strings(data["categories"], "categories", where, distinct=True)
    paths = _strings(data["image_paths"], "image_paths", where)
    if len(paths) not in (0, images):
        raise ValueError(f"{where}: data.image_paths must list the {images} images (or none), got {len(paths)}")
    for p in paths:
        try:
            ok = safe_relpath(p, "") == p
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{where}: data.image_paths holds {p!r:.80}, not a plain path inside the dataset's images/")
    arrays = data["arrays"]
    if not isinstance(arrays, dict) or set(arrays) != set(ARRAYS):
        raise ValueError(f"{where}: data.arrays must hold exactly {sorted(ARRAYS)}")
    maps = arrays["topk_maps"]
    shape = maps.get("shape") if isinstance(maps, dict) else None
    if not isinstance(shape, list) or len(shape) != 4:
        raise ValueError(f"{where}: data.arrays.topk_maps must have a shape [K, k, h, w], got {shape!r:.80}")
    thr = arrays["thresholds"].get("shape") if isinstance(arrays["thresholds"], dict) else None
    if not isinstance(thr, list) or len(thr) != 1:
        raise ValueError(f"{where}: data.arrays.thresholds must have a shape [K], got {thr!r:.80}")
    sizes = {"K": _size(thr[0], "K", where), "C": len(label_names), "N": len(categories),
             "k": _size(shape[1], "k", where), "h": _size(shape[2], "h", where), "w": _size(shape[3], "w", where)}
    if sizes["K"] < 1 or sizes["h"] < 1 or sizes["w"] < 1:
        raise ValueError(f"{where}: K, h and w must be >= 1, got {sizes}")
    out: dict = {}
    for name, (dtype, dims) in ARRAYS.items():
        if name == "ties" and arrays[name] is None:
            out[name] = None  # unknown (a run resumed from an older checkpoint)
            continue
        out[name] = _decode(arrays[name], name, dtype, tuple(sizes[d] for d in dims), where)
    _check(~np.isnan(out["thresholds"]), "thresholds", "numbers or +-inf, not NaN", where)
    _check((out["iou"] >= 0) & (out["iou"] <= 1), "iou", "in [0, 1]", where)
    for name in ("intersection", "activation", "label_count", "activation_total", "ties"):
        if out[name] is not None:
            _check(out[name] >= 0, name, "counts >= 0", where)
    _check(out["intersection"] <= out["label_count"][None, :], "intersection", "at most label_count", where)
    _check((out["label_category"] >= -1) & (out["label_category"] < sizes["N"]), "label_category",
           f"-1 or a category in [0, {sizes['N']})", where)
    index = out["topk_index"]
    _check((index == -1) | ((index >= 0) & (index < images)), "topk_index", f"-1 or an image in [0, {images})", where)
    _check(~np.isnan(out["topk_values"]), "topk_values", "numbers or -inf (empty), not NaN", where)
    if settings.get("images", images) != images:
        raise ValueError(f"{where}: settings.images {settings['images']} differs from data.images {images}")
    return dict(out, layer=layer, images=images, label_names=label_names, categories=categories,
                image_paths=paths, settings=settings)
