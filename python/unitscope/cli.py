"""`unitscope <command>`: each command lives beside the code it drives and provides add_arguments(parser)
and run(args) -> int. Here: the command table, the argument types every command shares (checked
before any work starts), and the one place that turns a user's error into one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# command name -> (module, one-line help)
COMMANDS = {
    "demo": ("unitscope.demo", "dissect and explain the bundled EfficientNet-Lite0 on generated data and photos"),
    "dissect": ("unitscope.dissect.command", "network dissection of a model's layers on a Broden-format dataset"),
    "saliency": ("unitscope.saliency.command", "saliency maps of a model's prediction for an image"),
    "featviz": ("unitscope.featviz.command", "render what channels of a layer respond to"),
    "adversarial": ("unitscope.featviz.adversarial_command",
                    "a class's feature visualization beside the adversarial example towards it from a photo"),
    "explain": ("unitscope.explain.command", "which dissected concepts of a layer made a model's prediction for a photo"),
    "layers": ("unitscope.models.layers_command",
               "list a model's layers: names for --layer(s), types, output shapes, usual choices"),
    "data": ("unitscope.data.command", "write datasets: `unitscope data concepts DIR` generates the concept dataset"),
    "info": ("unitscope.info", "backends and build facts of this installation"),
    # comparing networks (issue 20)
    "models": ("unitscope.models.command", "the registered models, their input sizes and weights"),
    "compare": ("unitscope.dissect.compare_command",
                "one page comparing dissections: detectors and unique detectors per category, layer and model"),
    "benchmark": ("unitscope.dissect.benchmark",
                  "dissect every model x transform of a TOML spec (resumable) and write their comparison"),
}
DESCRIPTION = ("Interpretability of convolutional networks: network dissection, saliency maps and feature "
               "visualization. `unitscope COMMAND --help` describes each command.")


class HelpFormatter(argparse.HelpFormatter):
    """Adds ' (default: X)' to an option's help unless the help already names its default; an option
    whose default is None, and a flag (store_true), says in its own words what happens without it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is argparse.SUPPRESS
                or action.nargs == 0 or not action.option_strings or action.required):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that a bad argument prints only the one line `unitscope CMD: error: ...`
    (no usage block: --help shows that) and exits with code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _load(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):  # command not in this build
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from unitscope import __version__

    parser = ArgumentParser(prog="unitscope", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"unitscope {__version__}",
                        help="print unitscope's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = _load(module)
        if mod is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


# what the library raises for a user's error (BrodenFormatError is a ValueError; OSError covers missing,
# unreadable and unwritable files; ImportError names the extra to install): one line, exit code 2
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except USER_ERRORS as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if "is not a module of the model" in message and getattr(args, "model", None):
            from unitscope.hooks import LAYER_LISTER  # the API's pointer, replaced by this command's own

            message = message.replace(LAYER_LISTER, "")
            message += f" (`unitscope layers --model {args.model}` lists the layer names)"
        print(f"unitscope {args.command}: error: {message}", file=sys.stderr)
        return 2


# ---- argument types shared by the commands: argparse reports a bad value as
#      "unitscope CMD: error: argument --NAME: ..." and exits with code 2 before any work starts ----

def _int_at_least(minimum: int, what: str):
    """A type for an int >= minimum; errors say 'must be <what>'."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
positive_int.__name__ = "positive_int"
nonnegative_int = _int_at_least(0, "an integer >= 0")
nonnegative_int.__name__ = "nonnegative_int"


def float_in(lo: float, hi: float, *, open_lo=False, open_hi=False):
    """A type for a float in [lo, hi] ('(' / ')' where open_lo / open_hi)."""
    span = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {text!r}") from None
        if not (value > lo if open_lo else value >= lo) or not (value < hi if open_hi else value <= hi):
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {text}")
        return value

    parse.__name__ = f"number in {span}"
    return parse


def positive_float(text: str) -> float:
    """A finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def existing_file(text: str) -> str:
    """The path of an existing file."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} {'is a directory' if os.path.isdir(text) else 'does not exist'}"
                                         ", expected a file")
    return text


def existing_dir(text: str) -> str:
    """The path of an existing folder."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} {'is a file' if os.path.exists(text) else 'does not exist'}"
                                         ", expected a folder")
    return text


def output_dir(text: str) -> str:
    """A folder to write to: existing, or creatable (no part of the path is a file)."""
    if not text:
        raise argparse.ArgumentTypeError("must name a folder, got ''")
    path = os.path.abspath(text)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(text) else f" ({path} is a file)"
        raise argparse.ArgumentTypeError(f"{text!r} cannot be a folder{where}: it names a file")
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write in {path} (permission denied)")
    return text


def device(text: str) -> str:
    """A torch device string that exists here: cpu, cuda, cuda:1, mps ..."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (torch "
                                             f"{torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def image_file(text: str) -> str:
    """A readable image: a file Pillow decodes or `skimage:NAME` (read once here to check it)."""
    from unitscope.models.images import read_image

    try:
        read_image(text)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


if __name__ == "__main__":
    sys.exit(main())
