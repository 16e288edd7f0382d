"""Dataset examples (Zeiler & Fergus 2014; the lecture's "approach 1"): the images of a dataset that
activate each unit most and least, and the receptive-field patch around each one's peak. One pass
over the data keeps O(units x k) state (dissect.topk.TopKImages, unchanged); the few images shown
are read back from the dataset when asked for."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from unitscope._progress import progress_bar
from unitscope.dissect.topk import TopKImages
from unitscope.featviz._loop import frozen, resolve_preprocess
from unitscope.hooks import LayerCapture

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolder(torch.utils.data.Dataset):
    """Every image file under `root` (sorted by relative path), as Tensor[3, size, size] in [0, 1]."""

    def __init__(self, root, size: int = 224):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"dataset folder {str(root)!r} is not a directory")
        self.size = size
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"dataset folder {str(root)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from unitscope.models.images import load_image

        try:
            return load_image(self.files[i], self.size)[0]
        except Exception as e:  # PIL raises many types for broken files
            raise ValueError(f"cannot read image {self.files[i]}: {e}") from e


def _image_of(item) -> torch.Tensor:
    """The image of a dataset item or batch: a Tensor, the first entry of a tuple/list, or item['image']."""
    if isinstance(item, dict):
        if "image" not in item:
            raise TypeError(f"a dataset item that is a dict needs an 'image' entry, got keys {sorted(item)}")
        item = item["image"]
    elif isinstance(item, (tuple, list)):
        item = item[0]
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"dataset items must be image tensors (3, H, W), (image, ...) or dicts with 'image', "
                        f"got {type(item).__name__}")
    return item


def _collate(items):
    images = [_image_of(it) for it in items]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size {sorted(shapes)}; resize them to one size")
    return torch.stack(images)


def _source(dataset, size, batch_size, num_workers):
    """(map-style dataset, loader over it in index order)."""
    if isinstance(dataset, (str, os.PathLike)):
        if (Path(dataset) / "index.csv").is_file():
            from unitscope.data import BrodenDataset
            dataset = BrodenDataset(dataset, resolution=size).with_fields("image")
        else:
            dataset = ImageFolder(dataset, size)
    if isinstance(dataset, torch.utils.data.DataLoader):
        if isinstance(dataset.dataset, torch.utils.data.IterableDataset) or not isinstance(
                dataset.sampler, torch.utils.data.SequentialSampler):
            raise ValueError("a DataLoader must read a map-style dataset in order (shuffle=False, no sampler), "
                             "so that the examples can be read back by index")
        return dataset.dataset, dataset
    if isinstance(dataset, torch.utils.data.IterableDataset) or not (
            hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(f"dataset must be a folder (Broden or images), a map-style torch Dataset or a DataLoader "
                        f"over one, got {type(dataset).__name__}")
    return dataset, torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                                num_workers=num_workers, collate_fn=_collate)


def _gradient_box(model, name, preprocess, device, size, samples):
    """Bounding box (y0, x0, y1, x1) of the input pixels with a gradient from the centre position's
    channels (None if none), the centre (cy, cx) and the stride (sy, sx) at input `size`."""
    h_in, w_in = size
    x = torch.rand(samples, 3, h_in, w_in, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    with frozen(model), LayerCapture(model, [name]) as cap:
        model(preprocess(x) if preprocess is not None else x)
        a = cap.outputs[name]
        if a.dim() != 4:
            raise ValueError(f"layer {name!r} gives outputs of shape {tuple(a.shape)}; a receptive field needs "
                             "(B, K, h, w) maps")
        h, w = a.shape[-2:]
        cy, cx = h // 2, w // 2
        a[:, :, cy, cx].sum().backward()
    seen = x.grad.abs().sum(dim=(0, 1)) > 0
    if not seen.any():
        return None, (cy, cx), (h_in / h, w_in / w)
    rows, cols = seen.any(dim=1).nonzero()[:, 0], seen.any(dim=0).nonzero()[:, 0]
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1), (cy, cx), (h_in / h, w_in / w)


def receptive_field(model, layer, size, *, preprocess="imagenet", device=None, samples: int = 2,
                    max_scale: int = 4) -> dict:
    """The input region that the centre unit of `layer` sees, measured by gradient: the bounding box
    of the pixels where d(sum of the layer's channels at the centre position)/d(input) is not zero,
    over `samples` uniform-noise images of `size` (H, W). This is the field the network actually
    uses (it can be smaller than the theoretical one where activations clip, never larger). When the
    box reaches the image border the field is wider than the image: it is measured again on inputs
    2x, 4x ... up to max_scale x larger (a fully convolutional model takes them).

    Returns a dict: box (y0, x0, y1, x1) of the centre unit in pixels of a `size` image (may extend
    past it), centre (cy, cx) its map position, stride (sy, sx) = input size / map size, method
    "gradient"; or method "stride" and a one-stride box when no gradient reaches the input.
    """
    preprocess = resolve_preprocess(preprocess)
    name = LayerCapture(model, layer).spec  # a bad name (or '@k') fails here, with the close names
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = tuple(size)
    box, (cy, cx), (sy, sx) = _gradient_box(model, name, preprocess, device, size, samples)
    if box is None:
        y0, x0 = round(cy * sy), round(cx * sx)
        return {"box": (y0, x0, round(y0 + sy), round(x0 + sx)), "centre": (cy, cx), "stride": (sy, sx),
                "method": "stride"}
    # extents measured from the centre cell's middle, so that they carry over between input sizes
    big, (by, bx), (bsy, bsx), scale = box, (cy, cx), (sy, sx), 1
    while scale < max_scale and (big[0] == 0 or big[1] == 0 or big[2] == size[0] * scale or big[3] == size[1] * scale):
        scale *= 2
        found = _gradient_box(model, name, preprocess, device, (size[0] * scale, size[1] * scale), samples)
        if found[0] is None:
            break
        big, (by, bx), (bsy, bsx) = found
    mid_y, mid_x = (by + 0.5) * bsy, (bx + 0.5) * bsx
    up, left, down, right = mid_y - big[0], mid_x - big[1], big[2] - mid_y, big[3] - mid_x
    my, mx = (cy + 0.5) * sy, (cx + 0.5) * sx
    return {"box": (round(my - up), round(mx - left), round(my + down), round(mx + right)), "centre": (cy, cx),
            "stride": (sy, sx), "method": "gradient"}


@dataclass
class DatasetExamples:
    """Per unit (row i = units[i]) the k most and least activating images of a dataset.

    top_values, bottom_values (Tensor[U, k] float32): the unit's score per image (its maximum or
    mean over positions, see `reduce`), highest first / lowest first; top_index, bottom_index
    (Tensor[U, k] int64): dataset indices (-1 where the dataset had fewer than k images);
    top_boxes, bottom_boxes (Tensor[U, k, 4] int64 (y0, x0, y1, x1), clipped to the image, or None
    without patches): the receptive field around the unit's peak (top) / trough (bottom) position.
    """
    layer: str
    units: list
    reduce: str
    top_values: torch.Tensor
    top_index: torch.Tensor
    bottom_values: torch.Tensor
    bottom_index: torch.Tensor
    top_boxes: torch.Tensor | None
    bottom_boxes: torch.Tensor | None
    receptive_field: dict | None
    dataset: object

    def _row(self, unit: int, which: str) -> int:
        if which not in ("top", "bottom"):
            raise ValueError(f"which must be 'top' or 'bottom', got {which!r}")
        if unit not in self.units:
            raise ValueError(f"unit {unit} was not collected; units are {self.units[:10]}"
                             + ("..." if len(self.units) > 10 else ""))
        return self.units.index(unit)

    def indices(self, unit: int, which: str = "top") -> list[int]:
        """Dataset indices of the unit's examples, best (top) or worst (bottom) first."""
        row = self._row(unit, which)
        return [i for i in getattr(self, f"{which}_index")[row].tolist() if i >= 0]

    def values(self, unit: int, which: str = "top") -> torch.Tensor:
        row = self._row(unit, which)
        return getattr(self, f"{which}_values")[row, : len(self.indices(unit, which))]

    def images(self, unit: int, which: str = "top") -> torch.Tensor:
        """The examples read back from the dataset: Tensor[n, 3, H, W] in [0, 1]."""
        return torch.stack([_image_of(self.dataset[i]) for i in self.indices(unit, which)])

    def patches(self, unit: int, which: str = "top", size: int | None = None) -> list:
        """The receptive-field crops (each Tensor[3, h, w]), or resized to size x size if given."""
        if self.top_boxes is None:
            raise ValueError("no patches: dataset_examples ran with patch=False")
        row = self._row(unit, which)
        boxes = getattr(self, f"{which}_boxes")[row]
        out = []
        for image, (y0, x0, y1, x1) in zip(self.images(unit, which), boxes.tolist()):
            crop = image[:, y0:y1, x0:x1]
            if size is not None:
                crop = torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear",
                                                       align_corners=False, antialias=True)[0].clamp(0, 1)
            out.append(crop)
        return out


def _ranked(a: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Maps (B, U, h, w) whose maximum is `score` (B, U) and sits where a's maximum does. TopKImages
    ranks by a map's maximum, so each map is shifted by score - max (subtracting first, the shifted
    maximum is the score exactly), and the kept maps still locate the peak."""
    return (a - a.amax(dim=(2, 3), keepdim=True)) + score[..., None, None]


def _boxes(maps: torch.Tensor, rf: dict, image_size) -> torch.Tensor:
    """Receptive-field boxes (U, k, 4) around each map's maximum, clipped to the image."""
    u, k, h, w = maps.shape
    peak = maps.reshape(u, k, -1).argmax(dim=2)
    py, px = (peak // w).double(), (peak % w).double()
    (y0, x0, y1, x1), (cy, cx), (sy, sx) = rf["box"], rf["centre"], rf["stride"]
    dy, dx = (py - cy) * sy, (px - cx) * sx
    H, W = image_size
    return torch.stack([(y0 + dy).round().clamp(0, H), (x0 + dx).round().clamp(0, W),
                        (y1 + dy).round().clamp(0, H), (x1 + dx).round().clamp(0, W)], dim=2).long()


def dataset_examples(model, layer, dataset, k: int = 9, units=None, *, preprocess="imagenet", patch: bool = True,
                     reduce: str = "max", size: int = 224, batch_size: int = 32, num_workers: int = 0, device=None,
                     progress: bool = True) -> DatasetExamples:
    """The k images of `dataset` that activate each unit of `layer` most, and the k that do least.

    Args:
        model: the network (eval mode for the duration, no gradients).
        layer: module name (as in model.named_modules()), "name@k" for the k-th call (from 0) of a
            module that runs several times per forward, or the module.
        dataset: a Broden folder (has index.csv), a folder of images (read recursively, resized to
            size x size), a map-style torch Dataset whose items are images (3, H, W) in [0, 1],
            (image, ...) tuples or dicts with 'image', or a DataLoader over one that keeps its order.
        k: examples kept per unit, each way. units: channel indices (default: all).
        preprocess: maps the [0, 1] batch to the model input, as in render() ("imagenet" default).
        patch: also find each example's receptive-field patch (receptive_field(): measured by
            gradient on noise) around the unit's peak position.
        reduce: "max" (the default, as dissection's top images) or "mean" over positions: how one
            image's map becomes the unit's score.
    Memory: O(units x k x map size) (the maps of the kept images, for the patches); images are not
        kept, they are read back from the dataset by DatasetExamples.images()/patches().
    Ties go to the lower dataset index. Returns a DatasetExamples.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    name = LayerCapture(model, layer).spec  # a bad name (or '@k') fails here, with the close names
    pre = resolve_preprocess(preprocess)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ds, loader = _source(dataset, size, batch_size, num_workers)
    top = bottom = None
    seen, image_size = 0, None
    with frozen(model), torch.no_grad(), LayerCapture(model, [name], detach=True) as cap:
        for batch in progress_bar(loader, desc=f"dataset examples {name}", unit="batch", disable=not progress,
                                  leave=False):
            x = _image_of(batch)
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"dataset batches must be images (B, 3, H, W), got shape {tuple(x.shape)}")
            if image_size is None:
                image_size = tuple(x.shape[-2:])
            elif tuple(x.shape[-2:]) != image_size:
                raise ValueError(f"images must all have one size: got {tuple(x.shape[-2:])} after {image_size}")
            cap.reset()
            x = x.to(device, torch.float32)
            model(pre(x) if pre is not None else x)
            a = cap.outputs[name]
            a = a[:, :, None, None] if a.dim() == 2 else a
            if a.dim() != 4:
                raise ValueError(f"layer {name!r} gives outputs of shape {tuple(a.shape)}, expected (B, K, h, w)")
            if top is None:
                units = _check_units(units, a.shape[1], name)
                top = TopKImages(len(units), k, tuple(a.shape[-2:]), device=a.device)
                bottom = TopKImages(len(units), k, tuple(a.shape[-2:]), device=a.device)
            a = a[:, units].float()
            index = torch.arange(seen, seen + a.shape[0])
            score = a.amax(dim=(2, 3)) if reduce == "max" else a.mean(dim=(2, 3))
            top.update(_ranked(a, score), index)
            bottom.update(_ranked(-a, -score), index)          # the lowest scores, around each trough
            seen += a.shape[0]
    if top is None:
        raise ValueError("dataset is empty")
    rf = receptive_field(model, name, image_size, preprocess=pre, device=device) if patch else None
    top_boxes = _boxes(top.maps, rf, image_size).cpu() if patch else None
    bottom_boxes = _boxes(bottom.maps, rf, image_size).cpu() if patch else None
    return DatasetExamples(name, units, reduce, top.values.cpu(), top.index.cpu(), -bottom.values.cpu(),
                           bottom.index.cpu(), top_boxes, bottom_boxes, rf, ds)


def _check_units(units, num: int, layer: str) -> list[int]:
    if units is None:
        return list(range(num))
    units = [units] if isinstance(units, int) else list(units)
    bad = [u for u in units if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < num]
    if bad or not units:
        raise ValueError(f"units must be channel indices of layer {layer!r} in [0, {num}), got {bad or units}")
    return units

