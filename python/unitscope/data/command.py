"""`unitscope data concepts DIR --images N`: write the generated Broden-format concept dataset
(make_concept_dataset) that `unitscope dissect --dataset DIR` reads."""
from __future__ import annotations

import os


def add_arguments(p) -> None:
    from unitscope import cli

    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    c = sub.add_parser("concepts", formatter_class=cli.HelpFormatter,
                       help="colored objects with parts on textured scenes, labelled in the Broden format",
                       description="Write the generated concept dataset (colors, objects, parts, scenes, textures "
                                   "in the Broden format); the same options always give the same bytes.")
    c.add_argument("root", metavar="DIR", type=cli.output_dir, help="folder to write (created; files in it are replaced)")
    c.add_argument("--images", type=cli.positive_int, default=200, help="number of images")
    c.add_argument("--size", type=_size, default=224, help="image side in pixels (at least 16; labels are half as large)")
    c.add_argument("--seed", type=int, default=0, help="random seed")
    c.add_argument("--quiet", action="store_true", help="no progress bar (on by default)")


def _size(text: str) -> int:
    import argparse

    from unitscope import cli

    value = cli.positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be at least 16, got {value}")
    return value


def run(args) -> int:
    from unitscope.data import make_concept_dataset

    if args.dataset == "concepts":
        root = make_concept_dataset(args.root, args.images, size=args.size, seed=args.seed, progress=not args.quiet)
        print(f"wrote {args.images} images of {args.size}x{args.size} to {os.path.abspath(root)}")
    return 0
