"""Your own network from the command line: the arguments every command shares (--model MODULE:FACTORY
or a registry name, --weights, --mean/--std or --no-normalize, --classes) and the one loader behind them,
which checks everything before any work starts and gives a LoadedModel like the registry's."""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys

import torch

from unitscope.models import IMAGENET_MEAN, IMAGENET_STD, LoadedModel, Normalize

DEFAULT_INPUT_SIZE = 224  # a user's model's input size unless the command is told otherwise
MAX_CLASS_NAME = 200      # characters kept of one class name read from --classes


def add_model_arguments(p: argparse.ArgumentParser, *, classes: bool = True) -> None:
    """Add --model, --weights, --mean, --std, --no-normalize and (classes=True) --classes to `p`."""
    from unitscope import cli

    p.add_argument("--model", required=True,
                   help="a registry name (efficientnet_lite0) or MODULE:FACTORY, a function returning your "
                        "nn.Module; MODULE is imported from the installed packages or, failing that, from the "
                        "working directory (which never shadows an installed package)")
    p.add_argument("--weights", type=cli.existing_file,
                   help="state_dict file for the model, loaded with torch.load(weights_only=True); a file holding "
                        "{'state_dict': ...} works too (default: the factory's or registry's own weights)")
    p.add_argument("--mean", type=_triple("--mean", positive=False),
                   help="per-channel mean R,G,B subtracted from [0, 1] pixels before the model (with --std) "
                        f"(default: ImageNet's {','.join(f'{v:g}' for v in IMAGENET_MEAN)}, for every model)")
    p.add_argument("--std", type=_triple("--std", positive=True),
                   help="per-channel standard deviation R,G,B the centred pixels are divided by (with --mean) "
                        f"(default: ImageNet's {','.join(f'{v:g}' for v in IMAGENET_STD)}, for every model)")
    p.add_argument("--no-normalize", action="store_true",
                   help="feed [0, 1] pixels to the model as they are (default: ImageNet normalization)")
    if classes:
        p.add_argument("--classes", type=cli.existing_file,
                       help="a UTF-8 text file with one class name per line, line i naming class i (default: the "
                            "registry model's ImageNet names; for MODULE:FACTORY the class numbers 0, 1, ...)")


def _triple(option: str, positive: bool):
    """An argparse type: 3 comma-separated finite numbers (> 0 when `positive`) -> tuple of floats."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be 3 comma-separated numbers R,G,B, got {text!r}") from None
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"must be 3 comma-separated numbers R,G,B, got {len(values)}: {text!r}")
        if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
            raise argparse.ArgumentTypeError(f"must be {'positive' if positive else 'finite'} numbers, got {text!r}")
        return values
    parse.__name__ = option.lstrip("-")
    return parse


def import_factory(spec: str):
    """The callable named by MODULE:FACTORY.

    MODULE is imported as usual when it is importable; otherwise from the working directory, whose
    folder is appended to sys.path (after every installed package) only while MODULE is imported and
    removed afterwards: a module file lying in the working directory never shadows a library (a stray
    matplotlib.py is not run), and the rest of the process never imports from there.
    """
    mod_name, _, factory = spec.partition(":")
    if not mod_name or not factory or not all(part.isidentifier() for part in mod_name.split(".") + [factory]):
        raise ValueError(f"--model {spec!r}: expected MODULE:FACTORY with dotted Python names, e.g. mynets:resnet")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"--model {spec}: cannot import module {mod_name!r} ({e})") from e
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    fn = getattr(mod, factory, None)
    if not callable(fn):
        raise ValueError(f"--model {spec}: module {mod_name!r} ({getattr(mod, '__file__', '?')}) has no callable {factory!r}")
    return fn


def _keys(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_weights(model: torch.nn.Module, weights: str, spec: str) -> None:
    """Load the state_dict file `weights` into `model`; a mismatch is one short summary (counts and
    the first few missing, unexpected and mis-shaped keys), not every key."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and runtime errors for a bad file
        raise ValueError(f"--weights {weights}: cannot load ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"--weights {weights}: expected a state_dict (names -> tensors), got {type(state).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    parts = [f"{len(missing)} missing keys ({_keys(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys ({_keys(unexpected)})" if unexpected else "",
             f"{len(shapes)} of other shapes ({_keys(shapes, 2)})" if shapes else ""]
    if any(parts):
        raise ValueError(f"--weights {weights} does not fit --model {spec}: " + "; ".join(p for p in parts if p))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # e.g. a non-tensor value
        raise ValueError(f"--weights {weights} does not fit --model {spec}: {str(e).splitlines()[0]}") from e


def _load(spec: str, weights: str | None):
    """(model, the registry's LoadedModel or None) from a registry name or MODULE:FACTORY, weights applied."""
    loaded = None
    if ":" in spec:
        model = import_factory(spec)()
    else:
        from unitscope import models
        model_names = models.names()
        if spec.lower().replace("-", "_") not in model_names:
            raise ValueError(f"--model {spec!r}: not a registered model ({', '.join(model_names)}) "
                             "nor MODULE:FACTORY")
        loaded = models.load(spec)
        model = loaded.model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"--model {spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(model, weights, spec)
    return model, loaded


def load_model(spec: str, weights: str | None):
    """(model, preprocess or None) from a registry name or MODULE:FACTORY, weights applied."""
    model, loaded = _load(spec, weights)
    return model, (loaded.preprocess if loaded is not None else None)


def custom_normalization(args) -> bool:
    """Whether --mean, --std or --no-normalize was given."""
    return bool(getattr(args, "no_normalize", False) or getattr(args, "mean", None) is not None
                or getattr(args, "std", None) is not None)


def preprocess_from_args(args) -> Normalize:
    """The input normalization that --mean/--std/--no-normalize ask for (ImageNet's by default)."""
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    if getattr(args, "no_normalize", False):
        if mean is not None or std is not None:
            raise ValueError("--no-normalize cannot be combined with --mean/--std")
        return Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    if (mean is None) != (std is None):
        raise ValueError(f"--mean and --std go together, got only {'--mean' if std is None else '--std'}")
    return Normalize(mean or IMAGENET_MEAN, std or IMAGENET_STD)


def read_class_names(path: str) -> list:
    """One class name per line of a UTF-8 text file (blank lines at the end ignored). Names are data:
    kept as text, shortened to MAX_CLASS_NAME characters, control characters refused."""
    try:
        with open(path, "rb") as f:
            raw = f.read(16 * 2 ** 20 + 1)
    except OSError as e:
        raise ValueError(f"--classes {path}: cannot read ({e.strerror or e})") from e
    if len(raw) > 16 * 2 ** 20:
        raise ValueError(f"--classes {path}: larger than 16 MiB, not a list of class names")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"--classes {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    names = text.splitlines()
    while names and not names[-1].strip():
        names.pop()
    if not names:
        raise ValueError(f"--classes {path}: the file names no class")
    for i, name in enumerate(names):
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise ValueError(f"--classes {path}: line {i + 1} holds a control character")
        if not name.strip():
            raise ValueError(f"--classes {path}: line {i + 1} is blank; every class needs a name")
    return [n.strip()[:MAX_CLASS_NAME] for n in names]


def loaded_from_args(args, device, input_size=None, classifier: bool = True) -> LoadedModel:
    """The model that --model/--weights/--mean/--std/--no-normalize/--classes describe, on `device`, in
    eval mode, as a LoadedModel. `input_size` (int or (H, W); default the registry model's, else
    DEFAULT_INPUT_SIZE). With `classifier`, one forward of a grey image checks that the model gives
    logits (1, N) and that --classes names N classes (default names: the numbers 0..N-1)."""
    model, registry = _load(args.model, args.weights)
    device = torch.device(device)
    custom = custom_normalization(args)
    preprocess = registry.preprocess if registry is not None and not custom else preprocess_from_args(args)
    if input_size is None:
        input_size = registry.input_size if registry is not None else (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    elif isinstance(input_size, int):
        input_size = (input_size, input_size)
    model = model.to(device).eval()
    preprocess = preprocess.to(device)
    names_file = getattr(args, "classes", None)
    names = read_class_names(names_file) if names_file else None
    if registry is not None and names is None:
        names = list(registry.class_names)
    if classifier:
        with torch.no_grad():
            out = model(preprocess(torch.full((1, 3) + tuple(input_size), 0.5, device=device)))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            what = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"--model {args.model} must return class scores (B, N) for a (1, 3, {input_size[0]}, "
                             f"{input_size[1]}) image, got {what}")
        n = out.shape[1]
        if names is None:
            names = [str(i) for i in range(n)]
        elif len(names) != n:
            src = f"--classes {names_file}" if names_file else "the registry's class names"
            raise ValueError(f"{src} names {len(names)} classes but --model {args.model} gives {n} scores")
    return LoadedModel(name=args.model, model=model, preprocess=preprocess, input_size=tuple(input_size),
                       class_names=names or [],
                       cam_layer=registry.cam_layer if registry is not None else "")
