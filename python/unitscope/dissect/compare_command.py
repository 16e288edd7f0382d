"""`unitscope compare RUN... --out DIR`: dissections saved by `unitscope dissect` side by side on one page:
a table and the paper's stacked bars of detectors and unique detectors per category, for every layer of
every run, and each run's difference from a baseline run (trained vs random, rotated vs not)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from unitscope._html import esc, page
from unitscope.dissect.report import compare
from unitscope.dissect.result import Dissection


def add_arguments(p) -> None:
    from unitscope import cli

    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a dissection.json, a folder holding one (`unitscope dissect --out`), or a folder whose "
                        "subfolders hold one each (taken in name order)")
    p.add_argument("--out", required=True, type=cli.output_dir,
                   help="output folder: compare.html, compare.csv, the charts (*.png)")
    p.add_argument("--names", help="comma-separated display names, one per run (default: each dissection's own "
                                   "name, else its folder's name)")
    p.add_argument("--rule", choices=["best", "category"], default="best",
                   help="unique detectors: 'best' counts each detector unit's best concept once (the paper, "
                        "NetDissect-Lite); 'category' each unit's best concept in every category")
    p.add_argument("--iou-threshold", type=cli.float_in(0, 1),
                   help="IoU above which a unit is a detector (default: each layer's own, as it was dissected)")
    p.add_argument("--baseline", type=cli.positive_int, default=1,
                   help="the run (by position, from 1) the others' differences are taken against")


def find_runs(paths) -> list[Path]:
    """The dissection.json files named by `paths` (files, folders holding one, or folders of such folders)."""
    found = []
    for text in paths:
        p = Path(text)
        if p.is_file():
            found.append(p)
        elif (p / "dissection.json").is_file():
            found.append(p / "dissection.json")
        elif p.is_dir():
            inner = sorted(q / "dissection.json" for q in p.iterdir() if (q / "dissection.json").is_file())
            if not inner:
                raise ValueError(f"RUN {text!r}: no dissection.json in it nor in its subfolders")
            found += inner
        else:
            raise ValueError(f"RUN {text!r} does not exist")
    return found


def _distinct(names: list[str]) -> list[str]:
    out = []
    for n in names:
        name, i = n, 1
        while name in out:
            i += 1
            name = f"{n} ({i})"
        out.append(name)
    return out


def detectors_per_category(ld, iou_threshold=None) -> dict:
    """{category: number of detector units whose best concept is in it}."""
    counts = {c: 0 for c in ld.categories}
    for d in ld.detectors(iou_threshold):
        counts[d["category"]] += 1
    return counts


def _stacked_chart(path: Path, bars: list, categories: list, ylabel: str, title: str) -> None:
    """bars: [(label, {category: count})] -> one stacked bar per entry, a colour per category (the
    paper's figures); names are plain text (no mathtext)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(bars) + 2.5), 4.0))
    xs = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    colors = plt.get_cmap("tab10")
    for ci, cat in enumerate(categories):
        values = np.array([counts.get(cat, 0) for _, counts in bars], dtype=float)
        ax.bar(xs, values, 0.7, bottom=bottom, label=cat, color=colors(ci % 10))
        bottom += values
    for x, total in zip(xs, bottom):
        ax.text(float(x), float(total), f"{int(total)}", ha="center", va="bottom", fontsize=7, parse_math=False)
    tilt = len(bars) > 4 or max((len(label) for label, _ in bars), default=0) > 14
    ax.set_xticks(xs, [label for label, _ in bars], rotation=45 if tilt else 0, ha="right" if tilt else "center",
                  fontsize=7, parse_math=False)
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, parse_math=False)
    if categories:
        for text in ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0)).get_texts():
            text.set_parse_math(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(head: list, rows: list) -> str:
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>")


def _signed(v: int) -> str:
    return f"+{v}" if v > 0 else str(v)


def write_comparison(dissections: list, names: list, out, *, rule: str = "best", iou_threshold=None,
                     baseline: int = 0, sources: list | None = None) -> Path:
    """compare.html (tables, stacked charts, differences from dissections[baseline]), compare.csv and
    compare.png (Comparison.save) in `out`; returns the page's path."""
    if not dissections:
        raise ValueError("dissections must name at least one dissection")
    if not 0 <= baseline < len(dissections):
        raise ValueError(f"baseline must be a run's position in 1..{len(dissections)}, got {baseline + 1}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    comparison = compare(*dissections, names=names, iou_threshold=iou_threshold, rule=rule)
    comparison.save(out)
    cats = comparison.categories
    det = [detectors_per_category(ld, iou_threshold) for d in dissections for ld in d]
    labels = [f"{r['name']}: {r['layer']}" for r in comparison.rows]
    _stacked_chart(out / "unique_stacked.png", list(zip(labels, [r["unique"] for r in comparison.rows])), cats,
                   "unique detectors", f"unique detectors per category (rule '{rule}')")
    _stacked_chart(out / "detectors_stacked.png", list(zip(labels, det)), cats, "detectors",
                   "detector units per category of their best concept")
    thresholds = sorted({ld.settings.get("iou_threshold", 0.04) if iou_threshold is None else iou_threshold
                         for d in dissections for ld in d})
    head = ["run", "layer", "units", "detectors"] + [f"unique {c}" for c in cats] + ["unique total"] \
        + [f"detectors {c}" for c in cats]
    rows = [[r["name"], r["layer"], r["units"], r["detectors"]] + [r["unique"].get(c, 0) for c in cats]
            + [r["unique_total"]] + [dc.get(c, 0) for c in cats] for r, dc in zip(comparison.rows, det)]
    runs = [[n, sources[i] if sources else "", len(d), d.settings.get("images", ""), d.settings.get("quantile", ""),
             d.settings.get("union", ""), d.settings.get("threshold_op", "")] for i, (n, d) in enumerate(zip(names, dissections))]
    body = [f"<h1>Comparing {len(dissections)} dissection{'s' if len(dissections) > 1 else ''}</h1>",
            _table(["run", "file", "layers", "images", "quantile", "union", "mask"], runs),
            f"<p>Detectors: units whose best concept has IoU &gt; {esc(', '.join(f'{t:g}' for t in thresholds))}"
            f"{' (the layers were dissected with different thresholds)' if len(thresholds) > 1 else ''}. "
            f"Unique detectors: rule '{esc(rule)}' "
            + ("(each detector unit's best concept, counted once per concept: the paper's count)." if rule == "best"
               else "(every unit's best concept in each category above the threshold).")
            + ' Table as <a href="compare.csv">compare.csv</a>.</p>',
            _table(head, rows),
            '<h2>Unique detectors per category</h2><img src="unique_stacked.png" alt="unique detectors per category">',
            '<h2>Detectors per category</h2><img src="detectors_stacked.png" alt="detectors per category">']
    if len(dissections) > 1:
        body.append(_differences(comparison, names, baseline, cats))
    path = out / "compare.html"
    path.write_text(page("dissection comparison", "".join(body)), encoding="utf-8")
    return path


def _differences(comparison, names, baseline, cats) -> str:
    """Per run and layer it shares with the baseline run: the change in detectors and unique detectors."""
    by = {(r["name"], r["layer"]): r for r in comparison.rows}
    base = names[baseline]
    rows = []
    for name in names:
        if name == base:
            continue
        for r in comparison.rows:
            if r["name"] != name or (base, r["layer"]) not in by:
                continue
            b = by[(base, r["layer"])]
            rows.append([name, r["layer"], f"{r['detectors']} ({_signed(r['detectors'] - b['detectors'])})"]
                        + [_signed(r["unique"].get(c, 0) - b["unique"].get(c, 0)) for c in cats]
                        + [f"{r['unique_total']} ({_signed(r['unique_total'] - b['unique_total'])})"])
    head = ["run", "layer", "detectors (change)"] + [f"unique {c} change" for c in cats] + ["unique total (change)"]
    text = (f"<h2>Differences from {esc(base)}</h2><p>For each layer a run shares with the baseline "
            f"{esc(base)}: its count and, in brackets, the count minus the baseline's.</p>")
    return text + (_table(head, rows) if rows else "<p>No other run has a layer of the same name.</p>")


def run(args) -> int:
    files = find_runs(args.runs)
    dissections = [Dissection.load(f) for f in files]
    if args.names is not None:
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != len(files):
            raise ValueError(f"--names must give one name per run ({len(files)}: "
                             f"{', '.join(str(f) for f in files)}), got {len(names)}")
    else:
        names = [d.name or f.parent.name or str(f) for d, f in zip(dissections, files)]
    if args.baseline > len(files):
        raise ValueError(f"--baseline must be a run's position in 1..{len(files)}, got {args.baseline}")
    page = write_comparison(dissections, _distinct(names), args.out, rule=args.rule,
                            iou_threshold=args.iou_threshold, baseline=args.baseline - 1,
                            sources=[str(f) for f in files])
    print(f"compared {len(files)} dissection(s): {page}")
    return 0
