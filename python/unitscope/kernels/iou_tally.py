"""unitscope.IoUTally: dataset-wide intersection/union counts between thresholded, upsampled unit
maps and concept labels, the statistic of network dissection (Bau et al., CVPR 2017). Counts are
int64 and exact; batches, backends and processes combine by addition (merge, state_dict).
"""
from __future__ import annotations

import threading

import torch

from unitscope import _backend
from unitscope import _tensors as T
from unitscope._checks import check_threshold_op, check_union
from unitscope.kernels import _state as S
from unitscope.kernels._lock import Locked
from unitscope.kernels.tally import UNION_MODES, TallyConfig, check_batch

_COUNTS = ("intersection", "activation", "label", "activation_total")


class IoUTally(Locked):
    """Accumulates, over a dataset, for unit k and label c:

    - intersection (Tensor[K, C] int64): pixels where unit k's mask and label c coincide;
    - activation (Tensor[K, num_categories] int64): pixels of unit k's mask in images annotated for
      the category (union="category", the original Network Dissection), in every image
      (union="dataset"), or in images where a pixel of the mask carries a label of the category or
      the image has an image label of it (union="mask", NetDissect-Lite's; `annotated` unused);
    - label (Tensor[C] int64): pixels of label c; activation_total (Tensor[K] int64); images (int).

    Unit k's mask in an image is bilinear_resize(A_k, out_size) > thresholds[k] (or >=), resized as
    unitscope.reference.bilinear_resize (F.interpolate's index and weight rules, float32). Labels are
    1..C-1, 0 = none; one label counts once at a pixel however many maps carry it; an image label
    covers every pixel. Without `annotated`, a category counts as annotated in an image where any of
    its labels occurs.

    Args:
        num_units (int): K, the number of units.
        num_labels (int): C, including the empty label 0.
        label_category (Tensor[C] int): category of each label (entry 0 unused).
        num_categories (int): number of categories.
        out_size (int or (S_h, S_w)): the label resolution.
        align_corners (bool): of the bilinear resize of the maps, as in F.interpolate (default False).
        threshold_op (">" or ">="): the mask is resized map > threshold, or >= (default ">").
        union ("category", "dataset" or "mask"): which images' mask pixels the activation counts
            (default "category"; see above and docs/guide-dissection.md).
        device: where the counters live and the batches must be (default: cpu, cuda for backend="cuda");
            a bare "cuda" means the current CUDA device when the tally is built.
        backend ("cuda" | "cpp" | "numba" | "torch" | None): None picks by device.
        num_threads (int, optional): CPU threads in [1, max(64, 4 x cores)]; default
            torch.get_num_threads().
    """

    def __init__(self, num_units: int, num_labels: int, *, label_category: T.ArrayLike, num_categories: int,
                 out_size: T.Size2D, align_corners: bool = False, threshold_op: str = ">", union: str = "category",
                 device: T.DeviceLike = None, backend: str | None = None, num_threads: int | None = None) -> None:
        for name, v in (("num_units", num_units), ("num_labels", num_labels), ("num_categories", num_categories)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        check_threshold_op(threshold_op)
        check_union(union)
        self.device = T.state_device(device, backend)
        self.backend = _backend.select_backend(backend, self.device, "IoUTally")
        self.num_threads = None if num_threads is None else _backend.num_threads(num_threads)
        cat, _ = T.as_tensor(label_category, "label_category")
        T.check_int(cat, "label_category")
        T.check_shape(cat, (num_labels,), "label_category", "(num_labels,)")
        cat = cat.to(device=self.device, dtype=torch.int64).contiguous()
        if num_labels > 1:
            lo, hi = int(cat[1:].min()), int(cat[1:].max())
            if lo < 0 or hi >= num_categories:
                raise ValueError(f"label_category must hold categories in [0, num_categories) = "
                                 f"[0, {num_categories}) for labels 1..{num_labels - 1}, got {lo if lo < 0 else hi}")
        self._cfg = TallyConfig(num_units, num_labels, num_categories, T.size_2d(out_size, "out_size"),
                                bool(align_corners), threshold_op, union, cat)
        z = lambda *shape: torch.zeros(shape, dtype=torch.int64, device=self.device)  # noqa: E731
        self.intersection = z(num_units, num_labels)
        self.activation = z(num_units, num_categories)
        self.label = z(num_labels)
        self.activation_total = z(num_units)
        self.images = 0
        self._lock = threading.RLock()

    # -- configuration ---------------------------------------------------------------------------
    @property
    def num_units(self) -> int:
        return self._cfg.num_units

    @property
    def num_labels(self) -> int:
        return self._cfg.num_labels

    @property
    def num_categories(self) -> int:
        return self._cfg.num_categories

    @property
    def label_category(self) -> torch.Tensor:
        return self._cfg.label_category

    def config(self) -> dict:
        """The arguments that define what the counts mean (plain Python values)."""
        c = self._cfg
        return {"num_units": c.num_units, "num_labels": c.num_labels, "num_categories": c.num_categories,
                "out_size": list(c.out_size), "align_corners": c.align_corners, "threshold_op": c.threshold_op,
                "union": c.union, "label_category": c.label_category.cpu().tolist()}

    # -- counting --------------------------------------------------------------------------------
    def update(self, activations: T.ArrayLike, thresholds: T.ArrayLike, pixel_labels: T.ArrayLike | None = None,
               image_labels: T.ArrayLike | None = None, annotated: T.ArrayLike | None = None) -> IoUTally:
        """Count one batch.

        Args:
            activations (Tensor[B, K, h, w], any float dtype): the layer's output.
            thresholds (Tensor[K], float): per-unit thresholds (no NaN), compared exactly.
            pixel_labels (Tensor[B, L, S_h, S_w], uint8/int16/int32/int64, optional): label maps.
            image_labels (Tensor[B, L2], same dtypes, optional): labels covering the whole image.
            annotated (Tensor[B, num_categories] bool, optional): categories annotated per image.

        A batch that fails a check raises ValueError/TypeError and changes no count.
        """
        # the label range (and NaN thresholds, when traced) are checked by the operator, before it counts
        batch = check_batch(self._cfg, self.device, activations, thresholds, pixel_labels, image_labels, annotated,
                            check_label_range=False)
        c = self._cfg
        with self._locked():
            torch.ops.unitscope.tally_(batch.activations, batch.thresholds32, batch.pixel_labels, batch.image_labels,
                                       batch.annotated, c.label_category, self.intersection, self.activation,
                                       self.label, self.activation_total, c.out_size[0], c.out_size[1],
                                       c.align_corners, c.threshold_op == ">=", UNION_MODES[c.union], self.backend,
                                       self.num_threads)
            self.images += int(batch.activations.shape[0])
        return self

    def _counts(self) -> dict:
        return {k: getattr(self, k) for k in _COUNTS}

    def iou(self) -> torch.Tensor:
        """Tensor[K, C] float64: intersection / (activation[k, cat(c)] + label[c] - intersection),
        0 where the denominator is 0 (label 0's column is 0)."""
        cat = self._cfg.label_category.clone()
        cat[0] = 0
        with self._locked():
            inter = self.intersection.to(torch.float64)
            denom = self.activation[:, cat].to(torch.float64) + self.label.to(torch.float64)[None, :] - inter
        out = torch.where(denom > 0, inter / torch.where(denom > 0, denom, torch.ones_like(denom)),
                          torch.zeros_like(denom))
        out[:, 0] = 0.0
        return out

    # -- combining -------------------------------------------------------------------------------
    def _check_compatible(self, config: dict, what: str) -> None:
        mine = self.config()
        if not isinstance(config, dict):
            raise TypeError(f"{what}: config must be a dict from IoUTally.config(), got {type(config).__name__}")
        unknown = [k for k in config if not (isinstance(k, str) and k in mine)]
        if unknown:
            raise ValueError(f"{what}: config has unknown key(s) {[repr(k)[:40] for k in unknown]}")
        diff = [k for k in mine if not S.same_plain(config.get(k), mine[k])]
        if diff:
            k = diff[0]
            theirs = config.get(k)
            if k == "label_category":
                raise ValueError(f"{what}: label_category differs from this tally's")
            raise ValueError(f"{what}: {k} is {theirs!r}, this tally has {mine[k]!r}")

    def merge(self, other: IoUTally) -> IoUTally:
        """Add another tally's counts (same configuration; e.g. another process or data shard)."""
        if not isinstance(other, IoUTally):
            raise TypeError(f"merge expects an IoUTally, got {type(other).__name__}")
        self._check_compatible(other.config(), "merge")
        with other._locked():  # a snapshot first: other may be self, or updated by another thread
            theirs = {k: getattr(other, k).to(self.device, copy=True) for k in _COUNTS}
            images = other.images
        with self._locked():
            for k in _COUNTS:
                getattr(self, k).add_(theirs[k])
            self.images += images
        return self

    def state_dict(self) -> dict:
        """{'config': plain values, 'intersection', 'activation', 'label', 'activation_total': int64
        tensors (cloned, on the tally's device), 'images': int64 0-d tensor, 'digest' (kernels/_state.py)}."""
        out: dict[str, object] = {"config": self.config()}
        with self._locked():
            for k in _COUNTS:
                out[k] = getattr(self, k).clone()
            out["images"] = torch.tensor(self.images, dtype=torch.int64)
        return S.with_digest(out)

    def load_state_dict(self, state: dict) -> None:
        """Replace the counts with those of a state_dict() from a tally with the same configuration.

        Every field is checked (ValueError/TypeError naming it) before any count changes: keys, the
        configuration, int64 tensors of the right shapes on the cpu or the tally's device, and the
        invariants of counts a tally produces: all in [0, 2^62]; label[0] and intersection[:, 0] are
        0; label[c] and activation_total[k] at most images * S_h * S_w; intersection[k, c] at most
        label[c] and activation_total[k]; activation[k, :] at most activation_total[k] (equal to it
        with union="dataset"); with union="mask", intersection[k, c] at most activation[k, category
        of c]; then the digest."""
        what = "IoUTally"
        S.check_keys(state, ("config", *_COUNTS, "images"), what)
        self._check_compatible(state["config"], "load_state_dict")
        new = {k: S.tensor(state, k, what, tuple(getattr(self, k).shape), torch.int64, self.device) for k in _COUNTS}
        images = S.tensor(state, "images", what, (), torch.int64, self.device)
        for k in (*_COUNTS, "images"):
            S.check_range(new.get(k, images), k, what, 0, S.MAX_COUNT)
        inter, act, label, total = (new[k] for k in _COUNTS)
        pixels = int(images) * self._cfg.out_size[0] * self._cfg.out_size[1]
        cat = self._cfg.label_category.clone()
        cat[0] = 0  # label 0's column is checked to be 0 above
        S.check_range(label, "label", what, 0, min(pixels, S.MAX_COUNT))
        S.check_range(total, "activation_total", what, 0, min(pixels, S.MAX_COUNT))
        S.check_range(label[:1], "label", what, 0, 0)
        S.check_range(inter[:, :1], "intersection", what, 0, 0)
        for key, bad, bound in (("intersection", inter > label[None, :], "<= label[c]"),
                                ("intersection", inter > total[:, None], "<= activation_total[k]"),
                                ("activation", act > total[:, None], "<= activation_total[k]"),
                                ("activation", (act != total[:, None]) & (self._cfg.union == "dataset"),
                                 "== activation_total[k] (union='dataset')"),
                                ("intersection", (inter > act[:, cat]) & (self._cfg.union == "mask"),
                                 "<= activation[k, category of c] (union='mask')")):
            pos = S.first_bad(bad)
            if pos is not None:
                S.fail(what, key, f"= {int(new[key][pos])} must be {bound}", pos)
        S.check_digest(state, what)
        with self._locked():
            for k, t in new.items():
                setattr(self, k, t.to(self.device))
            self.images = int(images)

    def __repr__(self) -> str:
        c = self._cfg
        return (f"IoUTally(num_units={c.num_units}, num_labels={c.num_labels}, num_categories={c.num_categories}, "
                f"out_size={c.out_size}, threshold_op={c.threshold_op!r}, union={c.union!r}, "
                f"backend={self.backend!r}, images={self.images})")
