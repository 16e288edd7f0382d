"""The HTML report of a dissection (a page per layer: units by IoU with their top images, the
activated region outlined, and a chart of unique detectors per category) and compare()."""
from __future__ import annotations

import csv
import html
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unitscope.dissect.result import Dissection, LayerDissection, _safe
from unitscope.reference.bilinear import bilinear_resize

THUMB = 112


def _outlined(img: np.ndarray, amap: np.ndarray, threshold: float, op: str, align_corners: bool) -> Image.Image:
    """The thumbnail (uint8[THUMB, THUMB, 3]) with the region where the upsampled map passes the
    threshold outlined in yellow and the rest dimmed."""
    img = img.astype(np.float32)
    up = bilinear_resize(torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32)), (THUMB, THUMB), align_corners).numpy()
    mask = up > threshold if op == ">" else up >= threshold
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    out = np.where(mask[..., None], img, img * 0.6)
    out[edge] = (255, 230, 0)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _thumb(path: Path, cache: dict) -> np.ndarray:
    if path not in cache:
        if len(cache) > 2048:  # thumbnails of 37 KiB each
            cache.clear()
        with Image.open(path) as im:
            cache[path] = np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.BILINEAR), dtype=np.uint8)
    return cache[path]


def _strip(ld: LayerDissection, unit: int, root: Path, cache: dict) -> Image.Image | None:
    idx = [int(i) for i in ld.topk_index[unit] if i >= 0]
    if not idx:
        return None
    op = ld.settings.get("threshold_op", ">")
    ac = ld.settings.get("upsample") == "bilinear-align-corners"
    tiles = []
    for slot, i in enumerate(idx):
        img = _thumb(root / "images" / ld.image_paths[i], cache)
        tiles.append(_outlined(img, ld.topk_maps[unit, slot], float(ld.thresholds[unit]), op, ac))
    strip = Image.new("RGB", (len(tiles) * (THUMB + 2), THUMB), (255, 255, 255))
    for t, tile in enumerate(tiles):
        strip.paste(tile, (t * (THUMB + 2), 0))
    return strip


def _bar_chart(path: Path, groups: dict, title: str) -> None:
    """groups: {series name: {category: count}} -> grouped bar chart PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    cats = list(next(iter(groups.values())).keys()) if groups else []
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(cats) * max(1, len(groups)) ** 0.5), 3.2))
    width = 0.8 / max(1, len(groups))
    for s, (name, counts) in enumerate(groups.items()):
        xs = np.arange(len(cats)) + s * width
        bars = ax.bar(xs, [counts.get(c, 0) for c in cats], width, label=name)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats)
    ax.set_ylabel("unique detectors")
    ax.set_title(title, fontsize=10)
    if len(groups) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}}
.dead{{color:#999}}</style></head><body>{body}</body></html>"""


def save_report(dissection: Dissection, directory, *, max_units: int | None = None, dataset_root=None,
                progress: bool = False) -> Path:
    """Write index.html, a page per layer (<layer>.html, units sorted by IoU with label, category,
    IoU and a strip of top images with the activated region outlined) and a chart of unique
    detectors per category (<layer>_unique.png). Images are read from the dataset the dissection
    ran on (or `dataset_root`). Returns the index.html path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    index_rows, cache = [], {}
    for ld in dissection:
        name = _safe(ld.layer)
        root = Path(dataset_root or ld.settings.get("dataset_root", "."))
        (out / name).mkdir(exist_ok=True)
        unique = ld.unique_detectors()
        _bar_chart(out / f"{name}_unique.png", {ld.layer: unique}, f"{ld.layer}: unique detectors per category "
                   f"(IoU > {ld.settings.get('iou_threshold', 0.04)})")
        units = ld.units()[: max_units or None]
        if progress:
            from tqdm.auto import tqdm
            units = tqdm(units, desc=f"report {ld.layer}", unit="unit")
        rows = []
        for u in units:
            k = u["unit"]
            strip = _strip(ld, k, root, cache)
            img = ""
            if strip is not None:
                strip.save(out / name / f"unit_{k:04d}.jpg", quality=88)
                img = f'<img src="{html.escape(name)}/unit_{k:04d}.jpg" alt="unit {k}">'
            dead = bool(ld.dead[k])
            label = "(dead unit)" if dead else html.escape(u["label"])
            rows.append(f'<tr class="{"dead" if dead else ""}"><td>{k}</td><td>{label}</td>'
                        f'<td>{html.escape(u["category"])}</td><td>{u["iou"]:.3f}</td>'
                        f'<td>{u["threshold"]:.4g}</td><td>{img}</td></tr>')
        n_det = len(ld.detectors())
        body = (f"<h1>{html.escape(ld.layer)}</h1><p>{ld.num_units} units, {n_det} detectors (IoU &gt; "
                f"{ld.settings.get('iou_threshold', 0.04)}), {ld.images} images; quantile "
                f"{ld.settings.get('quantile')}, mask {html.escape(str(ld.settings.get('threshold_op')))} threshold, "
                f"union '{ld.settings.get('union')}'.</p><img src=\"{html.escape(name)}_unique.png\" alt=\"chart\">"
                "<table><tr><th>unit</th><th>label</th><th>category</th><th>IoU</th><th>threshold</th>"
                "<th>top images (activated region outlined)</th></tr>" + "".join(rows) + "</table>"
                '<p><a href="index.html">all layers</a></p>')
        (out / f"{name}.html").write_text(_PAGE.format(title=html.escape(ld.layer), body=body), encoding="utf-8")
        cells = "".join(f"<td>{unique[c]}</td>" for c in ld.categories)
        index_rows.append(f'<tr><td><a href="{html.escape(name)}.html">{html.escape(ld.layer)}</a></td>'
                          f"<td>{ld.num_units}</td><td>{n_det}</td>{cells}</tr>")
    cats = next(iter(dissection)).categories if len(dissection) else []
    head = "".join(f"<th>unique {html.escape(c)}</th>" for c in cats)
    body = (f"<h1>Network dissection{': ' + html.escape(dissection.name) if dissection.name else ''}</h1>"
            f"<table><tr><th>layer</th><th>units</th><th>detectors</th>{head}</tr>{''.join(index_rows)}</table>")
    index = out / "index.html"
    index.write_text(_PAGE.format(title="dissection", body=body), encoding="utf-8")
    return index


class Comparison:
    """Rows of compare(): name, layer, units, detectors, unique detectors per category and total."""

    def __init__(self, rows: list[dict], categories: list[str]):
        self.rows, self.categories = rows, categories

    def table(self) -> str:
        head = ["name", "layer", "units", "detectors"] + [f"unique {c}" for c in self.categories] + ["unique total"]
        body = [[r["name"], r["layer"], r["units"], r["detectors"]] + [r["unique"].get(c, 0) for c in self.categories]
                + [r["unique_total"]] for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
        return "\n".join([fmt(head)] + [fmt(r) for r in body])

    __str__ = table

    def save(self, directory) -> Path:
        """compare.csv and compare.png (grouped bars of unique detectors per category)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "compare.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["name", "layer", "units", "detectors"] + self.categories + ["unique_total"])
            for r in self.rows:
                w.writerow([r["name"], r["layer"], r["units"], r["detectors"]]
                           + [r["unique"].get(c, 0) for c in self.categories] + [r["unique_total"]])
        _bar_chart(out / "compare.png", {f"{r['name']}:{r['layer']}": r["unique"] for r in self.rows},
                   "unique detectors per category")
        return out / "compare.png"


def compare(*dissections, names=None, iou_threshold: float | None = None, rule: str = "category") -> Comparison:
    """Several dissections (models or layers) side by side: one row per layer of each."""
    if names is not None and len(names) != len(dissections):
        raise ValueError(f"names must have one entry per dissection ({len(dissections)}), got {len(names)}")
    rows, cats = [], []
    for n, d in enumerate(dissections):
        if not isinstance(d, Dissection):
            raise TypeError(f"compare takes Dissection objects, got {type(d).__name__} at position {n}")
        for ld in d:
            unique = ld.unique_detectors(iou_threshold, rule)
            cats += [c for c in ld.categories if c not in cats]
            rows.append({"name": names[n] if names else (d.name or f"#{n}"), "layer": ld.layer, "units": ld.num_units,
                         "detectors": len(ld.detectors(iou_threshold)), "unique": unique,
                         "unique_total": sum(unique.values())})
    return Comparison(rows, cats)
