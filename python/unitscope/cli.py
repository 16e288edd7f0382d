"""`unitscope <command>`: each command lives beside the code it drives and provides
add_arguments(parser) and run(args) -> int."""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS = {
    "demo": ("unitscope.demo", "dissect and explain the bundled EfficientNet-Lite0 on generated data and photos"),
    "dissect": ("unitscope.dissect.command", "network dissection of a model's layers on a Broden-format dataset"),
    "saliency": ("unitscope.saliency.command", "saliency maps of a model's prediction for an image"),
    "featviz": ("unitscope.featviz.command", "render what channels of a layer respond to"),
    "explain": ("unitscope.explain.command", "which dissected concepts of a layer made a model's prediction for a photo"),
    "info": ("unitscope.info", "backends and build facts of this installation"),
}


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):  # command not in this build
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unitscope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = _load(module)
        if mod is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
