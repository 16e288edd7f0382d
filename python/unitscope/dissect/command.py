"""`unitscope dissect`: network dissection from the command line; writes tally CSVs, JSON and the
HTML report. Runs under torchrun too (each rank takes a shard; rank 0 writes the outputs)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a registry name (e.g. efficientnet_lite0) or MODULE:FACTORY, a function returning an nn.Module")
    p.add_argument("--weights", help="state_dict file for the model (loaded with torch.load(weights_only=True))")
    p.add_argument("--layers", required=True, help="comma-separated module names, e.g. layer3,layer4")
    p.add_argument("--dataset", required=True, help="Broden-format dataset folder")
    p.add_argument("--out", required=True, help="output folder (tally_<layer>.csv, dissection.json, report/)")
    p.add_argument("--categories", help="comma-separated categories (default: all of the dataset's)")
    p.add_argument("--split", help="only rows of this split (train, val)")
    p.add_argument("--resolution", type=int, help="resize images to this size")
    p.add_argument("--quantile", type=float, default=0.995)
    p.add_argument("--iou-threshold", type=float, default=0.04)
    p.add_argument("--threshold-op", choices=[">", ">="], default=">")
    p.add_argument("--union", choices=["category", "dataset"], default="category")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", dest="exact", action="store_true", default=True, help="exact quantiles (default)")
    mode.add_argument("--sketch", dest="exact", action="store_false", help="bounded-memory quantile sketch")
    p.add_argument("--topk", type=int, default=8, help="top images per unit in the report")
    p.add_argument("--checkpoint-dir", help="checkpoints (default: OUT/checkpoints); a rerun resumes from them")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--report-units", type=int, help="at most this many units per layer page")
    p.add_argument("--tokens", action="store_true", help="rearrange (B, T, C) token outputs into maps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_model(spec: str, weights: str | None):
    """(model, preprocess or None) from a registry name or MODULE:FACTORY, weights applied."""
    preprocess = None
    if ":" in spec:
        mod_name, _, factory = spec.partition(":")
        sys.path.insert(0, os.getcwd())
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise SystemExit(f"--model {spec}: cannot import module {mod_name!r} ({e})") from e
        fn = getattr(mod, factory, None)
        if not callable(fn):
            raise SystemExit(f"--model {spec}: module {mod_name!r} has no callable {factory!r}")
        model = fn()
    else:
        from unitscope import models
        try:
            loaded = models.load(spec)
        except (KeyError, ValueError) as e:
            raise SystemExit(f"--model {spec}: {e}") from e
        model, preprocess = loaded.model, loaded.preprocess
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"--model {spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model.load_state_dict(state)
    return model, preprocess


def run(args) -> int:
    import unitscope
    from unitscope.data import BrodenDataset

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, preprocess = load_model(args.model, args.weights)
    cats = args.categories.split(",") if args.categories else None
    ds = BrodenDataset(args.dataset, categories=cats, split=args.split, resolution=args.resolution)
    out = Path(args.out)
    layers = [l for l in args.layers.split(",") if l]
    result = unitscope.dissect(
        model, layers, ds, batch_size=args.batch_size, device=device, quantile=args.quantile,
        iou_threshold=args.iou_threshold, threshold_op=args.threshold_op, union=args.union, exact=args.exact,
        preprocess=preprocess, num_workers=args.workers, topk=args.topk, tokens=args.tokens,
        checkpoint_dir=args.checkpoint_dir or out / "checkpoints", progress=not args.quiet)
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
