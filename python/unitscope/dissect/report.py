"""The HTML report of a dissection (a page per layer: detectors by IoU with their top images, the
activated region outlined, the other units collapsed, and a chart of unique detectors per category)
and compare(). Names are data: HTML-escaped, never mathtext, never a formula in a CSV cell."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unitscope._checks import IOU_THRESHOLD, align_corners
from unitscope._html import esc, page
from unitscope.dissect.names import csv_cell, report_files
from unitscope.models.images import open_image
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
        with open_image(path, what="dataset image") as im:  # header checked first; the stored pixel grid
            cache[path] = np.asarray(im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.uint8)
    return cache[path]


def unit_strip(ld, unit: int, root: Path, cache: dict) -> Image.Image | None:
    """The strip of a LayerDissection's unit's top images (THUMB x THUMB tiles, read from the dataset
    at `root`), the region where each map passes the threshold outlined; None without top images.
    cache: {path: thumbnail} shared between calls."""
    idx = [int(i) for i in ld.topk_index[unit] if i >= 0]
    if not idx:
        return None
    op = ld.settings.get("threshold_op", ">")
    ac = align_corners(ld.settings.get("upsample"))
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
    # names are plain text: parse_math=False keeps a '$' in a name from starting mathtext
    for s, (name, counts) in enumerate(groups.items()):
        xs = np.arange(len(cats)) + s * width
        bars = ax.bar(xs, [counts.get(c, 0) for c in cats], width, label=name)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats, parse_math=False)
    ax.set_ylabel("unique detectors")
    ax.set_title(title, fontsize=10, parse_math=False)
    if len(groups) > 1:
        for text in ax.legend(fontsize=7).get_texts():
            text.set_parse_math(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)




def _unit_row(ld, u, folder, out, root, cache) -> str:
    k = u["unit"]
    strip = unit_strip(ld, k, root, cache)
    img = ""
    if strip is not None:
        strip.save(out / folder / f"unit_{k:04d}.jpg", quality=88)
        img = f'<img src="{folder}/unit_{k:04d}.jpg" alt="unit {k}" loading="lazy">'
    dead = bool(ld.dead[k])
    label = "(dead unit)" if dead else esc(u["label"])
    ties = "" if ld.ties is None else f"{int(ld.ties[k])}" + (" (plateau)" if ld.plateau[k] else "")
    saturated = " (saturated)" if ld.saturated[k] else ""
    return (f'<tr class="{"dead" if dead else ""}"><td>{k}</td><td>{label}</td>'
            f'<td>{esc(u["category"])}</td><td>{u["iou"]:.3f}</td>'
            f'<td>{u["threshold"]:.4g}{saturated}</td><td>{ties}</td><td>{img}</td></tr>')


_HEAD = ("<table><tr><th>unit</th><th>label</th><th>category</th><th>IoU</th><th>threshold</th>"
         '<th title="activations equal to the threshold; plateau: more than a fifth of the top 1 - quantile '
         "share, where the '&gt;' and '&gt;=' masks differ\">ties</th>"
         "<th>top images (activated region outlined)</th></tr>")


def save_report(dissection, directory, *, max_units: int | None = None, dataset_root=None,
                progress: bool = False, back: tuple | None = None) -> Path:
    """Write index.html, a page per layer (<stem>.html: the detectors by IoU with label, category,
    IoU and a strip of top images with the activated region outlined, then the other units in a
    collapsed section), a chart of unique detectors per category (<stem>_unique.png) and the strips
    in a folder per layer; names from report_files() (safe, and every path distinct). Images are
    read from the dataset the dissection ran on (or `dataset_root`). The summary is titled with
    `dissection.name` (the model) when set; `back` (href, text), e.g. ('../index.html', 'the demo'),
    adds a link to the page that leads here. Returns the index.html path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    index_rows: list[str] = []
    cache: dict = {}
    files = report_files(list(dissection.layers))
    for ld in dissection:
        f = files[ld.layer]
        root = Path(dataset_root or ld.settings.get("dataset_root", "."))
        (out / f["units"]).mkdir(exist_ok=True)
        unique = ld.unique_detectors()
        thr = ld.settings.get("iou_threshold", IOU_THRESHOLD)
        _bar_chart(out / f["chart"], {ld.layer: unique}, f"{ld.layer}: unique detectors per category "
                   f"(IoU > {thr})")
        units = ld.units()[: max_units or None]
        detector = {d["unit"] for d in ld.detectors()}
        it = units
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(units, desc=f"report {ld.layer}", unit="unit")
        rows: dict[bool, list[str]] = {True: [], False: []}
        for u in it:
            rows[u["unit"] in detector].append(_unit_row(ld, u, f["units"], out, root, cache))
        n_det = len(detector)
        e = esc
        body = (f"<h1>{e(ld.layer)}</h1><p>{ld.num_units} units, {n_det} detectors (IoU &gt; {e(thr)}), "
                f"{ld.images} images; quantile {e(ld.settings.get('quantile'))}, mask "
                f"{e(ld.settings.get('threshold_op'))} threshold, union '{e(ld.settings.get('union'))}'.</p>"
                f'<img src="{f["chart"]}" alt="chart"><h2>Detectors ({len(rows[True])})</h2>'
                + (_HEAD + "".join(rows[True]) + "</table>" if rows[True] else "<p>none</p>")
                + (f"<details><summary>Other units ({len(rows[False])}, IoU at most {e(thr)})</summary>"
                   + _HEAD + "".join(rows[False]) + "</table></details>" if rows[False] else "")
                + '<p><a href="index.html">all layers</a></p>')
        (out / f["page"]).write_text(page(ld.layer, body), encoding="utf-8")
        cells = "".join(f"<td>{unique[c]}</td>" for c in ld.categories)
        index_rows.append(f'<tr><td><a href="{f["page"]}">{esc(ld.layer)}</a></td>'
                          f"<td>{ld.num_units}</td><td>{n_det}</td>{cells}</tr>")
    cats = next(iter(dissection)).categories if len(dissection) else []
    head = "".join(f"<th>unique {esc(c)}</th>" for c in cats)
    link = f'<p><a href="{esc(back[0])}">&larr; {esc(back[1])}</a></p>' if back else ""
    body = (f"{link}<h1>Network dissection{': ' + esc(dissection.name) if dissection.name else ''}</h1>"
            f"<table><tr><th>layer</th><th>units</th><th>detectors</th>{head}</tr>{''.join(index_rows)}</table>")
    index = out / "index.html"
    index.write_text(page(f"dissection: {dissection.name}" if dissection.name else "dissection", body), encoding="utf-8")
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
        with open(out / "compare.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)  # CRLF lines: a CR or LF inside a name is quoted
            w.writerow(["name", "layer", "units", "detectors"] + [csv_cell(c) for c in self.categories] + ["unique_total"])
            for r in self.rows:
                w.writerow([csv_cell(r["name"]), csv_cell(r["layer"]), r["units"], r["detectors"]]
                           + [r["unique"].get(c, 0) for c in self.categories] + [r["unique_total"]])
        _bar_chart(out / "compare.png", {f"{r['name']}:{r['layer']}": r["unique"] for r in self.rows},
                   "unique detectors per category")
        return out / "compare.png"


def compare(*dissections, names=None, iou_threshold: float | None = None, rule: str = "best") -> Comparison:
    """Several dissections (models or layers) side by side: one row per layer of each; unique
    detectors counted by `rule` (LayerDissection.unique_detectors)."""
    if names is not None and len(names) != len(dissections):
        raise ValueError(f"names must have one entry per dissection ({len(dissections)}), got {len(names)}")
    rows, cats = [], []
    for n, d in enumerate(dissections):
        if not isinstance(getattr(d, "layers", None), dict) or not hasattr(d, "unique_detectors"):
            raise TypeError(f"compare takes Dissection objects, got {type(d).__name__} at position {n}")
        for ld in d:
            unique = ld.unique_detectors(iou_threshold, rule)
            cats += [c for c in ld.categories if c not in cats]
            rows.append({"name": names[n] if names else (d.name or f"#{n}"), "layer": ld.layer, "units": ld.num_units,
                         "detectors": len(ld.detectors(iou_threshold)), "unique": unique,
                         "unique_total": sum(unique.values())})
    return Comparison(rows, cats)
