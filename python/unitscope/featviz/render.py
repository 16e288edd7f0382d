"""The render loop of feature visualization: gradient ascent on an image parameterization towards
an objective, through random transforms (Olah, Mordvintsev & Schubert, Distill 2017)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unitscope._compile import Runner
from unitscope._progress import progress_bar
from unitscope.featviz import transforms as T
from unitscope.featviz._loop import frozen, resolve_preprocess
from unitscope.featviz.objectives import Forward, Objective
from unitscope.featviz.param import make_image
from unitscope.hooks import LayerCapture


@dataclass
class Rendering:
    images: torch.Tensor               # (B, 3, H, W) float32 in [0, 1], on the CPU
    history: list = field(default_factory=list)  # objective value (batch sum) at every step, under transforms
    values: torch.Tensor | None = None  # (B,) the objective of each final image, without transforms


def _seeds(seed, batch: int) -> list[int]:
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch or not all(isinstance(s, int) for s in seed):
            raise ValueError(f"seed must be an int or a list of {batch} ints (one per image), got {seed!r}")
        return list(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a list of ints, got {type(seed).__name__}")
    return [seed + i for i in range(batch)]


def score(model: nn.Module, objective: Objective, images: torch.Tensor, *, preprocess="imagenet",
          device=None) -> torch.Tensor:
    """The objective of each image, without transforms or gradients.

    Args:
        images (Tensor[B, 3, H, W], float in [0, 1]): the images to score.
        preprocess: as in render().
    Returns:
        Tensor[B] float32 on the CPU.
    """
    preprocess = resolve_preprocess(preprocess)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = images.to(device, torch.float32)
    with frozen(model), torch.no_grad(), LayerCapture(model, sorted(set(objective.layers))) as capture:
        logits = model(preprocess(x) if preprocess is not None else x)
        return objective(Forward(dict(capture.outputs), logits, x)).float().cpu()


def render(model: nn.Module, objective: Objective, *, size=128, batch: int | None = None, param: str = "fourier",
           decorrelate: bool = True, transforms="standard", steps: int = 256, lr: float = 0.05,
           preprocess="imagenet", device=None, seed=0, progress: bool = True, compile=False) -> Rendering:
    """Optimize an image (batch of `batch`) to maximize `objective` (negate it to minimize).

    Args:
        model: the network; put in eval mode for the duration, its weights are not changed.
        objective: e.g. objectives.channel("_blocks.10", 3); combine with + - * and unary -.
            channel(layer, [c0, c1, ...]) renders one channel per image in a single optimization.
        size (int or (H, W)): image size.
        batch: number of images; default the objective's (len of its channel list) or 1.
        param ("fourier" | "pixel" | featviz.generator(G, z_shape)): parameterization (the last
            optimizes a latent code through a generator G(z) -> image); decorrelate: optimize in
            decorrelated colour.
        transforms ("standard", None, or a callable (image, generators) -> image, see
            featviz.transforms): random robustness transforms applied at every step.
        preprocess: maps the [0, 1] image to the model's input: "imagenet" (mean/std, the default),
            None (the model takes [0, 1] images), or a callable such as models.load(name).preprocess.
        seed (int or list of ints): image i's initial parameters and transforms come from its own
            generator seeded with seed[i], or seed + i for an int; so image i of a batch equals the
            render of image i alone with that seed (to float tolerance, the model's batched
            arithmetic aside) whatever the batch size, unless the objective couples the images
            (diversity). Same seed, same result on one machine.
        progress: show a tqdm bar over the steps.
        compile ("auto" | True | False): run the model's forward (and so its backward) through
            torch.compile; "auto" does after timing the first steps when the steps to come would save
            clearly more than the compile costs (unitscope._compile). Default False, the exact eager
            path: on this project's CPU the compiled steps ran 0.6-0.8x eager (benchmarks/RESULTS.md).
            Compiled steps agree with eager ones to float rounding, which Adam carries forward.
    Returns:
        Rendering with images (B, 3, H, W) in [0, 1], the objective's history and each final
        image's objective (values, (B,), measured without transforms).
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a unitscope.featviz Objective, got {type(objective).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if batch is None:
        batch = objective.batch or 1
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if objective.batch is not None and batch != objective.batch:
        raise ValueError(f"batch={batch} but the objective {objective.name} is defined for {objective.batch} images")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 8:
        raise ValueError(f"size must be an int or (H, W) of at least 8 pixels, got {size!r}")
    preprocess = resolve_preprocess(preprocess)
    if transforms == "standard":
        transforms = T.standard()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generators = [torch.Generator().manual_seed(s) for s in _seeds(seed, batch)]
    image = make_image(param, batch, hw, decorrelate, generator=generators).to(device)
    optimizer = torch.optim.Adam(image.parameters(), lr=lr)

    history = []
    with frozen(model):
        with LayerCapture(model, sorted(set(objective.layers))) as capture:
            def forward(seen):  # the model and its captured layers: what torch.compile may compile
                capture.reset()
                logits = model(preprocess(seen) if preprocess is not None else seen)
                return logits, dict(capture.outputs)
            bar = progress_bar(range(steps), desc=objective.name[:60], disable=not progress, leave=False)
            runner = Runner(forward, compile, prepare=capture.reset, log=(lambda msg: bar.write(f"unitscope featviz: {msg}")) if progress else None)
            for step in bar:
                optimizer.zero_grad(set_to_none=True)
                x = image()
                seen = transforms(x, generators) if transforms is not None else x
                logits, outputs = runner(seen)
                total = objective(Forward(outputs, logits, x)).sum()
                (-total).backward()
                optimizer.step()
                history.append(float(total.detach()))
                runner.plan(steps - 1 - step)
        with torch.no_grad():
            final = image().detach().float().cpu()
    values = score(model, objective, final, preprocess=preprocess, device=device)
    return Rendering(final, history, values)
