"""What layers a model has to hook: `layers(model, input_size)` runs one forward of a grey image and lists
every module call (name, `name@k` for the k-th call of a module that runs several times), its type and
output shape, and which are the usual choices; `cam_layer(...)` picks the layer the CAM methods explain."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# modules whose output is an activated (non-linear) feature map
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid)


@dataclass(frozen=True)
class LayerInfo:
    """One hookable layer: name as the layer arguments take it ('layer4', '_swish@1'), the module's
    type name, its output shape for the probe image (batch 1; None when the output is not a tensor),
    `usual`: its output is an activated convolutional map (B, C, h, w) with h*w > 1, the output of an
    activation module or of a block (a module with children) whose output is an activation's (a good layer to dissect or visualize), and `cam`:
    it is the layer cam_layer() picks; `pre_activation`: for an activation module, the layer whose output it
    activates (what a feature visualization should optimize: a ReLU passes no gradient where a unit is
    off, so a render of the activation itself can stay grey), else None; None for an in-place activation
    too (its input is its output: no other layer holds the value before it)."""
    name: str
    type: str
    shape: tuple | None
    usual: bool
    cam: bool = False
    pre_activation: str | None = None


def _check_size(input_size) -> tuple:
    size = (input_size, input_size) if isinstance(input_size, int) and not isinstance(input_size, bool) else input_size
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise ValueError(f"input_size must be a positive int or (H, W) of positive ints, got {input_size!r}")
    return tuple(size)


def layers(model: nn.Module, input_size=224, *, preprocess=None, device=None) -> list[LayerInfo]:
    """Every hookable layer of `model`, in the order their calls finish in one forward pass of a grey
    (0.5) image of input_size (int or (H, W)), 3 channels, batch 1, through `preprocess` if given.

    A module called several times per forward appears once per call, as 'name@k' (k from 0), the
    form the layer arguments of dissect, featviz, saliency and explain take. The model is run in
    eval mode without gradients and left in the mode it had.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    size = _check_size(input_size)
    names = {m: n for n, m in model.named_modules() if n}
    calls: dict[str, int] = {}
    records = []  # (name, module, call index, output)
    first_inputs = []  # each call's first input (kept alive, so that id() identifies it)

    def hook(module, inputs, output):
        name = names[module]
        k = calls.get(name, 0)
        calls[name] = k + 1
        records.append((name, module, k, output))
        first_inputs.append(inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None)

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        model.eval()
        x = torch.full((1, 3) + size, 0.5, device=device)
        with torch.no_grad():
            model(preprocess(x) if preprocess is not None else x)
    except RuntimeError as e:
        raise ValueError(f"the model cannot run on a (1, 3, {size[0]}, {size[1]}) image: "
                         f"{str(e).splitlines()[0]}; try another input_size") from e
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    activated = {id(out) for _, mod, _, out in records if isinstance(mod, ACTIVATIONS)}
    produced = {}  # id(tensor) -> the label of the last call that returned it, so far
    labels = [f"{n}@{k}" if calls[n] > 1 else n for n, _, k, _ in records]
    cam = _cam_index(records)
    rows = []
    for i, (_name, mod, _k, out) in enumerate(records):
        label = labels[i]
        feeds = produced.get(id(first_inputs[i])) if first_inputs[i] is not None else None
        if isinstance(out, torch.Tensor):
            produced[id(out)] = label
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        ends_activated = isinstance(mod, ACTIVATIONS) or (next(mod.children(), None) is not None and id(out) in activated)
        usual = shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1 and ends_activated
        rows.append(LayerInfo(label, type(mod).__name__, shape, usual, i == cam,
                              feeds if isinstance(mod, ACTIVATIONS) and first_inputs[i] is not out else None))
    return rows


def _cam_index(records) -> int | None:
    """The CAM layer among the calls (in finishing order): the last call whose output is a feature map
    (B, C, h, w) with h*w > 1. What follows it reduces the maps (global pooling, then the classifier),
    so it is the last convolutional output; among calls returning that same tensor (an activation and
    the blocks that end in it) the last to finish, the outermost module, is taken."""
    for i in range(len(records) - 1, -1, -1):
        out = records[i][3]
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
            return i
    return None


def cam_layer(model: nn.Module, input_size=224, *, preprocess=None, device=None) -> str:
    """The layer Grad-CAM and explain() use by default for `model`: the last layer whose output is a
    feature map (B, C, h, w) with h*w > 1 for this input size, i.e. the last convolutional output before
    global pooling (ResNet's layer4, VGG's last ReLU of features). For the registry's EfficientNet-Lite0
    this gives its documented '_swish@1', the activated head. Raises ValueError when no layer outputs
    such a map."""
    for row in layers(model, input_size, preprocess=preprocess, device=device):
        if row.cam:
            return row.name
    raise ValueError(f"no layer of the model outputs a feature map (B, C, h, w) with h*w > 1 for a "
                     f"{_check_size(input_size)} image; pass the layer explicitly")


def render_layer(model: nn.Module, layer: str, input_size=224, *, preprocess=None, device=None) -> str:
    """The layer to render a feature visualization of `layer`'s channels at: its pre_activation when it
    is an activation module that has one (channel k of the input of a monotone activation is maximized
    where channel k of its output is), else `layer` itself."""
    for row in layers(model, input_size, preprocess=preprocess, device=device):
        if row.name == layer:
            return row.pre_activation or layer
    return layer


def format_table(rows: list[LayerInfo], only_usual: bool = False) -> str:
    """Plain-text table of layers(): name, type, output shape, and 'usual' / 'CAM layer' marks."""
    shown = [r for r in rows if r.usual or r.cam] if only_usual else rows
    width = max([len(r.name) for r in shown] + [5])
    twidth = max([len(r.type) for r in shown] + [4])
    lines = [f"{'layer':<{width}}  {'type':<{twidth}}  {'output shape':<20}  note"]
    for r in shown:
        shape = "x".join(str(v) for v in r.shape) if r.shape is not None else "(not a tensor)"
        note = ", ".join(n for n, on in (("usual", r.usual), ("CAM layer", r.cam)) if on)
        lines.append(f"{r.name:<{width}}  {r.type:<{twidth}}  {shape:<20}  {note}".rstrip())
    return "\n".join(lines)
