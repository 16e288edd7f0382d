"""Reading photos into float batches in [0, 1] (B, 3, H, W): the one image reader of saliency, dissection
and feature visualization. Integers are scaled by their bit depth (8- and 16-bit files and arrays),
floats must already lie in [0, 1]; `skimage:NAME` names a photo bundled with scikit-image."""
from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

# The most pixels an image file may declare (PIL's default Image.MAX_IMAGE_PIXELS, its
# decompression-bomb bound): open_image refuses more from the header, before decoding anything.
MAX_PIXELS = 89_478_485

# photos bundled with scikit-image (no download): what `skimage:NAME` accepts
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(bool): 1.0}


def _skimage_photo(spec: str) -> np.ndarray:
    name = spec.split(":", 1)[1]
    if name not in SKIMAGE_PHOTOS:
        raise ValueError(f"image {spec!r}: unknown scikit-image photo {name!r}; choose among {', '.join(SKIMAGE_PHOTOS)}")
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError(f"image {spec!r} needs scikit-image: pip install scikit-image") from e
    return np.asarray(getattr(skimage.data, name)())


@contextlib.contextmanager
def open_image(path, *, expect=None, exif=False, max_pixels=MAX_PIXELS, what="image"):
    """Open an image file, checking its header before any pixel is decoded; yields a PIL image.

    The size the header declares must hold at most max_pixels pixels and, when expect=(h, w) is
    given, be exactly h x w (a mismatch is refused without decoding). exif=True applies the photo's
    EXIF orientation (PIL.ImageOps.exif_transpose: a phone photo comes out upright; this decodes it).
    Every image file unitscope reads goes through here. Raises FileNotFoundError for a missing file,
    ValueError (naming `what` and the path) for an unreadable file or a refused size.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = os.fsdecode(path)
    if not os.path.isfile(path):
        why = "is a directory, not an image file" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(f"{what} {name!r} {why}")
    try:
        with warnings.catch_warnings():  # PIL warns above MAX_IMAGE_PIXELS and raises above twice that
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:  # its message gives the size from the header
        raise ValueError(f"{what} {name!r} declares more than {max_pixels} pixels (the decompression-bomb "
                         f"limit): {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL's errors for broken files
        raise ValueError(f"cannot read {what} {name!r}: {e}") from e
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"{what} {name!r} declares {h}x{w} = {h * w} pixels, more than the limit {max_pixels} "
                             "(a decompression bomb, or too large to read)")
        if expect is not None and (h, w) != tuple(expect):
            raise ValueError(f"{what} {name!r} is {h}x{w}, expected {expect[0]}x{expect[1]}")
        try:
            if exif and im.getexif().get(0x0112, 1) not in (1, None):  # orientation; 1: upright already
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    upright = ImageOps.exif_transpose(im)  # a transposed copy
                with upright:
                    yield upright
                return
            yield im
        except (UnidentifiedImageError, OSError, SyntaxError) as e:  # truncated or corrupt pixel data
            raise ValueError(f"cannot read {what} {name!r}: {e}") from e


def _pil_to_array(im) -> np.ndarray:
    """A PIL image -> an array keeping its bit depth: uint8/uint16 (H, W) or (H, W, 3|4), or float32 (H, W)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":  # 32-bit integer pixels: Pillow's mode for 16-bit PNGs in some versions
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"32-bit integer images are not supported (values in [{arr.min()}, {arr.max()}]); "
                             "save the image with 8 or 16 bits per channel")
        return arr.astype(np.uint16)
    if mode == "F":
        return np.asarray(im, dtype=np.float32)
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(im)
    # 1, P, PA, LA, CMYK, YCbCr, HSV, LAB...: 8 bits per channel once converted
    return np.asarray(im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB"))


def read_image(image, *, exif=True, expect=None) -> np.ndarray:
    """Any image form -> float32 array (H, W, 3) in [0, 1].

    image: a file path (any format Pillow reads; 8- or 16-bit, grayscale, palette, RGB, RGBA), the
    string `skimage:NAME` for a photo bundled with scikit-image (SKIMAGE_PHOTOS), a PIL image, or an
    array (H, W) / (H, W, 1|3|4) of uint8 (scaled by 1/255), uint16 (1/65535), bool, or floats in
    [0, 1]. Grayscale is repeated to 3 channels; an alpha channel is dropped.
    A file's header is checked before decoding (open_image: at most MAX_PIXELS pixels, exactly
    expect=(H, W) when given); exif=True turns a photo upright by its EXIF orientation.
    Raises FileNotFoundError for a missing file, ValueError for an unreadable file or bad values.
    """
    from PIL import Image

    if isinstance(image, str) and image.startswith("skimage:") and not os.path.exists(image):
        arr = _skimage_photo(image)
    elif isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        with open_image(image, expect=expect, exif=exif) as im:
            im.load()
            arr = _pil_to_array(im)
    elif isinstance(image, Image.Image):
        arr = _pil_to_array(image)
    else:
        arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with H, W >= 1, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype in _SCALE:
        return (arr.astype(np.float32) / np.float32(_SCALE[arr.dtype])).astype(np.float32)
    if arr.dtype.kind != "f":
        raise ValueError(f"image values must be uint8, uint16, bool or floats in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("image values must be finite, got NaN or inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"float image values must lie in [0, 1], got [{lo:g}, {hi:g}]"
                         + ("; divide 8-bit values by 255" if hi <= 255 else ""))
    return arr


def load_image(image, size=None) -> torch.Tensor:
    """A photo as a float32 batch (1, 3, H, W) in [0, 1] (see read_image for the accepted forms).

    size: (H, W) or int to resize to (bilinear with antialiasing), or None to keep the size.
    """
    x = torch.from_numpy(np.ascontiguousarray(read_image(image))).permute(2, 0, 1)[None]
    return resize_image(x, size) if size is not None else x.contiguous()


def resize_image(x: torch.Tensor, size) -> torch.Tensor:
    """x (B, C, H, W) float in [0, 1] -> (B, C, *size), bilinear with antialiasing (like PIL's), in [0, 1].
    size: (H, W) or int."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x.contiguous()
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1).contiguous()
