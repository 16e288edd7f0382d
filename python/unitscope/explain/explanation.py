"""The result of explain(): contributions of units, concepts and categories to one prediction, a
plain-text summary and an HTML page (names come from a dataset: they are escaped, never markup)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unitscope._checks import IOU_THRESHOLD
from unitscope._html import esc, page
from unitscope.explain.concepts import NO_CONCEPT


@dataclass
class UnitContribution:
    """One unit k: contribution alpha_k * sum(A_k); share = contribution / the sum of the positive
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
    output); predicted / predicted_name; contributions (float64[K]): every unit's contribution, signed,
    which sum to `total`, the sum of the Grad-CAM map (over the layer's positions) before its ReLU: at
    the model's CAM layer, `logit` (the target's score) minus the classifier's bias; positive_total and
    negative_total split it; units: the `top` highest positive contributors (UnitContribution); concepts,
    categories: all units summed per concept and per category (ConceptContribution), largest
    contribution first; 'no concept' holds the units that detect nothing above iou_threshold;
    close_concepts: the dissection's concepts whose names share a word with the target's name (empty:
    the dataset knows nothing like the class, and the concepts named are only the nearest it has).
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
    logit: float = float("nan")
    close_concepts: list = field(default_factory=list)

    @property
    def positive_total(self) -> float:
        """Sum of the positive contributions (the denominator of every share)."""
        c = np.asarray(self.contributions)
        return float(c[c > 0].sum())

    @property
    def negative_total(self) -> float:
        """Sum of the negative contributions: total = positive_total + negative_total."""
        c = np.asarray(self.contributions)
        return float(c[c < 0].sum())

    def contributors(self, groups) -> list:
        """The groups (concepts or categories) that contributed positively with a share of at least
        0.05% (what shows as 0.1% or more), largest first."""
        return [g for g in groups if g.contribution > 0 and g.share >= 0.0005]

    def warning(self) -> str:
        """'' when the dissection knows a concept close to the target class, else a sentence saying
        the concepts named are only the nearest of the dataset's concepts."""
        if self.close_concepts:
            return ""
        return (f"The dissection's dataset has no concept close to {self.target_name!r}: the concepts below are "
                f"the nearest of these concepts, not a finding that the model sees {self.target_name!r} as them.")

    def summary(self, n: int = 5) -> str:
        """One paragraph: the class explained and the n concepts that contributed most."""
        what = f"predicted {self.target_name!r} (p={self.probability:.2f})"
        if self.target != self.predicted:
            what = (f"explaining {self.target_name!r} (p={self.probability:.2f}; predicted "
                    f"{self.predicted_name!r})")
        parts = []
        for c in self.contributors(self.concepts):
            if c.name == NO_CONCEPT:
                continue
            units = f", {len(c.units)} units" if len(c.units) > 1 else ""
            parts.append(f"{c.name} ({c.category}{units}, {100 * c.share:.0f}%)")
            if len(parts) == n:
                break
        none = next((c for c in self.concepts if c.name == NO_CONCEPT and c.contribution > 0), None)
        tail = f"; units with no concept gave {100 * none.share:.0f}% of the positive sum" if none is not None else ""
        found = ", ".join(parts) if parts else "no dissected concept contributed positively"
        what_found = "the nearest of its concepts" if not self.close_concepts else "they detect"
        return f"{what}; the units of {self.layer} that contributed most ({what_found}): {found}{tail}"

    __str__ = summary

    def html_fragment(self, directory, prefix: str = "") -> str:
        """Write this explanation's images into `directory` and return HTML that shows them, with
        image addresses `prefix/name` (prefix: `directory` as seen from the page)."""
        from unitscope import viz

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        src = lambda name: esc(f"{prefix}/{name}" if prefix else name)  # noqa: E731

        def img(array, name, alt, width):
            viz.save_image(array, directory / name)
            size = f' width="{width}"' if width else ""
            return f'<img src="{src(name)}" alt="{esc(alt)}"{size}>'

        rows = []
        with_fv = any(u.featviz is not None for u in self.units)  # no empty column
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
                        + f"<br><small>fires on {100 * u.coverage:.0f}%</small></td>"
                        + (f"<td>{fv}</td>" if with_fv else "") + f"<td>{top}</td></tr>")

        def table(groups, title, with_category):
            cat = lambda c: f"<td>{esc(c.category)}</td>" if with_category else ""  # noqa: E731
            body = "".join(f"<tr><td>{esc(c.name)}</td>{cat(c)}<td>{len(c.units)}</td>"
                           f"<td>{c.contribution:.4g}</td><td>{100 * c.share:.1f}%</td></tr>"
                           for c in self.contributors(groups)[:12])
            return (f"<table class=groups><caption>{title}</caption><tr><th>name</th>"
                    f"{'<th>category</th>' if with_category else ''}<th>units</th>"
                    f"<th>contribution</th><th>share</th></tr>{body}</table>")

        warning = self.warning()
        logit = "" if self.logit != self.logit else f" (the logit here: {self.logit:.4g})"
        return (f"<div class=explanation><p>{img(self.image, 'image.png', 'the image', 160)}</p>"
                + (f"<p class=warning>&#9888; {esc(warning)}</p>" if warning else "")
                + f"<p>{esc(self.summary())}.</p>"
                f"<table><caption>units that contributed most (positive contributions)</caption>"
                f"<tr><th>unit</th><th>concept</th><th>contribution<br>(share)</th>"
                f"<th>where it fires<br>(above its dissection threshold)</th>"
                + ("<th>feature visualization</th>" if with_fv else "")
                + f"<th>top dataset images</th></tr>{''.join(rows)}</table>"
                f"{table(self.concepts, 'per concept (positive contributions)', True)}"
                f"{table(self.categories, 'per category (positive contributions)', False)}"
                f"<p><small>Contributions alpha_k &middot; sum(A_k), with alpha_k the mean gradient of the class "
                f"score over unit k's map (Grad-CAM): positive ones sum to {self.positive_total:.4g}, negative ones "
                f"to {self.negative_total:.4g}; the signed total {self.total:.4g} is the sum of the Grad-CAM map of "
                f"{esc(self.layer)} before its ReLU. At the model's CAM layer (the last feature map, followed only by "
                f"global average pooling and a linear classifier) it equals the class logit minus the classifier's "
                f"bias{logit}. Share = contribution / the positive sum; a unit has a concept when its IoU &gt; "
                f"{self.iou_threshold}.</small></p></div>")

    def to_html(self, path) -> Path:
        """Write a page at `path` (its images go to the folder <path stem>_files beside it); returns path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        files = f"{path.stem}_files"
        body = self.html_fragment(path.parent / files, files)
        title = f"{self.target_name} - {self.layer}"
        path.write_text(page(title, f"<h1>{esc(title)}</h1>{body}", STYLE), encoding="utf-8")
        return path


STYLE = ("table{margin:.6em 0} table.groups{display:inline-table;margin-right:2em;vertical-align:top} "
         "caption{font-weight:bold} .warning{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}")
