"""End-to-end network dissection on one GPU at Broden's scale: a ResNet-18-sized model defined here
(random weights; torchvision need not be installed), layer4 (512 units, 7x7), forward included, over a
generated Broden-format dataset of 63,000 rows at 224x224 with 112x112 labels. Prints a table, writes JSON.

Generating an image takes a CPU core tens of milliseconds, so `--distinct` images are generated and
index.csv repeats them up to `--images` rows: every row is still read, decoded, run through the model
and tallied. A warm-up dissection measures the rate first; when the full run would not fit in
`--budget-s`, the largest row count that fits is run and the time for all rows is extrapolated
(marked so in the output).

    python benchmarks/gpu/dissect_cuda.py [--images 63000] [--distinct 600] [--budget-s 150] [--json PATH]
    python benchmarks/gpu/dissect_cuda.py --device cpu --images 64 --distinct 16   # smoke test
    python benchmarks/gpu/dissect_cuda.py --generate-only   # the dataset alone (run.sh, in the background)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

import unitscope
from unitscope import _tensors as T
from unitscope.data import BrodenDataset, make_concept_dataset, pack_broden

GOAL_S = 120.0


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18's shape (11.7 M parameters; layer4 is 512 x 7 x 7 at 224 x 224 input)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stages.append(nn.Sequential(Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))

    def forward(self, x):
        return self.head(self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x))))))


def repeated_dataset(base: Path, root: Path, rows: int) -> BrodenDataset:
    """A Broden-format dataset at `root` whose index.csv repeats base's rows up to `rows` rows; the
    images folder is a link to base's, the labels are packed (one decode per distinct label map)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for f in base.glob("*.csv"):
        if f.name != "index.csv":
            shutil.copy(f, root / f.name)
    (root / "images").symlink_to((base / "images").resolve(), target_is_directory=True)
    with open(base / "index.csv", newline="", encoding="utf-8") as f:
        header, *body = list(csv.reader(f))
    with open(root / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(body[i % len(body)] for i in range(rows))
    pack_broden(root)
    return BrodenDataset(root)


def generated_base(work: Path, distinct: int, size: int) -> tuple[Path, float]:
    """The generated dataset of `distinct` images (made once: in a side folder renamed into place when
    complete, so a run that finds it never sees half of it); its path and the seconds it took."""
    base = work / f"base_{distinct}_{size}"
    t = time.perf_counter()
    if not (base / "index.csv").is_file():
        part = work / f"{base.name}.{os.getpid()}.partial"
        shutil.rmtree(part, ignore_errors=True)
        make_concept_dataset(part, distinct, size=size, seed=0)
        shutil.rmtree(base, ignore_errors=True)
        part.rename(base)
    return base, time.perf_counter() - t


def run_dissection(model, ds, args, device):
    t0 = time.perf_counter()
    d = unitscope.dissect(model, ["layer4"], ds, batch_size=args.batch_size, device=device,
                          num_workers=args.workers, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=63_000, help="dataset rows (default: Broden's %(default)s)")
    ap.add_argument("--distinct", type=int, default=600, help="distinct generated images (default: %(default)s)")
    ap.add_argument("--size", type=int, default=224, help="image size; labels are half (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=256, help="images per batch (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                    help="DataLoader worker processes (default: the CPU count, at most 16)")
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="seconds for the measured dissection; fewer rows are run when it would not fit (default: %(default)s)")
    ap.add_argument("--device", default="cuda", help="cuda (default; the current device) or cpu (smoke test only)")
    ap.add_argument("--work", default="/tmp/unitscope_dissect_cuda", help="scratch folder (default: %(default)s)")
    ap.add_argument("--json", default="benchmarks/out/dissect_cuda.json", help="where the JSON goes (default: %(default)s)")
    ap.add_argument("--generate-only", action="store_true", help="generate the dataset into --work and stop")
    args = ap.parse_args()
    if args.generate_only:
        base, t_gen = generated_base(Path(args.work), args.distinct, args.size)
        print(f"generated {base} in {t_gen:.1f} s")
        return 0
    device = T.resolve_device(args.device)
    if device.type == "cuda" and "cuda" not in unitscope.backends():
        print(f"dissect_cuda: error: the cuda backend is {unitscope.backends(verbose=True)['cuda']}", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    work = Path(args.work)
    base, t_gen = generated_base(work, args.distinct, args.size)
    torch.manual_seed(0)
    model = ResNet18().eval().to(device)

    warm_rows = min(args.images, max(4 * args.batch_size, args.distinct))
    t_warm, _ = run_dissection(model, repeated_dataset(base, work / "warm", warm_rows), args, device)
    rate = warm_rows / t_warm  # includes start-up costs (workers, cudnn autotuning): a pessimistic rate
    rows = args.images if args.images / rate <= args.budget_s else max(warm_rows, int(0.8 * args.budget_s * rate))
    ds = repeated_dataset(base, work / "full", rows)
    wall, d = run_dissection(model, ds, args, device)
    estimate = wall * args.images / rows
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test, not a measurement)"
    out = {"device": name, "model": "ResNet-18 shape, random weights", "layer": "layer4 (512 x 7 x 7)",
           "image_size": args.size, "label_size": args.size // 2, "distinct_images": args.distinct,
           "generate_s": t_gen, "warmup_rows": warm_rows, "warmup_s": t_warm, "rows_run": rows, "wall_s": wall,
           "images_per_s": rows / wall, "parts_s": d.timings, "rows_goal": args.images,
           "time_for_goal_rows_s": estimate, "extrapolated": rows != args.images,
           "goal": f"{args.images} images in under {GOAL_S:.0f} s", "goal_met": estimate < GOAL_S,
           "batch_size": args.batch_size, "workers": args.workers, "backends": unitscope.backends(),
           "unique_detectors": d.unique_detectors()}
    print(f"{name}: {rows} rows in {wall:.1f} s = {rows / wall:.0f} images/s; parts (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in d.timings.items()))
    print(f"{args.images} rows: {estimate:.1f} s{' (extrapolated)' if out['extrapolated'] else ''}; "
          f"goal under {GOAL_S:.0f} s: {'met' if out['goal_met'] else 'NOT met'}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
