"""`unitscope dissect`: network dissection from the command line; writes tally CSVs, JSON and the
HTML report. Runs under torchrun too (each rank takes a shard; rank 0 writes the outputs)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from unitscope._checks import IOU_THRESHOLD, UNIONS
from unitscope.models.own import (  # noqa: F401
    custom_normalization,
    import_factory,
    load_model,
    preprocess_from_args,
)

REPORT_PAGE = "index.html"  # the report's own folder (OUT/report/) keeps it apart from saliency.html / featviz.html

def _workers(text: str):
    from unitscope import cli
    return "auto" if text == "auto" else cli.nonnegative_int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unitscope import cli
    from unitscope.models.own import add_model_arguments

    add_model_arguments(p, classes=False)  # --model, --weights, --mean/--std/--no-normalize (ImageNet's by default)
    p.add_argument("--layers", required=True, help="comma-separated module names, e.g. layer3,layer4")
    p.add_argument("--dataset", required=True, type=cli.existing_dir,
                   help="Broden-format dataset folder (`unitscope data concepts DIR` generates one)")
    p.add_argument("--out", required=True, type=cli.output_dir,
                   help=f"output folder: tally_<layer>.csv, dissection.json, report/{REPORT_PAGE}")
    p.add_argument("--categories", help="comma-separated categories (default: all of the dataset's)")
    p.add_argument("--split", help="only rows of this split, e.g. train or val (default: every row)")
    p.add_argument("--resolution", type=cli.positive_int,
                   help="resize images to this size (default: the dataset's own size)")
    p.add_argument("--quantile", type=cli.float_in(0, 1, open_lo=True, open_hi=True), default=0.995,
                   help="per-unit activation quantile used as the unit's threshold")
    p.add_argument("--iou-threshold", type=cli.float_in(0, 1), default=IOU_THRESHOLD,
                   help="IoU above which a unit counts as a detector of its best concept")
    p.add_argument("--threshold-op", choices=[">", ">="], default=">",
                   help="a unit's mask is upsampled activation OP threshold")
    p.add_argument("--union", choices=UNIONS, default="category",
                   help="which images' mask pixels count toward a concept's union: 'category' (default, the "
                        "original Network Dissection): images annotated for the concept's category; 'dataset': "
                        "every image; 'mask' (NetDissect-Lite): images where a label of the category lies "
                        "inside the unit's mask")
    p.add_argument("--ties", choices=["op", "random"], default="op",
                   help="raw activations equal to a unit's threshold: 'op' follows --threshold-op (the paper's "
                        "rule; a unit whose quantile is its maximum, e.g. ReLU6 at 6.0, never fires under '>'); "
                        "'random' draws a seeded share of them into the mask so that it holds the quantile's "
                        "mass (unitscope's own rule, docs/comparing.md; one more sweep before the tally) "
                        "(default: op)")
    p.add_argument("--tie-seed", type=cli.nonnegative_int, default=0,
                   help="seed of --ties random: which tied cells are drawn (default: 0)")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="images per forward pass")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="DataLoader worker processes, 0 to read in this process (default: auto: the CPUs that "
                        "torch's threads leave free, at most 4, for a pass of 256 images or more, else 0)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default="auto",
                   help="run the model through torch.compile (about 2x on a CPU, ~50 s to compile, seconds once "
                        "torch's cache is warm; results may differ from eager in the last float bits); --no-compile "
                        "is the exact eager path (default: auto: eager with the faster of the input's layout and "
                        "channels_last, compiled when the dataset is large enough for the compile to pay off)")
    p.add_argument("--device", type=cli.device, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", dest="exact", action="store_true", default=True, help="exact quantiles (the default)")
    mode.add_argument("--sketch", dest="exact", action="store_false",
                      help="bounded-memory quantile sketch instead of exact quantiles")
    p.add_argument("--topk", type=cli.positive_int, default=8, help="top images per unit in the report")
    p.add_argument("--checkpoint-dir", type=cli.output_dir,
                   help="checkpoints; a rerun resumes from them (default: OUT/checkpoints)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report (written by default)")
    p.add_argument("--report-units", type=cli.positive_int,
                   help="at most this many units per layer page (default: every unit)")
    p.add_argument("--tokens", action="store_true",
                   help="rearrange (B, T, C) token outputs (ViT) into maps (default: off)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (they are on by default)")


def run(args) -> int:
    import unitscope
    from unitscope.data import BrodenDataset
    from unitscope.dissect.capture import parse_layer
    from unitscope.dissect.config import imagenet_preprocess
    from unitscope.hooks import resolve_layer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, preprocess = load_model(args.model, args.weights)
    if custom_normalization(args):
        preprocess = preprocess_from_args(args)
    layers = [l.strip() for l in args.layers.split(",") if l.strip()]
    if not layers:
        raise ValueError(f"--layers must name at least one module, got {args.layers!r}")
    for spec in layers:  # a misspelled layer fails before any work, with the close names
        resolve_layer(model, parse_layer(spec)[0])
    cats = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    ds = BrodenDataset(args.dataset, categories=cats, split=args.split, resolution=args.resolution)
    out = Path(args.out)
    result = unitscope.dissect(
        model, layers, ds, batch_size=args.batch_size, device=device, quantile=args.quantile,
        iou_threshold=args.iou_threshold, threshold_op=args.threshold_op, union=args.union, exact=args.exact,
        preprocess=preprocess if preprocess is not None else imagenet_preprocess,
        num_workers=args.workers, topk=args.topk, tokens=args.tokens, compile=args.compile,
        checkpoint_dir=args.checkpoint_dir or out / "checkpoints", progress=not args.quiet, ties=args.ties,
        tie_seed=args.tie_seed)
    result.name = args.model
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        result.to_csv(out)
        result.to_json(out / "dissection.json")
        if not args.no_report:
            index = result.save_report(out / "report", max_units=args.report_units, progress=not args.quiet)
            print(f"report: {index}")
        for ld in result:
            unique = ld.unique_detectors()
            print(f"{ld.layer}: {ld.num_units} units, {len(ld.detectors())} detectors, unique per category "
                  + ", ".join(f"{c} {n}" for c, n in unique.items()))
        t = result.timings
        print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0
