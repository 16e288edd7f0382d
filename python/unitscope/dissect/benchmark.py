"""`unitscope benchmark SPEC --out DIR`: dissection as a benchmark. A TOML file lists models, layers,
transforms (random rotations), the dataset and the settings; every (model, transform) entry is dissected
with its own checkpoint into DIR/runs/<entry>/, a finished entry is never recomputed, and the
comparison page (`unitscope compare`'s) is written to DIR/compare.html."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from unitscope._checks import UNIONS

# settings passed to dissect() as they are, with the check each value must pass
_SETTINGS = {
    "batch_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "quantile": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
    "iou_threshold": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
    "threshold_op": lambda v: v in (">", ">="), "union": lambda v: v in UNIONS,
    "exact": lambda v: isinstance(v, bool), "compile": lambda v: v in (True, False, "auto"),
    "topk": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "num_workers": lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "device": lambda v: isinstance(v, str),
    "ties": lambda v: v in ("op", "random"),
    "tie_seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 63,
}
_DATASET = {"path", "generate", "categories", "split", "resolution"}
_MODEL = {"name", "model", "weights", "pretrained", "seed", "layers"}
_TRANSFORM = {"name", "rotation", "seed", "layers"}


def add_arguments(p) -> None:
    from unitscope import cli

    p.add_argument("spec", type=cli.existing_file, metavar="SPEC",
                   help="the benchmark's TOML file: [dataset], [settings], [[models]], [[transforms]] "
                        "(docs/comparing.md shows one)")
    p.add_argument("--out", required=True, type=cli.output_dir,
                   help="output folder: runs/<entry>/ (checkpoints, dissection.json), compare.html; a rerun "
                        "resumes an unfinished entry and skips the finished ones")
    p.add_argument("--rule", choices=["best", "category"], default="best",
                   help="how the comparison counts unique detectors (see `unitscope compare --help`)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are on by default)")


def _keys(table, allowed: set, where: str) -> dict:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return table


def _names(value, where: str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a non-empty list of strings, got {value!r:.100}")
    return list(value)


def read_spec(path) -> dict:
    """The spec as {dataset, settings, entries: [{name, model, weights, pretrained, seed, layers,
    transform: None | {name, rotation, seed, layers}}]}, every key checked."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise ImportError("reading a benchmark SPEC on Python 3.10 needs tomli: pip install tomli") from e
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"SPEC {path}: not valid TOML ({e})") from None
    _keys(doc, {"dataset", "settings", "models", "transforms"}, f"SPEC {path}")
    dataset = _keys(doc.get("dataset", {}), _DATASET, "[dataset]")
    if ("path" in dataset) == ("generate" in dataset):
        raise ValueError("[dataset] must give exactly one of path (a Broden-format folder) or generate "
                         "({images, size, seed} for the generated concept dataset)")
    if "generate" in dataset:
        gen = _keys(dataset["generate"], {"images", "size", "seed"}, "[dataset].generate")
        if not all(isinstance(gen.get(k, 1), int) and not isinstance(gen.get(k, 1), bool) for k in gen):
            raise ValueError(f"[dataset].generate values must be integers, got {gen!r:.100}")
    settings = _keys(doc.get("settings", {}), set(_SETTINGS), "[settings]")
    for key, value in settings.items():
        if not _SETTINGS[key](value):
            raise ValueError(f"[settings].{key} is not valid, got {value!r:.80}")
    models = doc.get("models")
    if not isinstance(models, list) or not models:
        raise ValueError("SPEC must list at least one [[models]] entry")
    transforms: list[dict | None] = [None]
    for i, t in enumerate(doc.get("transforms", [])):
        where = f"[[transforms]] {i + 1}"
        _keys(t, _TRANSFORM, where)
        alpha = t.get("rotation")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"{where}: rotation must be a number in [0, 1] (the rotation's alpha), got {alpha!r:.80}")
        seed = t.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{where}: seed must be an integer >= 0, got {seed!r:.80}")
        transforms.append({"name": str(t.get("name", f"rot{alpha:g}")), "rotation": float(alpha), "seed": seed,
                           "layers": _names(t["layers"], f"{where}: layers") if "layers" in t else None})
    entries = []
    for i, m in enumerate(models):
        where = f"[[models]] {i + 1}"
        _keys(m, _MODEL, where)
        if not isinstance(m.get("model"), str) or not m["model"]:
            raise ValueError(f"{where}: model must be a registry name or MODULE:FACTORY, got {m.get('model')!r:.80}")
        pretrained, seed = m.get("pretrained", True), m.get("seed", 0)
        if not isinstance(pretrained, bool) or isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{where}: pretrained must be true/false and seed an integer >= 0")
        if not pretrained and ":" in m["model"]:
            raise ValueError(f"{where}: pretrained = false needs a registry model; a MODULE:FACTORY "
                             "initializes itself (seed it in the factory)")
        weights = m.get("weights")
        if weights is not None and (not isinstance(weights, str) or not os.path.isfile(weights)):
            raise ValueError(f"{where}: weights must name an existing file, got {weights!r:.200}")
        layers = _names(m.get("layers"), f"{where}: layers")
        base = str(m.get("name", m["model"] if pretrained else f"{m['model']}-random{seed}"))
        for t in transforms:
            if t is not None and t["layers"] is not None and not set(t["layers"]) <= set(layers):
                raise ValueError(f"{where}: transform {t['name']!r} rotates layers {t['layers']} that are not "
                                 f"among the model's layers {layers}")
            entries.append({"name": base if t is None else f"{base}+{t['name']}", "model": m["model"],
                            "weights": weights, "pretrained": pretrained, "seed": seed, "layers": layers,
                            "transform": t})
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"SPEC: entry names must be distinct (give models a name), got {names}")
    return {"dataset": dataset, "settings": settings, "entries": entries}


class _Rotation:
    """random_rotation(K, alpha, seed) with K taken from the first activations it sees."""

    def __init__(self, alpha: float, seed: int):
        self.alpha, self.seed = alpha, seed
        self.rotation: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x):
        from unitscope.dissect.rotation import random_rotation

        if self.rotation is None:
            self.rotation = random_rotation(int(x.shape[1]), self.alpha, self.seed)
        return self.rotation(x)

    def __repr__(self) -> str:
        return f"random_rotation(alpha={self.alpha!r}, seed={self.seed})"


def _dataset(spec: dict, out: Path, progress: bool):
    from unitscope.data import BrodenDataset, make_concept_dataset

    d = spec["dataset"]
    root = d.get("path")
    if root is None:
        gen = d["generate"]
        root = out / "dataset"
        if not (root / "index.csv").is_file():
            make_concept_dataset(root, gen.get("images", 300), size=gen.get("size", 224), seed=gen.get("seed", 0),
                                 progress=progress)
    return BrodenDataset(root, categories=d.get("categories"), split=d.get("split"), resolution=d.get("resolution"))


def _model(entry: dict):
    """(model, preprocess or None) of an entry."""
    from unitscope.dissect.command import load_model

    if entry["pretrained"]:
        return load_model(entry["model"], entry["weights"])
    from unitscope import models

    lm = models.load(entry["model"], pretrained=False, seed=entry["seed"])
    return lm.model, lm.preprocess


def run_entry(entry: dict, ds, settings: dict, folder: Path, progress: bool):
    """Dissect one entry with its checkpoint in folder/checkpoints; transform= only for a rotation."""
    import unitscope

    model, preprocess = _model(entry)
    kw = dict(settings)
    t = entry["transform"]
    if t is not None:  # dissect(transform=...) is needed only here
        kw["transform"] = {layer: _Rotation(t["rotation"], t["seed"]) for layer in (t["layers"] or entry["layers"])}
    d = unitscope.dissect(model, entry["layers"], ds, preprocess=preprocess, checkpoint_dir=folder / "checkpoints",
                          progress=progress, **kw)
    d.name = entry["name"]
    return d


def run(args) -> int:
    from unitscope.dissect.compare_command import write_comparison
    from unitscope.dissect.result import Dissection, file_stems

    spec = read_spec(args.spec)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = _dataset(spec, out, not args.quiet and rank == 0)
    stems = file_stems([e["name"] for e in spec["entries"]])
    results = []
    for n, entry in enumerate(spec["entries"], 1):
        folder = out / "runs" / stems[entry["name"]]
        record = {"entry": entry, "settings": spec["settings"], "dataset": spec["dataset"]}
        saved = folder / "entry.json"
        if (folder / "dissection.json").is_file():
            if not saved.is_file() or json.loads(saved.read_text(encoding="utf-8")) != json.loads(json.dumps(record)):
                raise ValueError(f"{folder} holds a finished entry {entry['name']!r} of another spec; use another "
                                 "--out or remove that folder")
            if rank == 0:
                print(f"[{n}/{len(spec['entries'])}] {entry['name']}: finished before, not recomputed")
            results.append(Dissection.load(folder))
            continue
        if rank == 0:
            print(f"[{n}/{len(spec['entries'])}] {entry['name']}: dissecting {', '.join(entry['layers'])}")
            folder.mkdir(parents=True, exist_ok=True)
        d = run_entry(entry, ds, spec["settings"], folder, not args.quiet and rank == 0)
        if rank == 0:
            saved.write_text(json.dumps(record, indent=1), encoding="utf-8")
            d.to_json(folder / "dissection.json")
        results.append(d)
    if rank == 0:
        page = write_comparison(results, [d.name for d in results], out, rule=args.rule,
                                sources=[str(out / "runs" / stems[d.name]) for d in results])
        print(f"benchmark of {len(results)} entries: {page}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0
