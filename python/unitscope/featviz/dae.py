"""A learned image prior for feature visualization: a small convolutional denoising autoencoder
(trained by tools/train_dae.py, weights shipped in featviz/weights/dae.pt) whose residual
D(x) - x points towards natural images, used as a regularizer in the plug-and-play style."""
from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from unitscope.featviz.objectives import Objective

FORMAT = "unitscope-dae"
VERSION = 1


class DenoisingAutoencoder(nn.Module):
    """D(x) = x + f(x) for images x (B, 3, H, W) float in [0, 1], any H, W >= 2.

    f: a 3x3 convolution at full resolution, three at half resolution (stride 2), bilinear upsampling
    and a 3x3 convolution over [upsampled, full-resolution] features to the 3-channel residual.
    Trained on natural-image patches with Gaussian noise, D(x) - x estimates sigma^2 times the score
    grad log p(x) of the (noise-smoothed) image distribution (Alain & Bengio 2014).
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.enc = nn.Conv2d(3, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.mid1 = nn.Conv2d(width, width, 3, padding=1)
        self.mid2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(2 * width, 3, 3, padding=1)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = D(x) - x, (B, 3, H, W) like x."""
        e = F.relu(self.enc(x))
        d = F.relu(self.down(e))
        d = F.relu(self.mid2(F.relu(self.mid1(d))))
        u = F.interpolate(d, size=e.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(torch.cat([u, e], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


def default_weights_path():
    """Where the shipped weights live (inside the installed package)."""
    return resources.files("unitscope.featviz").joinpath("weights", "dae.pt")


def _validate(blob, source: str) -> tuple[int, dict]:
    """Check a loaded weights file's layout before any tensor reaches a model."""
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{source} is not a unitscope DAE weights file (format must be {FORMAT!r})")
    if blob.get("version") != VERSION:
        raise ValueError(f"{source}: unsupported DAE weights version {blob.get('version')!r}, expected {VERSION}")
    width = blob.get("width")
    if not isinstance(width, int) or not 1 <= width <= 256:
        raise ValueError(f"{source}: width must be an int in [1, 256], got {width!r}")
    state = blob.get("state_dict")
    expected = DenoisingAutoencoder(width).state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{source}: state_dict must have keys {sorted(expected)}, got {got}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.shape != expected[k].shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{source}: {k} must be a float tensor of shape {tuple(expected[k].shape)}, got {got}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{source}: {k} holds non-finite values")
    return width, state


def load_dae(path=None) -> DenoisingAutoencoder:
    """The denoising autoencoder from `path` (default: the weights shipped with unitscope), validated,
    as a float32 model in eval mode with frozen parameters."""
    if path is None:
        with resources.as_file(default_weights_path()) as p:
            return _load(str(p))
    return _load(str(path))


@lru_cache(maxsize=4)
def _load(path: str) -> DenoisingAutoencoder:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"DAE weights file {path!r} does not exist") from None
    except Exception as e:  # an unpickling error, a truncated or foreign file
        raise ValueError(f"{path!r} could not be read as DAE weights: {e}") from None
    width, state = _validate(blob, repr(path))
    model = DenoisingAutoencoder(width)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reconstruction_error(images: torch.Tensor, dae: DenoisingAutoencoder | None = None) -> torch.Tensor:
    """Mean squared residual |D(x) - x|^2 per image, (B,) float32: how far the DAE would move each
    image, i.e. how unlike the natural patches it was trained on it looks. images (B, 3, H, W) in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a tensor (B, 3, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    dae = load_dae() if dae is None else dae
    with torch.no_grad():
        x = images.float()
        r = dae.to(x.device).residual(x)
    return (r ** 2).mean(dim=(1, 2, 3))


def dae_prior(weight: float = 1.0, dae: DenoisingAutoencoder | None = None) -> Objective:
    """The denoising-autoencoder prior as a term to add to an objective: `channel(...) + dae_prior(4.0)`.

    Its gradient with respect to each image is weight * (D(x) - x), the DAE's residual, which
    estimates sigma^2 times the score of the natural-image distribution; ascent on it moves the image
    towards what the DAE considers natural, the prior term of plug-and-play generative networks
    (x += eps1 * (D(x) - x) + eps2 * d objective / dx, Nguyen et al. 2017). The gradient does not
    flow through D. Its value is 0, so the render's history is that of the rest of the objective.

    weight (float > 0): the prior's strength relative to the other terms' gradients (on EfficientNet-
        Lite0 channels 3-10 smooths the image at no cost in activation, 30-100 trades activation for
        an ever flatter image; see docs/guide-featviz.md, "Learned priors").
    dae: a DenoisingAutoencoder (default: the shipped one, load_dae()).
    """
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight must be a finite number > 0, got {weight!r}")
    model = load_dae() if dae is None else dae
    if not isinstance(model, DenoisingAutoencoder):
        raise TypeError(f"dae must be a DenoisingAutoencoder, got {type(model).__name__}")

    def fn(f):
        im = f.image
        with torch.no_grad():
            r = model.to(im.device).residual(im.float()).to(im.dtype)
        # value 0, gradient weight * r: a surrogate whose derivative is the residual
        return weight * (r * (im - im.detach())).sum(dim=(1, 2, 3))
    return Objective(fn, [], f"dae_prior({weight})")
