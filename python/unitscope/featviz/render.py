"""The render loop of feature visualization: gradient ascent on an image parameterization towards
an objective, through random transforms (Olah, Mordvintsev & Schubert, Distill 2017)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unitscope.featviz import transforms as T
from unitscope.featviz.objectives import Forward, Objective
from unitscope.featviz.param import make_image
from unitscope.hooks import LayerCapture
from unitscope.models import IMAGENET_MEAN, IMAGENET_STD, Normalize



@dataclass
class Rendering:
    images: torch.Tensor               # (B, 3, H, W) float32 in [0, 1], on the CPU
    history: list = field(default_factory=list)  # objective value (batch sum) at every step


def render(model: nn.Module, objective: Objective, *, size=128, batch: int = 1, param: str = "fourier",
           decorrelate: bool = True, transforms="standard", steps: int = 256, lr: float = 0.05,
           preprocess="imagenet", device=None, seed: int = 0, progress: bool = False) -> Rendering:
    """Optimize an image (batch of `batch`) to maximize `objective` (negate it to minimize).

    Args:
        model: the network; put in eval mode for the duration, its weights are not changed.
        objective: e.g. objectives.channel("_blocks.10", 3); combine with + - * and unary -.
        size (int or (H, W)): image size.
        param ("fourier" | "pixel"): parameterization; decorrelate: optimize in decorrelated colour.
        transforms ("standard", None, or a callable (image, generator) -> image): random robustness
            transforms applied at every step.
        preprocess: maps the [0, 1] image to the model's input: "imagenet" (mean/std, the default),
            None (the model takes [0, 1] images), or a callable such as models.load(name).preprocess.
        seed: seeds the initial parameters and the transforms; same seed, same result on one machine.
    Returns:
        Rendering with images (B, 3, H, W) in [0, 1] and the objective's history.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a unitscope.featviz Objective, got {type(objective).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or min(hw) < 8:
        raise ValueError(f"size must be an int or (H, W) of at least 8 pixels, got {size!r}")
    if isinstance(preprocess, str):
        if preprocess != "imagenet":
            raise ValueError(f"preprocess must be 'imagenet', None or a callable, got {preprocess!r}")
        preprocess = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if transforms == "standard":
        transforms = T.standard()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    image = make_image(param, batch, hw, decorrelate, generator=generator).to(device)
    optimizer = torch.optim.Adam(image.parameters(), lr=lr)

    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    history = []
    try:
        with LayerCapture(model, sorted(set(objective.layers))) as capture:
            iterator = range(steps)
            if progress:
                from tqdm import tqdm
                iterator = tqdm(iterator, desc=objective.name)
            for _ in iterator:
                optimizer.zero_grad(set_to_none=True)
                capture.reset()
                x = image()
                seen = transforms(x, generator) if transforms is not None else x
                logits = model(preprocess(seen) if preprocess is not None else seen)
                score = objective(Forward(dict(capture.outputs), logits, x)).sum()
                (-score).backward()
                optimizer.step()
                history.append(float(score.detach()))
        with torch.no_grad():
            final = image().detach().float().cpu()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return Rendering(final, history)
