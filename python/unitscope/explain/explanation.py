"""The result of explain(): contributions of units, concepts and categories to one prediction, a
plain-text summary and an HTML page (names come from a dataset: they are escaped, never markup)."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unitscope._checks import IOU_THRESHOLD
from unitscope.explain.concepts import NO_CONCEPT


@dataclass
class UnitContribution:
    """One unit k: contribution alpha_k * mean(A_k); share = contribution / the sum of the positive
    contributions of all units; its concept (label, category, IoU; label 'no concept' and category ''
    when IoU <= the detector threshold); activation (float32[H, W]): its map upsampled bilinearly over
    the image; mask (bool[H, W]): where it passes its dissection threshold ("where it fires as a
    detector"); featviz, top_images (uint8/float (h, w, 3) arrays or None)."""
    unit: int
    contribution: float
    share: float
    label: str
    category: str
    iou: float
    threshold: float
    activation: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    featviz: np.ndarray | None = field(default=None, repr=False)
    top_images: np.ndarray | None = field(default=None, repr=False)

    @property
    def coverage(self) -> float:
        """Fraction of the image where the unit fires above its threshold."""
        return float(self.mask.mean())


@dataclass
class ConceptContribution:
    """A concept (name = label, or a category's name) and the units mapped to it, in ranked order;
    contribution = the sum of theirs, share = the sum of their shares."""
    name: str
    category: str
    units: list
    contribution: float
    share: float


@dataclass
class Explanation:
    """Why the model gave `target` for one image, in terms of the dissected concepts of `layer`.

    image (float64[H, W, 3] in [0, 1]); target / target_name / probability (softmax of the model
    output); predicted / predicted_name; contributions (float64[K]): every unit's contribution, which
    sum to `total`, the spatial mean of the Grad-CAM map (at layer resolution) before its ReLU; units:
    the `top` highest-contributing units (UnitContribution); concepts, categories: all units summed
    per concept and per category (ConceptContribution), largest contribution first; 'no concept' holds
    the units that detect nothing above iou_threshold.
    """
    image: np.ndarray = field(repr=False)
    layer: str
    target: int
    target_name: str
    probability: float
    predicted: int
    predicted_name: str
    contributions: np.ndarray = field(repr=False)
    total: float
    units: list
    concepts: list = field(repr=False)
    categories: list = field(repr=False)
    iou_threshold: float = IOU_THRESHOLD

    def summary(self, n: int = 5) -> str:
        """One paragraph: the class explained and the n concepts that contributed most."""
        what = f"predicted {self.target_name!r} (p={self.probability:.2f})"
        if self.target != self.predicted:
            what = (f"explaining {self.target_name!r} (p={self.probability:.2f}; predicted "
                    f"{self.predicted_name!r})")
        parts = []
        for c in self.concepts:
            if c.name == NO_CONCEPT or c.contribution <= 0:
                continue
            units = f", {len(c.units)} units" if len(c.units) > 1 else ""
            parts.append(f"{c.name} ({c.category}{units}, {100 * c.share:.0f}%)")
            if len(parts) == n:
                break
        none = next((c for c in self.concepts if c.name == NO_CONCEPT), None)
        tail = f"; units with no concept: {100 * none.share:.0f}%" if none is not None else ""
        found = ", ".join(parts) if parts else "no dissected concept contributed positively"
        return f"{what}; the units of {self.layer} that contributed most detect: {found}{tail}"

    __str__ = summary

    def html_fragment(self, directory, prefix: str = "") -> str:
        """Write this explanation's images into `directory` and return HTML that shows them, with
        image addresses `prefix/name` (prefix: `directory` as seen from the page)."""
        from unitscope import viz

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        esc = html.escape
        src = lambda name: esc(f"{prefix}/{name}" if prefix else name)  # noqa: E731

        def img(array, name, alt, width):
            viz.save_image(array, directory / name)
            size = f' width="{width}"' if width else ""
            return f'<img src="{src(name)}" alt="{esc(alt)}"{size}>'

        rows = []
        for u in self.units:
            concept = esc(u.label) + (f" <small>({esc(u.category)}, IoU {u.iou:.3f})</small>" if u.category else "")
            fv = img(u.featviz, f"unit{u.unit}_featviz.png", f"feature visualization of unit {u.unit}", 112) \
                if u.featviz is not None else ""
            top = img(u.top_images, f"unit{u.unit}_top.png", f"top dataset images of unit {u.unit}", 456) \
                if u.top_images is not None else ""
            rows.append(f"<tr><td>{u.unit}</td><td>{concept}</td><td>{u.contribution:.4g}<br><small>"
                        f"{100 * u.share:.1f}%</small></td><td>"
                        + img(viz.outline_mask(self.image, u.mask), f"unit{u.unit}_map.png",
                              f"where unit {u.unit} fires", 160)
                        + f"<br><small>fires on {100 * u.coverage:.0f}%</small></td><td>{fv}</td><td>{top}</td></tr>")

        def table(groups, title, with_category):
            cat = lambda c: f"<td>{esc(c.category)}</td>" if with_category else ""  # noqa: E731
            body = "".join(f"<tr><td>{esc(c.name)}</td>{cat(c)}<td>{len(c.units)}</td>"
                           f"<td>{c.contribution:.4g}</td><td>{100 * c.share:.1f}%</td></tr>" for c in groups[:12])
            return (f"<table class=groups><caption>{title}</caption><tr><th>name</th>"
                    f"{'<th>category</th>' if with_category else ''}<th>units</th>"
                    f"<th>contribution</th><th>share</th></tr>{body}</table>")

        return (f"<div class=explanation><p>{img(self.image, 'image.png', 'the image', 160)}</p>"
                f"<p>{esc(self.summary())}.</p>"
                f"<table><tr><th>unit</th><th>concept</th><th>contribution<br>(share)</th>"
                f"<th>where it fires<br>(above its dissection threshold)</th><th>feature visualization</th>"
                f"<th>top dataset images</th></tr>{''.join(rows)}</table>"
                f"{table(self.concepts, 'per concept', True)}{table(self.categories, 'per category', False)}"
                f"<p><small>Contributions alpha_k &middot; mean(A_k) sum to {self.total:.4g}, the spatial mean of "
                f"the Grad-CAM map of {esc(self.layer)} before its ReLU; share = contribution / the sum of the "
                f"positive contributions; a unit has a concept when its IoU &gt; {self.iou_threshold}.</small></p>"
                "</div>")

    def to_html(self, path) -> Path:
        """Write a page at `path` (its images go to the folder <path stem>_files beside it); returns path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        files = f"{path.stem}_files"
        body = self.html_fragment(path.parent / files, files)
        path.write_text(PAGE.format(title=html.escape(f"{self.target_name} - {self.layer}"), body=body),
                        encoding="utf-8")
        return path


STYLE = ("body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse;margin:.6em 0}"
         "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}"
         "table.groups{display:inline-table;margin-right:2em;vertical-align:top} caption{font-weight:bold}")
PAGE = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>" + STYLE.replace("{", "{{")
        .replace("}", "}}") + "</style></head><body><h1>{title}</h1>{body}</body></html>")
