"""The findings of Network Dissection (Bau et al., CVPR 2017) as a benchmark of unitscope itself, on the
generated concept dataset: trained vs random EfficientNet-Lite0 across depth, the rotation curve, the
layer progression by category, and Lite0/1/2. Every dissection runs through `unitscope benchmark` with a
TOML spec written here (resumable: a re-run reads finished entries back and recomputes nothing); the
tables are printed as markdown and written with the raw counts to benchmarks/out/paper_findings.json.

    python benchmarks/paper_findings.py              # 300 images, 5 Lite0 layers (about 15-25 min on 2 busy cores)
    python benchmarks/paper_findings.py --quick      # 40 images, 2 layers, alphas 0/0.5/1, heads: a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# numpy's OpenBLAS with one thread per core thrashes on a busy machine: random_rotation(1280, 0.5)'s
# eig/QR/SVD took 118 s with its default threads against about 6 s with one (set before numpy loads)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

import unitscope  # noqa: E402
from unitscope import cli, models  # noqa: E402
from unitscope._progress import progress_bar  # noqa: E402
from unitscope.data import BrodenDataset, collate_broden, make_concept_dataset  # noqa: E402
from unitscope.dissect import Dissection, random_rotation  # noqa: E402
from unitscope.dissect.compare_command import detectors_per_category, write_comparison  # noqa: E402

HERE = Path(__file__).resolve().parent
HEAD = "_swish@1"  # the head's ReLU6 (1280 units) in every Lite model; `_swish@0` is the stem
# activated layers spanning Lite0's depth: blocks 1 and 3 (56x56, 28x28), 6 and 10 (14x14), the head (7x7)
LITE0_LAYERS = ["_blocks.1._swish@1", "_blocks.3._swish@1", "_blocks.6._swish@1", "_blocks.10._swish@1", HEAD]
QUICK_LAYERS = ["_blocks.6._swish@1", HEAD]
# the same place in each model: the last block of stage 5 (Lite0 has 16 blocks, Lite1 and Lite2 have 21)
MIDDLE = {"efficientnet_lite0": "_blocks.10._swish@1", "efficientnet_lite1": "_blocks.14._swish@1",
          "efficientnet_lite2": "_blocks.14._swish@1"}
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
QUICK_ALPHAS = [0.0, 0.5, 1.0]
RELU6_MAX = 6.0  # a ReLU6 unit whose 0.995 quantile is 6.0 is saturated: with '>' its mask is always empty
EARLY_CATS, LATE_CATS = ("color", "texture"), ("object", "part", "scene")


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string of these names and paths is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def write_spec(path: Path, spec: dict) -> None:
    """A benchmark spec as TOML: [dataset], [settings], [[models]], [[transforms]]."""
    lines = []
    for table in ("dataset", "settings"):
        lines += [f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in spec[table].items()] + [""]
    for array in ("models", "transforms"):
        for item in spec.get(array, []):
            lines += [f"[[{array}]]"] + [f"{k} = {toml_value(v)}" for k, v in item.items()] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


def plan(args, dataset: Path) -> dict:
    """{group: spec}: one `unitscope benchmark` run each, all on the one generated dataset."""
    settings = {"batch_size": args.batch_size, "num_workers": args.workers, "compile": False}
    data = {"path": str(dataset)}
    depth = QUICK_LAYERS if args.quick else LITE0_LAYERS
    lite0 = "efficientnet_lite0"
    rot_layers = [HEAD] if args.quick else [MIDDLE[lite0], HEAD]
    groups = {
        "depth": {"dataset": data, "settings": settings, "models": [{"name": "lite0", "model": lite0, "layers": depth}] + [
            {"name": f"lite0-random{s}", "model": lite0, "pretrained": False, "seed": s, "layers": depth}
            for s in args.random_seeds]},
        "rotation": {"dataset": data, "settings": settings,
                     "models": [{"name": "lite0", "model": lite0, "layers": rot_layers}],
                     "transforms": [{"name": f"alpha{a:g}", "rotation": a, "seed": args.seed} for a in args.alphas]},
    }
    for variant in ("efficientnet_lite1", "efficientnet_lite2"):  # each at its own input size (images resized)
        size = models.load(variant, pretrained=False).input_size[0]
        groups[variant.replace("efficientnet_", "")] = {
            "dataset": dict(data, resolution=size), "settings": settings,
            "models": [{"name": variant.replace("efficientnet_", ""), "model": variant,
                        "layers": [HEAD] if args.quick else [MIDDLE[variant], HEAD]}]}
    return groups


def run_groups(groups: dict, work: Path, quiet: bool) -> dict:
    """Run `unitscope benchmark` for each group; {group: {entry name: Dissection}} read back from disk
    (so a re-run and a first run give the same objects), with each group's wall time."""
    results, seconds = {}, {}
    for group in progress_bar(list(groups), desc="paper findings: benchmark groups", unit="group"):
        spec = work / f"{group}.toml"
        write_spec(spec, groups[group])
        t = time.perf_counter()
        rc = cli.main(["benchmark", str(spec), "--out", str(work / group)] + (["--quiet"] if quiet else []))
        if rc != 0:
            raise SystemExit(f"paper_findings: `unitscope benchmark {spec}` failed with exit status {rc}")
        seconds[group] = round(time.perf_counter() - t, 1)
        runs = {}
        for entry in sorted((work / group / "runs").glob("*/entry.json")):
            name = json.loads(entry.read_text(encoding="utf-8"))["entry"]["name"]
            runs[name] = Dissection.load(entry.parent)
        results[group] = runs
    return {"runs": results, "seconds": seconds}


def summary(ld, rule: str) -> dict:
    """One layer's counts: detectors and unique detectors per category, and saturated units."""
    det = detectors_per_category(ld)
    uniq = ld.unique_detectors(rule=rule)
    total = sum(det.values())
    return {"units": ld.num_units, "detectors": total, "detectors_per_category": det,
            "detector_share": {c: round(n / total, 3) if total else 0.0 for c, n in det.items()},
            "unique": sum(uniq.values()), "unique_per_category": uniq,
            # Dissection.load does not keep each unit's maximum, so `saturated` is read off the threshold:
            # a ReLU6 unit with threshold 6.0 has its maximum there too (meaningless after a rotation)
            "threshold_at_relu6_max": int((ld.thresholds == RELU6_MAX).sum())}


def same_units(a, b) -> bool:
    """Whether two dissections of a layer agree unit by unit (threshold, best label, best IoU)."""
    return bool((a.thresholds == b.thresholds).all() and (a.best_label == b.best_label).all()
                and (a.best_iou == b.best_iou).all())


def readout_check(dataset: Path, seed: int, images: int, alphas: list) -> dict:
    """The paper's point that a rotation leaves the representation's power unchanged, checked on the
    real network: the head rotated by R and read by the classifier with weights W R^T gives the
    model's own logits, for every alpha (max abs difference of logits, top-1 agreement)."""
    lm = models.load("efficientnet_lite0")
    ds = BrodenDataset(dataset).with_fields("image")
    batch = collate_broden([ds[i] for i in range(min(images, len(ds)))])["image"]
    captured = {}
    hook = lm.model._avg_pooling.register_forward_pre_hook(lambda m, a: captured.update(head=a[0]))
    try:
        with torch.no_grad():
            logits = lm.model(lm.preprocess(batch))
    finally:
        hook.remove()
    head, fc = captured["head"], lm.model._fc
    out = {}
    for a in alphas:
        rot = random_rotation(head.shape[1], a, seed)
        R = torch.as_tensor(rot.matrix, dtype=torch.float32)
        with torch.no_grad():
            z = torch.nn.functional.adaptive_avg_pool2d(rot(head), 1).flatten(1)
            rotated = torch.nn.functional.linear(z, fc.weight @ R.T, fc.bias)
        out[f"{a:g}"] = {"max_abs_logit_diff": float((rotated - logits).abs().max()),
                         "top1_agree": float((rotated.argmax(1) == logits.argmax(1)).float().mean())}
    return {"images": int(batch.shape[0]), "alphas": out}


def findings(runs: dict, args, rule: str) -> dict:
    depth = QUICK_LAYERS if args.quick else LITE0_LAYERS
    trained, seeds = runs["depth"]["lite0"], args.random_seeds
    tvr = {layer: {"trained": summary(trained[layer], rule),
                   "random": summary(runs["depth"][f"lite0-random{seeds[0]}"][layer], rule),
                   "random_seeds": {s: summary(runs["depth"][f"lite0-random{s}"][layer], rule) for s in seeds}}
           for layer in depth}
    rot_runs = runs["rotation"]
    rotation = {}
    for layer in rot_runs["lite0"].layers:
        curve = {f"{a:g}": summary(rot_runs[f"lite0+alpha{a:g}"][layer], rule) for a in args.alphas}
        uniq = [curve[f"{a:g}"]["unique"] for a in args.alphas]
        rotation[layer] = {"curve": curve, "unique": uniq, "detectors": [curve[f"{a:g}"]["detectors"] for a in args.alphas],
                           "alpha0_equals_unrotated": same_units(rot_runs["lite0+alpha0"][layer], rot_runs["lite0"][layer]),
                           "unique_falls_alpha0_to_1": uniq[-1] < uniq[0],
                           "unique_nonincreasing": all(x >= y for x, y in zip(uniq, uniq[1:]))}
    lite = {"lite0": {layer: summary(trained[layer], rule) for layer in (MIDDLE["efficientnet_lite0"], HEAD) if layer in depth}}
    for name in ("lite1", "lite2"):
        lite[name] = {layer: summary(ld, rule) for layer, ld in runs[name][name].layers.items()}
    first, last = tvr[depth[0]]["trained"]["detector_share"], tvr[depth[-1]]["trained"]["detector_share"]
    share = lambda s, cats: round(sum(s.get(c, 0.0) for c in cats), 3)  # noqa: E731
    return {
        "trained_vs_random": tvr,
        "random_fewer_unique_at_every_layer": all(r["unique"] < v["trained"]["unique"]
                                                  for v in tvr.values() for r in v["random_seeds"].values()),
        "rotation": rotation,
        "layer_progression": {layer: tvr[layer]["trained"]["detector_share"] for layer in depth},
        "progression": {"early_share_color_texture": {"first": share(first, EARLY_CATS), "head": share(last, EARLY_CATS)},
                        "late_share_object_part_scene": {"first": share(first, LATE_CATS), "head": share(last, LATE_CATS)}},
        "lite": lite,
    }


def _table(head: list, rows: list) -> str:
    return "\n".join(["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def tables(f: dict, cats: list) -> str:
    """The findings as markdown tables (the RESULTS section's)."""
    per = lambda d: " / ".join(str(d[c]) for c in cats)  # noqa: E731
    seeds = "/".join(str(s) for s in next(iter(f["trained_vs_random"].values()))["random_seeds"])
    out = [f"Trained vs random EfficientNet-Lite0 (random seeds {seeds}; per category, of the first: "
           f"{' / '.join(cats)})", ""]
    rows = []
    for layer, v in f["trained_vs_random"].items():
        t, r = v["trained"], v["random"]
        det_r = "/".join(str(x["detectors"]) for x in v["random_seeds"].values())
        uniq_r = "/".join(str(x["unique"]) for x in v["random_seeds"].values())
        rows.append([f"`{layer}`", t["units"], t["threshold_at_relu6_max"], r["threshold_at_relu6_max"],
                     t["detectors"], det_r, t["unique"], uniq_r, per(t["unique_per_category"]),
                     per(r["unique_per_category"])])
    out += [_table(["layer", "units", "sat. trained", "sat. random", "detectors trained", "detectors random",
                    "unique trained", "unique random", "unique per category, trained", "unique per category, random"],
                   rows), ""]
    out += ["Layer progression: share of the trained Lite0's detectors per category", ""]
    out += [_table(["layer"] + cats + ["detectors"],
                   [[f"`{layer}`"] + [f"{s[c]:.2f}" for c in cats] + [f["trained_vs_random"][layer]["trained"]["detectors"]]
                    for layer, s in f["layer_progression"].items()]), ""]
    for layer, v in f["rotation"].items():
        out += [f"Rotation curve at `{layer}` (alpha 0 equals the unrotated run: {v['alpha0_equals_unrotated']})", ""]
        out += [_table(["alpha", "detectors", "unique", f"unique per category ({' / '.join(cats)})"],
                       [[a, c["detectors"], c["unique"], per(c["unique_per_category"])] for a, c in v["curve"].items()]), ""]
    out += ["Lite0 / Lite1 / Lite2 (each at its own input size)", ""]
    out += [_table(["model", "layer", "units", "saturated", "detectors", "unique", f"unique per category ({' / '.join(cats)})"],
                   [[m, f"`{layer}`", s["units"], s["threshold_at_relu6_max"], s["detectors"], s["unique"],
                     per(s["unique_per_category"])] for m, layers in f["lite"].items() for layer, s in layers.items()]), ""]
    return "\n".join(out)


def _seeds(text: str) -> list:
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0, got {text!r}")
    return seeds


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "unitscope": unitscope.__version__, "loadavg_start": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None,
                   help="generated concept images (default: 300, or 40 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 40 images, 2 Lite0 layers, alphas 0, 0.5, 1, heads only (default: the full run)")
    p.add_argument("--out", type=Path, default=HERE / "out", help="folder of paper_findings.json (default: benchmarks/out)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder of the dataset, specs and benchmark runs (default: "
                        "OUT/paper_findings/<images>img[-quick]-seed<seed>; a re-run with the same one recomputes "
                        "nothing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and the rotations (default: 0)")
    p.add_argument("--batch-size", type=int, default=25, help="dissection batch size (default: 25)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per dissection (default: 1)")
    p.add_argument("--random-seeds", type=_seeds, default=None,
                   help="seeds of the randomly initialized Lite0s, comma-separated; the table lists each seed's "
                        "detectors and unique detectors, and the first's per category (default: --seed)")
    p.add_argument("--rule", choices=["best", "category"], default="best", help="unique-detector counting rule (default: best, the paper's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: shown)")
    args = p.parse_args(argv)
    images = args.images or (40 if args.quick else 300)
    args.alphas = QUICK_ALPHAS if args.quick else ALPHAS
    args.random_seeds = args.random_seeds or [args.seed]
    if images < 10:
        p.error(f"--images must be at least 10, got {images}")
    if args.batch_size < 1 or args.workers < 0:
        p.error(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    work = args.work or args.out / "paper_findings" / f"{images}img{'-quick' if args.quick else ''}-seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    t0 = time.perf_counter()
    dataset = work / "dataset"
    if not (dataset / "index.csv").is_file():
        make_concept_dataset(dataset, images, size=224, seed=args.seed, progress=not args.quiet)
    done = run_groups(plan(args, dataset), work, args.quiet)
    f = findings(done["runs"], args, args.rule)
    f["readout_check"] = readout_check(dataset, args.seed, 8 if args.quick else args.batch_size, args.alphas)
    cats = list(next(iter(f["trained_vs_random"].values()))["trained"]["unique_per_category"])
    lite_runs = [done["runs"]["depth"]["lite0"], done["runs"]["lite1"]["lite1"], done["runs"]["lite2"]["lite2"]]
    page = write_comparison(lite_runs, ["lite0", "lite1", "lite2"], work / "lite_compare", rule=args.rule)
    info.update(loadavg_end=os.getloadavg(), seconds_total=round(time.perf_counter() - t0, 1),
                seconds_per_group=done["seconds"])
    result = {"images": images, "quick": args.quick, "seed": args.seed, "rule": args.rule, "batch_size": args.batch_size,
              "workers": args.workers, "work": str(work), "machine": info, "findings": f}
    name = "paper_findings_quick.json" if args.quick else "paper_findings.json"
    (args.out / name).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(tables(f, cats))
    print("readout check (alpha: max |logit diff|, top-1 agreement): "
          + ", ".join(f"{a}: {v['max_abs_logit_diff']:.2g}, {v['top1_agree']:.2f}" for a, v in f["readout_check"]["alphas"].items()))
    print(f"pages: {work}/<group>/compare.html, {page}; JSON: {args.out / name}; {info['seconds_total']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
