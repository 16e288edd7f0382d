"""The model side of a dissection: loaders over this rank's shard, the forward (preprocess, autocast,
the capture, the per-layer transform) through one fixed variant, the probe, the pass-1 activation
cache, and the memory and time bookkeeping around them."""
from __future__ import annotations

import contextlib
import os
import time
import warnings

import torch

from unitscope._compile import Runner
from unitscope.data import collate_broden
from unitscope.dissect.checkpoint import CheckpointError
from unitscope.dissect.ranks import broadcast, gather
from unitscope.dissect.state import Stage

PROBE_IMAGES = 4      # the dataset's first images: the shapes, and the model's behaviour in a checkpoint
# num_workers="auto": a pass this long reads in worker processes, on the cores torch's threads leave
# free (decoding a 224x224 image and its label maps takes a few ms, starting a worker about a second)
AUTO_WORKERS_MIN_IMAGES = 256


def auto_workers(images: int) -> int:
    """DataLoader workers for a pass over `images` images under num_workers="auto"."""
    if images < AUTO_WORKERS_MIN_IMAGES:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - torch.get_num_threads()))


def free_memory_bytes() -> int:
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


def check_tally_memory(shapes, num_labels, device) -> None:
    """Refuse, before anything is allocated, IoU tallies (int64 [K, C] per layer) larger than the
    free memory of their device (when it is known): a label.csv with large label numbers makes C large."""
    units = sum(K for K, _, _ in shapes.values())
    need = units * num_labels * 8
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else free_memory_bytes()
    if free and need > free:
        raise ValueError(f"the IoU tallies need {need / 2**30:.1f} GiB ({units} units x {num_labels} label numbers "
                         f"x 8 bytes), more than the {free / 2**30:.1f} GiB free on {device}; dissect fewer "
                         "layers or renumber the dataset's labels densely")


class Timer:
    """Seconds spent per part ("data", "forward", "threshold", "tally"), synchronized on CUDA."""

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


def _tqdm_write(msg):
    from tqdm.auto import tqdm
    tqdm.write(msg)


class Feed:
    """Batches and activations for the passes. shard: (lo, hi) image range of this rank; cache:
    {layer: float32 (hi - lo, K, h, w)} of pass 1's activations when kept for pass 2."""

    def __init__(self, model, capture, layers, ds, device, config, shard, timer, progress):
        self.model, self.capture, self.layers, self.ds, self.device = model, capture, layers, ds, device
        self.config, self.shard, self.timer, self.progress = config, shard, timer, progress
        self.preprocess = config.model_input
        log = (lambda msg: _tqdm_write(f"unitscope dissect: {msg}")) if progress else None
        self.runner = Runner(capture, config.compile, traced=capture.full, log=log, pad=True, prepare=capture.reset,
                             channels_last=True)
        self.shapes = None  # {layer: (K, h, w)} from the probe
        self.cache = None

    # ---- data ------------------------------------------------------------------------------------
    def batches(self, start, fields, desc):
        """This shard's batches from image `start` on (the reading timed as "data")."""
        lo, hi = self.shard
        subset = torch.utils.data.Subset(self.ds.with_fields(*fields), range(lo + start, hi))
        workers = self.config.num_workers
        if workers == "auto":
            workers = auto_workers(len(subset))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.config.batch_size, shuffle=False,
                                             num_workers=workers, collate_fn=collate_broden,
                                             pin_memory=self.device.type == "cuda")
        if self.progress:
            from unitscope._progress import progress_bar
            loader = progress_bar(loader, desc=desc, unit="batch", total=len(loader))
        it = iter(loader)
        while True:
            with self.timer("data"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    def batches_left(self, done: int) -> int:
        """Batches of this shard after `done` images."""
        lo, hi = self.shard
        return -(-max(hi - lo - done, 0) // self.config.batch_size)

    def _images(self, indices):
        view = self.ds.with_fields("image")
        return collate_broden([view[i] for i in indices])["image"]

    # ---- the forward -----------------------------------------------------------------------------
    def _autocast(self):
        dtype = self.config.autocast
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def forward(self, images, eager=False) -> dict:
        """{layer: float32 (B, K, h, w)} of a [0, 1] image batch: through the fixed variant, or the
        plain eager capture (eager=True); the layer's transform applied."""
        with self.timer("forward"):
            x = self.preprocess(images.to(self.device, non_blocking=True))
            with self._autocast():
                acts = self.capture(x) if eager else self.runner(x)
            acts = {k: v.float().contiguous() for k, v in acts.items()}  # (channels_last outputs: NCHW for the kernels)
            for layer, fn in self.config.transform.items():
                acts[layer] = _transformed(layer, fn, acts[layer])
            return acts

    def probe(self) -> dict:
        """The eager model on the dataset's first PROBE_IMAGES images (nothing counted): the layers'
        map shapes (the IoU tallies' memory checked before any work) and, for a checkpoint, the
        model's behaviour."""
        acts = self.forward(self._images(range(min(PROBE_IMAGES, len(self.ds)))), eager=True)
        self.shapes = {layer: tuple(a.shape[1:]) for layer, a in acts.items()}
        check_tally_memory(self.shapes, self.ds.num_labels, self.device)
        return acts

    def choose_variant(self, state, rank, world) -> None:
        """One forward variant (eager or compiled, the input as given or channels_last) for every
        batch of both passes, fixed before the first counted batch: the checkpoint's where it
        recorded one, else the Runner's timed warm-up on this shard's first batch (outputs
        discarded), on rank 0, which every rank then uses. Recorded in the state."""
        lo, hi = self.shard
        bs = self.config.batch_size
        first = range(lo, min(lo + bs, hi)) if hi > lo else range(min(bs, len(self.ds)))
        with self.timer("data"):
            sample = self._images(first)
        recorded = gather(state.variant if state.variant_decided else None, world)
        if len({r for r in recorded if r is not None}) > 1:
            raise CheckpointError(f"the ranks' checkpoints were made with different forward variants "
                                  f"((compiled, channels_last) per rank: {recorded}); delete them to start over")
        want = next((r for r in recorded if r is not None), None)
        with self.timer("forward"), self._autocast():
            x = self.preprocess(sample.to(self.device))
            chosen = want
            if want is None:
                if rank == 0:
                    calls = self.batches_left(0) * (1 if self.cache is not None else 2)
                    self.runner.warm_up(x, calls=calls)
                chosen = broadcast(self.runner.variant, world)
            assert chosen is not None  # a recorded variant, or the one rank 0 chose
            got = gather(self.runner.use(chosen, x), world)
        if any(g != chosen for g in got):
            if want is not None:
                raise CheckpointError(f"the checkpoint was made with forward variant (compiled, channels_last) = "
                                      f"{want}, which runs here as {got} (the compile failed?); one result never "
                                      "mixes them: delete the checkpoint to start over")
            if rank == 0:
                warnings.warn(f"dissect: the ranks could not all run the forward variant {chosen} (got {got}); "
                              "every rank runs the model eagerly with the input as given", stacklevel=3)
            self.runner.use((False, False), x)
        state.compiled, state.channels_last = self.runner.variant

    # ---- the activation cache --------------------------------------------------------------------
    def keep_activations(self, state) -> None:
        """Allocate the pass-1 cache (before a pass 1 from its start, cache_activations not False;
        'auto': only when it needs less than a third of the free memory)."""
        setting = self.config.cache_activations
        if setting is False or state.stage is not Stage.THRESHOLD or state.done != 0:
            return
        lo, hi = self.shard
        need = sum((hi - lo) * K * h * w * 4 for K, h, w in state.shapes.values())
        if setting == "auto" and need > free_memory_bytes() // 3:
            return
        self.cache = {layer: torch.empty((hi - lo,) + tuple(state.shapes[layer]), dtype=torch.float32)
                      for layer in self.layers}


def _transformed(layer, fn, a):
    out = fn(a)
    if not isinstance(out, torch.Tensor) or out.shape != a.shape or not out.is_floating_point():
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"transform[{layer!r}] must return a floating tensor of the shape it was given "
                         f"{tuple(a.shape)} (B, K, h, w), got {got}")
    return out.float().contiguous()
