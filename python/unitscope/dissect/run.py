"""unitscope.dissect(): the two-pass network dissection (Bau et al., CVPR 2017).

Pass 1 runs the model once per batch (all layers at once) and feeds ExactQuantile (or
QuantileSketch) and each unit's top-k images; pass 2 feeds IoUTally with the thresholds. When the
activations of pass 1 fit in memory they are kept, and pass 2 reads them instead of running the
model again. Checkpoints after each pass and every `checkpoint_every` batches (checkpoint.py says
what they fingerprint and validate); under torch.distributed each rank takes a contiguous shard,
states are combined with all_merge, and the ranks agree on where to resume before any collective.

torchrun sets OMP_NUM_THREADS=1 in each process unless it is set. Counts never depend on threads,
but the model's float forward (convolutions) may round differently with another thread count, so
thresholds under torchrun can differ in the last bits from one multi-threaded process; set
OMP_NUM_THREADS (or torch.set_num_threads) the same in both for bit-identical thresholds.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings

import torch

import unitscope
from unitscope._compile import Runner, check_compile
from unitscope.data import BrodenDataset, collate_broden
from unitscope.dissect.capture import LayerCapture
from unitscope.dissect.checkpoint import (CheckpointError, checkpoint_path, describe_callable, load_checkpoint,
                                          model_fingerprint, prepare_checkpoint_dir, probe_stats, save_checkpoint)
from unitscope.dissect.result import Dissection, LayerDissection, plateau
from unitscope.dissect.ties import ThresholdTies
from unitscope.dissect.topk import TopKImages
from unitscope.models import IMAGENET_MEAN, IMAGENET_STD, Normalize

UPSAMPLE = {"bilinear": False, "bilinear-align-corners": True}

# the default preprocess: (B, 3, H, W) float in [0, 1] -> ImageNet mean/std normalized
imagenet_preprocess = Normalize(IMAGENET_MEAN, IMAGENET_STD)
PROBE_IMAGES = 4      # the dataset's first images: the model's behaviour recorded in a checkpoint
_ORDER = {"none": 0, "threshold": 1, "tally": 2, "done": 3}


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


def _gather(value, world) -> list:
    """[every rank's value] (all_gather_object; [value] in one process)."""
    if world == 1:
        return [value]
    out = [None] * world
    torch.distributed.all_gather_object(out, value)
    return out


def _broadcast(value, world):
    """Rank 0's value on every rank."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _check_args(quantile, iou_threshold, threshold_op, union, upsample, batch_size, topk, autocast, cache,
                checkpoint_dir, checkpoint_every, compile, num_workers):
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
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an int >= 0 (0: only after each pass), got {checkpoint_every!r}")
    if checkpoint_dir is not None and (not isinstance(checkpoint_dir, (str, os.PathLike)) or "\0" in str(checkpoint_dir)):
        raise ValueError(f"checkpoint_dir must be a folder path without NUL bytes, got {checkpoint_dir!r}")
    check_compile(compile)
    if num_workers != "auto" and (isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0):
        raise ValueError(f"num_workers must be 'auto' or an int >= 0, got {num_workers!r}")


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


def _check_tally_memory(shapes, num_labels, device) -> None:
    """Refuse, before anything is allocated, IoU tallies (int64 [K, C] per layer) larger than the
    free memory of their device (when it is known): a label.csv with large label numbers makes C large."""
    need = sum(K for K, _, _ in shapes.values()) * num_labels * 8
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else _free_memory_bytes()
    if free and need > free:
        raise ValueError(f"the IoU tallies need {need / 2**30:.1f} GiB ({sum(K for K, _, _ in shapes.values())} units x "
                         f"{num_labels} label numbers x 8 bytes), more than the {free / 2**30:.1f} GiB free on {device}; "
                         "dissect fewer layers or renumber the dataset's labels densely")


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
            num_workers="auto", checkpoint_dir=None, checkpoint_every: int = 50, progress: bool = True,
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
        checkpoint_dir: where checkpoints go; a run finding its own checkpoint there resumes. The
            checkpoint records the settings, the model's weights, code and outputs at `layers` on the
            dataset's first images, the preprocess and the files read; a checkpoint that differs in
            any of them, or fails validation, raises CheckpointError (a ValueError) before any work.
        topk: images kept per unit (by max activation) with their maps for the report.
        tokens: rearrange (B, T, C) outputs (ViT) into (B, C, s, s) maps.
        autocast: None, torch.float16 or torch.bfloat16 for the forward only.
        cache_activations: keep pass-1 activations for pass 2 ('auto': when they need less than a
            third of the free memory) instead of running the model twice.
        num_workers: DataLoader worker processes that decode and resize while the model runs;
            'auto' uses the CPUs torch's threads leave free (at most 4) for a pass of 256 images or
            more, else reads in this process (workers that share the model's cores slow it down:
            on 2 cores one worker cost 14% of a compiled forward, benchmarks/RESULTS.md).
        compile: 'auto' (the fast path: before the first counted batch, timed warm-up calls on the
            first batch, their outputs discarded, try the input as given and in channels_last and
            keep the faster; then the model is compiled with torch.compile when the batches to come
            save clearly more than the compile costs, about 50 s here; a run of fewer than 16
            forward calls stays eager with the input as given), True (compiled from the first batch)
            or False (the exact eager path, the input as given). Every batch of both passes goes
            through the one variant chosen (one arithmetic per result; under torch.distributed rank
            0's choice, for every rank). Compiled or channels_last results may differ in the last
            float bits, which can move a threshold and a few pixels. A model that cannot be
            compiled runs eagerly after a one-line warning. Checkpoints record the variant, and a
            resumed run keeps it.
    Returns:
        Dissection with one LayerDissection per layer.
    """
    _check_args(quantile, iou_threshold, threshold_op, union, upsample, batch_size, topk, autocast, cache_activations,
                checkpoint_dir, checkpoint_every, compile, num_workers)
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
    rank, world = _dist()
    N = len(ds)
    lo, hi = rank * N // world, (rank + 1) * N // world
    ckpt = checkpoint_path(checkpoint_dir, rank, world) if checkpoint_dir is not None else None
    if ckpt is not None:
        prepare_checkpoint_dir(ckpt)
    model.to(device)
    settings = {"quantile": quantile, "threshold_op": threshold_op, "union": union, "exact": exact,
                "sketch_size": sketch_size, "upsample": upsample, "topk": topk, "tokens": tokens,
                "autocast": str(autocast), "compile": compile}
    timer = _Timer(device)
    was_training = model.training
    model.eval()
    run = _Run(model, layers, ds, device, preprocess or imagenet_preprocess, autocast, tokens, batch_size,
               num_workers, progress and rank == 0, timer, (lo, hi), backend, settings, out_size)
    try:
        with torch.no_grad(), LayerCapture(model, layers, tokens=tokens) as capture:
            run.capture = capture
            log = (lambda msg: _tqdm_write(f"unitscope dissect: {msg}")) if progress and rank == 0 else None
            run.runner = Runner(capture, compile, traced=capture.full, log=log, pad=True, prepare=capture.reset,
                                channels_last=True)
            acts = run.probe()
            state = _fresh_state()
            if ckpt is not None:
                state = run.resume(ckpt, dict(settings, dataset=ds.fingerprint, preprocess=describe_callable(preprocess),
                                              layers=layers, images=N, world_size=world, rank=rank, shard=[lo, hi]),
                                   acts, rank, world)
            if state["shapes"] is None:
                state["shapes"] = run.shapes
            if state["stage"] == "threshold" and state["done"] == 0 and cache_activations is not False:
                run.cache = run._alloc_cache(state["shapes"], hi - lo, cache_activations)
            if state["stage"] != "done":
                run.choose_variant(state, rank, world)
            if state["stage"] == "threshold":
                run.threshold_pass(state, ckpt, checkpoint_every)
                state = run.finish_threshold(state, ckpt, world)
            if state["stage"] == "tally":
                run.tally_pass(state, ckpt, checkpoint_every)
                state = run.finish_tally(state, ckpt, world)
    finally:
        model.train(was_training)
    _warn_plateaus(state, quantile, threshold_op, N, rank)
    meta = {k: settings[k] for k in ("quantile", "threshold_op", "union", "exact", "upsample", "topk")}
    meta.update(iou_threshold=iou_threshold, images=N, dataset_root=str(ds.root), compiled=bool(state["compiled"]))
    results = {}
    for layer in layers:
        ls = state["layers"][layer]
        t = run.tally[layer]
        counts = {"intersection": t.intersection.cpu(), "activation": t.activation.cpu(), "label": t.label.cpu(),
                  "activation_total": t.activation_total.cpu(), "images": int(t.images), "iou": t.iou().cpu(),
                  "ties": None if "ties" not in ls else ls["ties"]["count"]}
        results[layer] = LayerDissection.from_counts(
            layer, ls["thresholds"], counts, ls["topk"], label_names=ds.label_names,
            categories=ds.categories, label_category=ds.label_category,
            image_paths=[ds.rows[i].image for i in range(N)], settings=meta)
    return Dissection(results, timings=dict(timer.seconds), settings=meta)


# num_workers="auto": a pass this long reads in worker processes, on the cores torch's threads leave
# free (decoding a 224x224 image and its label maps takes a few ms, starting a worker about a second)
AUTO_WORKERS_MIN_IMAGES = 256


def auto_workers(images: int) -> int:
    """DataLoader workers for a pass over `images` images under num_workers="auto"."""
    if images < AUTO_WORKERS_MIN_IMAGES:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - torch.get_num_threads()))


def _tqdm_write(msg):
    from tqdm.auto import tqdm
    tqdm.write(msg)


def _warn_plateaus(state, quantile, op, images, rank) -> None:
    """One console warning for the units whose tie mass is large (LayerDissection.plateau)."""
    found = []
    for layer, entry in state["layers"].items():
        if "ties" in entry:
            K, h, w = state["shapes"][layer]
            big = plateau(entry["ties"]["count"].numpy(), quantile, images * h * w)
            if big.any():
                found.append(f"{layer!r}: {int(big.sum())}")
    if found and rank == 0:
        other = ">=" if op == ">" else ">"
        warnings.warn(f"dissect: units whose activations equal their threshold more often than a fifth of the top "
                      f"{1 - quantile:.3g} share (per layer: {', '.join(found)}); for them the mask rule {op!r} and "
                      f"{other!r} differ by a plateau: see the 'ties' column of the report and tally CSV", stacklevel=3)


def _fresh_state() -> dict:
    """The state of a dissection that has not started (what a checkpoint holds, less its envelope)."""
    return {"stage": "threshold", "done": 0, "shapes": None, "layers": {}, "compiled": False, "channels_last": None}


class _Run:
    """The passes' shared machinery: loaders, the forward, the per-layer states, resuming."""

    def __init__(self, model, layers, ds, device, preprocess, autocast, tokens, batch_size, num_workers,
                 progress, timer, shard, backend, settings, out_size):
        self.model, self.layers, self.ds, self.device = model, layers, ds, device
        self.preprocess, self.autocast, self.batch_size, self.num_workers = preprocess, autocast, batch_size, num_workers
        self.progress, self.timer, self.shard, self.backend = progress, timer, shard, backend
        self.settings, self.out_size = settings, out_size
        self.quant, self.topk, self.tally, self.ties, self.cache = {}, {}, {}, {}, None
        self.shapes = None  # {layer: (K, h, w)} from the probe
        self.capture = None
        self.runner = None  # unitscope._compile.Runner over the capture: eager or compiled
        self.envelope = None  # key and probe statistics written with every checkpoint

    def _loader(self, start, fields, desc):
        lo, hi = self.shard
        view = self.ds.with_fields(*fields)
        subset = torch.utils.data.Subset(view, range(lo + start, hi))
        workers = self.num_workers
        if workers == "auto":
            workers = auto_workers(len(subset))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=workers, collate_fn=collate_broden,
                                             pin_memory=self.device.type == "cuda")
        if self.progress:
            from unitscope._progress import progress_bar
            return progress_bar(loader, desc=desc, unit="batch", total=len(loader))
        return loader

    def _batches(self, start, fields, desc):
        it = iter(self._loader(start, fields, desc))
        while True:
            with self.timer("data"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()

    def forward(self, images, eager=False):
        with self.timer("forward"):
            x = self.preprocess(images.to(self.device, non_blocking=True))
            with self._autocast():
                acts = self.capture(x) if eager else self.runner(x)
            return {k: v.float().contiguous() for k, v in acts.items()}  # (channels_last outputs: NCHW for the kernels)

    def probe(self) -> dict:
        """The eager model on the dataset's first PROBE_IMAGES images (no batch to time, nothing
        counted): the layers' map shapes (the IoU tallies' memory checked before any work) and, for a
        checkpoint, the model's behaviour."""
        view = self.ds.with_fields("image")
        acts = self.forward(collate_broden([view[i] for i in range(min(PROBE_IMAGES, len(self.ds)))])["image"],
                            eager=True)
        self.shapes = {layer: tuple(a.shape[1:]) for layer, a in acts.items()}
        _check_tally_memory(self.shapes, self.ds.num_labels, self.device)
        return acts

    def choose_variant(self, state, rank, world) -> None:
        """One forward variant (eager or compiled, the input as given or channels_last) for every
        batch of both passes, fixed before the first counted batch: the checkpoint's where it
        recorded one, else the Runner's timed warm-up on this shard's first batch (outputs
        discarded), on rank 0, which every rank then uses. Recorded in the state."""
        lo, hi = self.shard
        first = range(lo, min(lo + self.batch_size, hi)) if hi > lo else range(min(self.batch_size, len(self.ds)))
        view = self.ds.with_fields("image")
        with self.timer("data"):
            sample = collate_broden([view[i] for i in first])["image"]
        decided = state["stage"] != "threshold" or state["done"] > 0
        mine = (bool(state["compiled"]), state["channels_last"] is True) if decided else None
        recorded = _gather(mine, world)
        if len({r for r in recorded if r is not None}) > 1:
            raise CheckpointError(f"the ranks' checkpoints were made with different forward variants "
                                  f"((compiled, channels_last) per rank: {recorded}); delete them to start over")
        want = next((r for r in recorded if r is not None), None)
        with self.timer("forward"), self._autocast():
            x = self.preprocess(sample.to(self.device))
            if want is None:
                if rank == 0:
                    calls = self._batches_left(0) + (0 if self.cache is not None else self._batches_left(0))
                    self.runner.warm_up(x, calls=calls)
                chosen = _broadcast(self.runner.variant, world)
            else:
                chosen = want
            got = _gather(self.runner.use(chosen, x), world)
        if any(g != chosen for g in got):
            if want is not None:
                raise CheckpointError(f"the checkpoint was made with forward variant (compiled, channels_last) = "
                                      f"{want}, which runs here as {got} (the compile failed?); one result never "
                                      "mixes them: delete the checkpoint to start over")
            if rank == 0:
                warnings.warn(f"dissect: the ranks could not all run the forward variant {chosen} (got {got}); "
                              "every rank runs the model eagerly with the input as given", stacklevel=3)
            self.runner.use((False, False), x)
        state["compiled"], state["channels_last"] = self.runner.variant

    # ---- states ----------------------------------------------------------------------------------
    def _make_threshold_states(self, shapes):
        s, total = self.settings, len(self.ds)
        for layer in self.layers:
            K, h, w = shapes[layer]
            if s["exact"]:
                self.quant[layer] = unitscope.ExactQuantile(K, s["quantile"], total * h * w, dim=1,
                                                            device=self.device, backend=self.backend)
            else:
                kw = {} if s["sketch_size"] is None else {"size": s["sketch_size"]}
                self.quant[layer] = unitscope.QuantileSketch(K, dim=1, device=self.device, seed=0,
                                                             backend=self.backend, **kw)
            self.topk[layer] = TopKImages(K, s["topk"], (h, w), device=self.device)

    def _make_tallies(self, shapes):
        s = self.settings
        lc = torch.from_numpy(self.ds.label_category.clip(min=0)).to(self.device)
        for layer in self.layers:
            self.tally[layer] = unitscope.IoUTally(
                shapes[layer][0], self.ds.num_labels, label_category=lc, num_categories=len(self.ds.categories),
                out_size=self.out_size, align_corners=UPSAMPLE[s["upsample"]], threshold_op=s["threshold_op"],
                union=s["union"], device=self.device, backend=self.backend)

    def _batches_left(self, done):
        """Batches of this rank's shard after `done` images."""
        lo, hi = self.shard
        return -(-max(hi - lo - done, 0) // self.batch_size)

    def _save(self, state, ckpt):
        if ckpt is not None:
            save_checkpoint(ckpt, dict(state, **self.envelope))

    # ---- resuming --------------------------------------------------------------------------------
    def resume(self, ckpt, key, acts, rank, world) -> dict:
        """Load and validate this rank's checkpoint (acts: the probe's), agree with the other ranks;
        returns the state to continue from (a fresh one when there is nothing to resume)."""
        fresh = _fresh_state()
        probe, shapes = probe_stats(acts), self.shapes
        fp = model_fingerprint(self.model)  # after a forward: lazy modules are initialized by now
        key.update(model=fp["weights"], model_code=fp["code"], probe_tolerance=1e-3 if self.autocast is None else 3e-2)
        self.envelope = {"key": key, "probe": probe}
        state, error = None, None
        try:
            state = load_checkpoint(ckpt, key, probe, shapes, key["probe_tolerance"], self.shard[1] - self.shard[0])
            if state is not None:
                self._restore(state, ckpt)
        except CheckpointError as e:
            error = e
        if world > 1:
            state = self._agree(state, error, rank, world)
        elif error is not None:
            raise error
        if state is None:
            self.quant, self.topk, self.tally, self.ties = {}, {}, {}, {}
            return fresh
        return state

    def _restore(self, state, ckpt):
        """Build the kernel states from a validated envelope (their load_state_dict checks their own
        fields) and check the counts against `done`: images tallied, top-k indices in range."""
        lo, hi = self.shard
        stage, done, shapes = state["stage"], state["done"], state["shapes"]
        try:
            if stage == "threshold":
                self._make_threshold_states(shapes)
                for layer in self.layers:
                    K, h, w = shapes[layer]
                    q = self.quant[layer]
                    q.load_state_dict(state["layers"][layer]["quantile"])
                    seen = q.count.cpu()  # with or without NaN, by kernel: accept either
                    if bool((seen != done * h * w).any()) and bool((seen + q.nan_count.cpu() != done * h * w).any()):
                        raise CheckpointError(f"layer {layer!r}: the quantile state counted {seen.tolist()[:4]}... "
                                              f"values per unit, expected done * h * w = {done * h * w}")
                    self.topk[layer].load_state_dict(state["layers"][layer]["topk"])
                    self._check_topk(layer, lo, lo + done)
                return
            for layer in self.layers:
                K, h, w = shapes[layer]
                self.topk[layer] = TopKImages(K, self.settings["topk"], (h, w), device=self.device)
                self.topk[layer].load_state_dict(state["layers"][layer]["topk"])
                self._check_topk(layer, 0, len(self.ds))
                state["layers"][layer]["topk"] = self.topk[layer].state_dict()
            with_tally = [layer for layer in self.layers if "tally" in state["layers"][layer]]
            if with_tally and len(with_tally) != len(self.layers):
                raise CheckpointError(f"only layers {with_tally} have a tally")
            if not with_tally and done != 0:
                raise CheckpointError(f"done is {done} but no tally was saved")
            if not with_tally and any("ties" in state["layers"][layer] for layer in self.layers):
                raise CheckpointError("threshold ties were saved without a tally")
            if with_tally:
                self._make_tallies(shapes)
                images = len(self.ds) if stage == "done" else done
                for layer in self.layers:
                    K, h, w = shapes[layer]
                    self.tally[layer].load_state_dict(state["layers"][layer]["tally"])
                    entry = state["layers"][layer]
                    if "ties" in entry:
                        self.ties[layer] = ThresholdTies(entry["thresholds"].to(self.device))
                        self.ties[layer].load_state_dict(entry["ties"])
                        if bool((self.ties[layer].count > images * h * w).any()):
                            raise CheckpointError(f"layer {layer!r}: the threshold ties exceed the {images * h * w} "
                                                  "activations counted")
                    else:  # a version-3 checkpoint: the ties of the images counted so far are not known
                        self.ties[layer] = None
                    if self.tally[layer].images != images:
                        raise CheckpointError(f"layer {layer!r}: the tally counted {self.tally[layer].images} "
                                              f"images, expected {images}")
        except Exception as e:  # the kernels' own checks (ValueError/TypeError) and anything else
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise CheckpointError(f"checkpoint {ckpt} is invalid: {first}; delete it to start over") from e

    def _check_topk(self, layer, start, stop):
        t = self.topk[layer]
        index = t.index.cpu()
        if index.dtype != torch.int64:
            raise CheckpointError(f"layer {layer!r}: top-k index must be int64, got {index.dtype}")
        kept = index >= 0
        if bool(((index < -1) | (kept & ((index < start) | (index >= stop)))).any()):
            raise CheckpointError(f"layer {layer!r}: top-k image indices must be -1 or in [{start}, {stop})")
        want = min(t.k, stop - start)
        if bool((kept.sum(1) != want).any()):
            raise CheckpointError(f"layer {layer!r}: every unit must keep {want} top-k images")
        s = torch.where(kept, index, -1 - torch.arange(index.shape[1]).expand_as(index)).sort(1).values
        if index.shape[1] > 1 and bool((s[:, 1:] == s[:, :-1]).any()):
            raise CheckpointError(f"layer {layer!r}: a unit keeps an image twice in its top-k")

    def _agree(self, state, error, rank, world):
        """Every rank learns every rank's checkpoint status before any collective: a refused checkpoint
        stops all ranks; in the first pass each rank goes on from where it is (its shard is its own
        until the merge); at differing stages the ranks ahead fall back (a finished rank redoes its
        share of the second pass) or, when some rank has not finished the first pass, all restart."""
        infos = [None] * world
        torch.distributed.all_gather_object(infos, (state["stage"] if state else "none",
                                                    None if error is None else str(error)))
        refused = [(r, e) for r, (_, e) in enumerate(infos) if e is not None]
        if refused:
            if error is not None:
                raise error
            r, e = refused[0]
            raise CheckpointError(f"rank {r} refused its checkpoint, so every rank stops: {e}")
        stages = [s for s, _ in infos]
        if len({"threshold" if s == "none" else s for s in stages}) == 1:
            return state  # the same stage (no checkpoint = pass 1 from its start): each rank goes on
        lowest = min(stages, key=_ORDER.get)
        said = ", ".join(f"rank {r}: {s}" for r, s in enumerate(stages))
        if lowest == "tally":
            if rank == 0:
                warnings.warn(f"dissect: the ranks' checkpoints are at different stages ({said}); ranks that "
                              "had finished redo their share of the second pass", stacklevel=3)
            if state["stage"] == "done":
                state.update(stage="tally", done=0)
                for entry in state["layers"].values():
                    entry.pop("tally", None)
                    entry.pop("ties", None)
                self.tally, self.ties = {}, {}
            return state
        if rank == 0:
            warnings.warn(f"dissect: the ranks' checkpoints are at different stages ({said}); every rank "
                          "restarts from the first pass", stacklevel=3)
        return None

    # ---- the passes ------------------------------------------------------------------------------
    def threshold_pass(self, state, ckpt, every):
        if not self.quant:
            self._make_threshold_states(state["shapes"])
        for nb, batch in enumerate(self._batches(state["done"], ("image",), "dissect: thresholds"), 1):
            acts = self.forward(batch["image"])
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

    def finish_threshold(self, state, ckpt, world):
        s = self.settings
        with self.timer("threshold"):
            layers = {}
            for layer in self.layers:
                q = _merge_all(self.quant[layer], world)
                t = _merge_all(self.topk[layer], world)
                thr = q.result() if s["exact"] else q.quantile(s["quantile"])
                # a unit whose every activation is NaN has no quantile: it never fires (a dead unit)
                thr = torch.nan_to_num(thr.detach().float().cpu(), nan=float("inf"))
                layers[layer] = {"thresholds": thr, "topk": t.state_dict()}
        state = {"stage": "tally", "done": 0, "shapes": state["shapes"], "layers": layers, "compiled": state["compiled"],
                 "channels_last": state["channels_last"]}
        self._save(state, ckpt)
        return state

    def tally_pass(self, state, ckpt, every):
        thresholds = {layer: state["layers"][layer]["thresholds"].to(self.device) for layer in self.layers}
        if not self.tally:
            self._make_tallies(state["shapes"])
            self.ties = {layer: ThresholdTies(thresholds[layer]) for layer in self.layers}
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
                    if self.ties[layer] is not None:
                        self.ties[layer].update(a)
            state["done"] += batch["index"].numel()
            if every and nb % every == 0:
                self._keep_tallies(state)
                self._save(state, ckpt)

    def _keep_tallies(self, state):
        for layer in self.layers:
            state["layers"][layer]["tally"] = self.tally[layer].state_dict()
            if self.ties[layer] is not None:
                state["layers"][layer]["ties"] = self.ties[layer].state_dict()
            else:
                state["layers"][layer].pop("ties", None)

    def finish_tally(self, state, ckpt, world):
        with self.timer("tally"):
            known = _gather(all(t is not None for t in self.ties.values()), world)
            for layer in self.layers:
                self.tally[layer] = _merge_all(self.tally[layer], world)
                self.ties[layer] = _merge_all(self.ties[layer], world) if all(known) else None
            self._keep_tallies(state)
        state["stage"] = "done"
        self._save(state, ckpt)
        return state
