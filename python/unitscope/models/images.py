"""Reading photos into float batches in [0, 1] (B, 3, H, W) for the models in this registry."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def load_image(image, size=None) -> torch.Tensor:
    """A photo as a float32 batch (1, 3, H, W) in [0, 1].

    image: a file path, a PIL image, or an array (H, W, 3) / (H, W) of uint8 (0..255) or floats in [0, 1].
    size: (H, W) or int to resize to (bilinear with antialiasing), or None to keep the size.
    """
    from PIL import Image

    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        with Image.open(image) as im:
            arr = np.asarray(im.convert("RGB"))
    elif isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {arr.shape}")
    arr = arr[:, :, :3]
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)[None]
    x = x.float() / 255.0 if arr.dtype == np.uint8 else x.float()
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x
