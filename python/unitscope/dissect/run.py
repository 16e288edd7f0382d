"""unitscope.dissect(): the two-pass network dissection (Bau et al., CVPR 2017).

Pass 1 runs the model once per batch (all layers at once) and feeds ExactQuantile (or
QuantileSketch) and each unit's top-k images; pass 2 feeds IoUTally with the thresholds. When the
activations of pass 1 fit in memory they are kept, and pass 2 reads them instead of running the
model again. Checkpoints after each pass and every `checkpoint_every` batches; under
torch.distributed each rank takes a contiguous shard and states are combined with all_merge.
"""
from __future__ import annotations

import contextlib
import os
import time

import torch

import unitscope
from unitscope._compile import Runner, check_compile
from unitscope.data import BrodenDataset, collate_broden
from unitscope.dissect.capture import LayerCapture
from unitscope.dissect.checkpoint import checkpoint_path, load_checkpoint, model_fingerprint, save_checkpoint
from unitscope.dissect.result import Dissection, LayerDissection
from unitscope.dissect.topk import TopKImages
from unitscope.models import IMAGENET_MEAN, IMAGENET_STD, Normalize

UPSAMPLE = {"bilinear": False, "bilinear-align-corners": True}

# the default preprocess: (B, 3, H, W) float in [0, 1] -> ImageNet mean/std normalized
imagenet_preprocess = Normalize(IMAGENET_MEAN, IMAGENET_STD)


def _describe(fn) -> str:
    """A stable description of a preprocess callable for the checkpoint key (modules: their type
    and a digest of their tensors)."""
    if fn is None:
        return "imagenet"
    if isinstance(fn, torch.nn.Module):
        import hashlib
        h = hashlib.sha256()
        for t in list(fn.parameters()) + list(fn.buffers()):
            h.update(t.detach().cpu().double().numpy().tobytes())
        return f"{type(fn).__module__}.{type(fn).__qualname__}:{h.hexdigest()[:16]}"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _merge_all(obj, world):
    if world == 1:
        return obj
    from unitscope.distributed import all_merge
    merged = all_merge(obj)
    return obj if merged is None else merged


def _check_args(quantile, iou_threshold, threshold_op, union, upsample, batch_size, topk, autocast, cache, compile):
    if not (isinstance(quantile, float) and 0.0 < quantile < 1.0):
        raise ValueError(f"quantile must be a float in (0, 1), got {quantile!r}")
    if not isinstance(iou_threshold, (int, float)) or not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}")
    if threshold_op not in (">", ">="):
        raise ValueError(f"threshold_op must be '>' or '>=', got {threshold_op!r}")
    if union not in ("category", "dataset"):
        raise ValueError(f"union must be 'category' or 'dataset', got {union!r}")
    if upsample not in UPSAMPLE:
        raise ValueError(f"upsample must be one of {sorted(UPSAMPLE)}, got {upsample!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(topk, int) or topk < 0:
        raise ValueError(f"topk must be an int >= 0, got {topk!r}")
    if autocast not in (None, torch.float16, torch.bfloat16):
        raise ValueError(f"autocast must be None, torch.float16 or torch.bfloat16, got {autocast!r}")
    if cache not in ("auto", True, False):
        raise ValueError(f"cache_activations must be 'auto', True or False, got {cache!r}")
    check_compile(compile)


def _as_dataset(dataset, categories) -> BrodenDataset:
    if isinstance(dataset, (str, os.PathLike)):
        return BrodenDataset(dataset, categories=categories)
    if not isinstance(dataset, BrodenDataset):
        raise TypeError(f"dataset must be a BrodenDataset or a dataset folder, got {type(dataset).__name__}")
    if categories is not None and list(categories) != dataset.categories:
        return BrodenDataset(dataset.root, categories=categories, split=dataset.split,
                             resolution=dataset.resolution, packed=dataset._packed_setting)
    return dataset


def _free_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (free + reclaimable cache), else free pages, else 0."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class _Timer:
    def __init__(self, device):
        self.sync = device.type == "cuda"
        self.seconds = {"data": 0.0, "forward": 0.0, "threshold": 0.0, "tally": 0.0}

    @contextlib.contextmanager
    def __call__(self, part):
        if self.sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        yield
        if self.sync:
            torch.cuda.synchronize()
        self.seconds[part] += time.perf_counter() - t


def dissect(model: torch.nn.Module, layers, dataset, *, batch_size: int = 32, device=None,
            quantile: float = 0.995, iou_threshold: float = 0.04, categories=None, threshold_op: str = ">",
            union: str = "category", exact: bool = True, upsample: str = "bilinear", preprocess=None,
            num_workers: int = 0, checkpoint_dir=None, checkpoint_every: int = 50, progress: bool = True,
            topk: int = 8, tokens: bool = False, autocast=None, cache_activations="auto",
            sketch_size: int | None = None, backend: str | None = None, compile="auto") -> Dissection:
    """Network dissection of `layers` of `model` on a Broden-format `dataset`.

    Args:
        model: any torch.nn.Module taking (B, 3, H, W) images; run in eval mode without autograd.
        layers: module name(s) from model.named_modules(); 'name@k' takes the k-th call of a
            module that runs several times per forward.
        dataset: a BrodenDataset (or its folder); images are float in [0, 1].
        quantile: per-unit activation quantile of the raw (not upsampled) maps used as threshold.
        iou_threshold: IoU above which a unit counts as a detector (Dissection.detectors()).
        categories: categories to dissect (default: the dataset's).
        threshold_op: '>' (default) or '>=' for the mask `upsampled > threshold`.
        union: 'category' (a unit's activation counts toward concept c only in images annotated for
            c's category, the original Network Dissection) or 'dataset' (every image).
        exact: ExactQuantile (True) or the bounded-memory QuantileSketch (False, size=sketch_size).
        upsample: 'bilinear' (align_corners=False) or 'bilinear-align-corners'.
        preprocess: maps a (B, 3, H, W) [0, 1] batch to the model input; default ImageNet mean/std.
        checkpoint_dir: where checkpoints go; a run finding its own checkpoint there resumes.
        topk: images kept per unit (by max activation) with their maps for the report.
        tokens: rearrange (B, T, C) outputs (ViT) into (B, C, s, s) maps.
        autocast: None, torch.float16 or torch.bfloat16 for the forward only.
        cache_activations: keep pass-1 activations for pass 2 ('auto': when they need less than a
            third of the free memory) instead of running the model twice.
        compile: run the model through torch.compile: 'auto' (after timing the first batch, when
            the batches to come save clearly more than the compile costs, about 40 s here), True
            or False (the exact eager path; compiled results may differ in the last float bits,
            which can move a threshold and a few pixels). A model that cannot be compiled runs
            eagerly after a one-line warning. A resumed run follows its checkpoint's choice.
    Returns:
        Dissection with one LayerDissection per layer.
    """
    _check_args(quantile, iou_threshold, threshold_op, union, upsample, batch_size, topk, autocast, cache_activations,
                compile)
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    ds = _as_dataset(dataset, categories)
    sizes = {(r.sh, r.sw) for r in ds.rows}
    if len(sizes) != 1:
        raise ValueError(f"dataset label maps differ in size {sorted(sizes)}; dissection needs one (sh, sw)")
    out_size = sizes.pop()
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    preprocess_fn = preprocess or imagenet_preprocess
    rank, world = _dist()
    N = len(ds)
    lo, hi = rank * N // world, (rank + 1) * N // world
    key = {"model": model_fingerprint(model), "layers": layers, "dataset": ds.fingerprint, "images": N,
           "quantile": quantile, "threshold_op": threshold_op, "union": union, "exact": exact,
           "sketch_size": sketch_size, "upsample": upsample, "preprocess": _describe(preprocess),
           "topk": topk, "tokens": tokens, "autocast": str(autocast), "compile": compile, "world_size": world, "rank": rank}
    ckpt = checkpoint_path(checkpoint_dir, rank, world) if checkpoint_dir is not None else None
    state = load_checkpoint(ckpt, key) if ckpt is not None else None
    if state is None:
        state = {"key": key, "stage": "threshold", "done": 0, "shapes": None, "layers": {}}
    timer = _Timer(device)
    was_training = model.training
    model.eval()
    run = _Run(model, layers, ds, device, preprocess_fn, autocast, tokens, batch_size, num_workers,
               progress and rank == 0, timer, (lo, hi), backend)
    try:
        with torch.no_grad(), LayerCapture(model, layers, tokens=tokens) as capture:
            # a resumed run keeps the choice its checkpoint recorded, so one result never mixes both
            setting = state.get("compiled", compile) if compile == "auto" else compile
            log = (lambda msg: _tqdm_write(f"unitscope dissect: {msg}")) if progress and rank == 0 else None
            run.runner = Runner(capture, setting, traced=capture.full, log=log)
            if state["stage"] == "threshold":
                run.threshold_pass(state, ckpt, checkpoint_every, N, quantile, exact, sketch_size, topk, cache_activations)
                state = run.finish_threshold(state, ckpt, quantile, exact, topk, world)
            if state["stage"] == "tally":
                run.tally_pass(state, ckpt, checkpoint_every, threshold_op, union, UPSAMPLE[upsample], out_size)
                state = run.finish_tally(state, ckpt, world)
    finally:
        model.train(was_training)
    settings = {k: key[k] for k in ("quantile", "threshold_op", "union", "exact", "upsample", "topk")}
    settings.update(iou_threshold=iou_threshold, images=N, dataset_root=str(ds.root), compiled=bool(state.get("compiled")))
    results = {}
    for layer in layers:
        ls = state["layers"][layer]
        results[layer] = LayerDissection.from_counts(
            layer, ls["thresholds"], ls["tally"], ls["topk"], label_names=ds.label_names,
            categories=ds.categories, label_category=ds.label_category,
            image_paths=[ds.rows[i].image for i in range(N)], settings=settings)
    return Dissection(results, timings=dict(timer.seconds), settings=settings)


def _tqdm_write(msg):
    from tqdm.auto import tqdm
    tqdm.write(msg)


class _Run:
    """The passes' shared machinery: loaders, the forward, the per-layer states."""

    def __init__(self, model, layers, ds, device, preprocess, autocast, tokens, batch_size, num_workers,
                 progress, timer, shard, backend):
        self.model, self.layers, self.ds, self.device = model, layers, ds, device
        self.preprocess, self.autocast, self.batch_size, self.num_workers = preprocess, autocast, batch_size, num_workers
        self.progress, self.timer, self.shard, self.backend = progress, timer, shard, backend
        self.quant, self.topk, self.tally, self.cache = {}, {}, {}, None
        self.runner = None  # unitscope._compile.Runner over the LayerCapture

    def _loader(self, start, fields, desc):
        lo, hi = self.shard
        view = self.ds.with_fields(*fields)
        subset = torch.utils.data.Subset(view, range(lo + start, hi))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.num_workers, collate_fn=collate_broden,
                                             pin_memory=self.device.type == "cuda")
        if self.progress:
            from tqdm.auto import tqdm
            return tqdm(loader, desc=desc, unit="batch", total=len(loader))
        return loader

    def _batches(self, start, fields, desc):
        it = iter(self._loader(start, fields, desc))
        while True:
            with self.timer("data"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    def forward(self, images):
        with self.timer("forward"):
            x = self.preprocess(images.to(self.device, non_blocking=True))
            ctx = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
            with ctx:
                acts = self.runner(x)
            return {k: (v.float() if v.dtype != torch.float32 else v) for k, v in acts.items()}

    def _make_threshold_states(self, shapes, total_images, quantile, exact, sketch_size, topk):
        for layer in self.layers:
            K, h, w = shapes[layer]
            if exact:
                self.quant[layer] = unitscope.ExactQuantile(K, quantile, total_images * h * w, dim=1,
                                                            device=self.device, backend=self.backend)
            else:
                kw = {} if sketch_size is None else {"size": sketch_size}
                self.quant[layer] = unitscope.QuantileSketch(K, dim=1, device=self.device, seed=0, **kw)
            self.topk[layer] = TopKImages(K, topk, (h, w), device=self.device)

    def _batches_left(self, done):
        """Batches of this rank's shard after `done` images."""
        lo, hi = self.shard
        return -(-max(hi - lo - done, 0) // self.batch_size)

    def _save(self, state, ckpt):
        state["compiled"] = self.runner.compiled
        if ckpt is not None:
            save_checkpoint(ckpt, state)

    def threshold_pass(self, state, ckpt, every, total_images, quantile, exact, sketch_size, topk, cache):
        if state["shapes"] is not None:
            self._make_threshold_states(state["shapes"], total_images, quantile, exact, sketch_size, topk)
            for layer in self.layers:
                self.quant[layer].load_state_dict(state["layers"][layer]["quantile"])
                self.topk[layer].load_state_dict(state["layers"][layer]["topk"])
        lo, hi = self.shard
        want_cache = cache is not False and state["done"] == 0
        for nb, batch in enumerate(self._batches(state["done"], ("image",), "dissect: thresholds"), 1):
            acts = self.forward(batch["image"])
            if state["shapes"] is None:
                state["shapes"] = {k: tuple(v.shape[1:]) for k, v in acts.items()}
                self._make_threshold_states(state["shapes"], total_images, quantile, exact, sketch_size, topk)
            if want_cache and self.cache is None:
                self.cache = self._alloc_cache(state["shapes"], hi - lo, cache)
                want_cache = self.cache is not None
            with self.timer("threshold"):
                for layer, a in acts.items():
                    if tuple(a.shape[1:]) != state["shapes"][layer]:
                        raise ValueError(f"layer {layer!r} gave maps of shape {tuple(a.shape[1:])} for batch "
                                         f"{nb}, earlier {state['shapes'][layer]}: images must share one size")
                    self.quant[layer].update(a)
                    self.topk[layer].update(a, batch["index"])
                    if self.cache is not None:
                        pos = state["done"]
                        self.cache[layer][pos:pos + a.shape[0]].copy_(a)
            state["done"] += batch["index"].numel()
            self.runner.plan(self._batches_left(state["done"]) + (0 if self.cache is not None else self._batches_left(0)))
            if every and nb % every == 0:
                for layer in self.layers:
                    state["layers"][layer] = {"quantile": self.quant[layer].state_dict(),
                                              "topk": self.topk[layer].state_dict()}
                self._save(state, ckpt)

    def _alloc_cache(self, shapes, n, cache):
        need = sum(n * K * h * w * 4 for K, h, w in shapes.values())
        if cache == "auto" and need > _free_memory_bytes() // 3:
            return None
        return {layer: torch.empty((n,) + tuple(shapes[layer]), dtype=torch.float32) for layer in self.layers}

    def finish_threshold(self, state, ckpt, quantile, exact, topk, world):
        with self.timer("threshold"):
            layers = {}
            for layer in self.layers:
                q = _merge_all(self.quant[layer], world)
                t = _merge_all(self.topk[layer], world)
                thr = q.result() if exact else q.quantile(quantile)
                layers[layer] = {"thresholds": thr.detach().float().cpu(), "topk": t.state_dict()}
        state = {"key": state["key"], "stage": "tally", "done": 0, "shapes": state["shapes"], "layers": layers,
                 "compiled": state.get("compiled", False)}
        self._save(state, ckpt)
        return state

    def tally_pass(self, state, ckpt, every, threshold_op, union, align_corners, out_size):
        lc = torch.from_numpy(self.ds.label_category.clip(min=0))
        for layer in self.layers:
            K = state["shapes"][layer][0]
            self.tally[layer] = unitscope.IoUTally(
                K, self.ds.num_labels, label_category=lc.to(self.device), num_categories=len(self.ds.categories),
                out_size=out_size, align_corners=align_corners, threshold_op=threshold_op, union=union,
                device=self.device, backend=self.backend)
            if "tally" in state["layers"][layer]:
                self.tally[layer].load_state_dict(state["layers"][layer]["tally"])
        thresholds = {layer: state["layers"][layer]["thresholds"].to(self.device) for layer in self.layers}
        cached = self.cache is not None
        fields = ("labels",) if cached else ("image", "labels")
        for nb, batch in enumerate(self._batches(state["done"], fields, "dissect: tally"), 1):
            if cached:
                pos, n = state["done"], batch["index"].numel()
                acts = {layer: self.cache[layer][pos:pos + n].to(self.device) for layer in self.layers}
            else:
                acts = self.forward(batch["image"])
            with self.timer("tally"):
                labels = batch["pixel_labels"].to(self.device)
                scalars = batch["image_labels"].to(self.device)
                annotated = batch["annotated"].to(self.device)
                for layer, a in acts.items():
                    self.tally[layer].update(a, thresholds[layer], labels, scalars, annotated)
            state["done"] += batch["index"].numel()
            if not cached:
                self.runner.plan(self._batches_left(state["done"]))
            if every and nb % every == 0:
                for layer in self.layers:
                    state["layers"][layer]["tally"] = self.tally[layer].state_dict()
                self._save(state, ckpt)

    def finish_tally(self, state, ckpt, world):
        with self.timer("tally"):
            for layer in self.layers:
                t = _merge_all(self.tally[layer], world)
                state["layers"][layer]["tally"] = {
                    "intersection": t.intersection.cpu(), "activation": t.activation.cpu(),
                    "label": t.label.cpu(), "activation_total": t.activation_total.cpu(),
                    "images": int(t.images), "iou": t.iou().cpu()}
        state["stage"] = "done"
        self._save(state, ckpt)
        return state
