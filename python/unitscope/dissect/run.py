"""unitscope.dissect(): the two-pass network dissection (Bau et al., CVPR 2017), as an orchestration:
the settings (config.py), where the run is (state.py), the model's side (forward.py), the passes
(passes.py), resuming from a checkpoint (resume.py, checkpoint.py, fingerprint.py).

Pass 1 runs the model once per batch (all layers at once) and feeds ExactQuantile (or
QuantileSketch) and each unit's top-k images; pass 2 feeds IoUTally with the thresholds. When the
activations of pass 1 fit in memory they are kept, and pass 2 reads them instead of running the
model again. Every counted batch goes through one forward variant, chosen before the first.
Checkpoints after each pass and every `checkpoint_every` batches; under torch.distributed each rank
takes a contiguous shard, states are combined with all_merge, and the ranks agree on where to resume
before any collective.

torchrun sets OMP_NUM_THREADS=1 in each process unless it is set. Counts never depend on threads,
but the model's float forward (convolutions) may round differently with another thread count, so
thresholds under torchrun can differ in the last bits from one multi-threaded process; set
OMP_NUM_THREADS (or torch.set_num_threads) the same in both for bit-identical thresholds.
"""
from __future__ import annotations

import os
import warnings

import torch

from unitscope._checks import IOU_THRESHOLD
from unitscope._model_state import ModelState
from unitscope.data import BrodenDataset
from unitscope.dissect.checkpoint import (
    checkpoint_path,
    prepare_checkpoint_dir,
    save_checkpoint,
)
from unitscope.dissect.config import DissectConfig, imagenet_preprocess  # noqa: F401 (re-exported)
from unitscope.dissect.forward import PROBE_IMAGES, Feed, Timer  # noqa: F401 (PROBE_IMAGES: the tests')
from unitscope.dissect.passes import Passes
from unitscope.dissect.ranks import gather, rank_and_world
from unitscope.dissect.result import Dissection, LayerDissection, plateau
from unitscope.dissect.resume import envelope, resume
from unitscope.dissect.state import DissectState, Stage
from unitscope.hooks import LayerCapture


def dissect(model: torch.nn.Module, layers, dataset, *, batch_size: int = 32, device=None,
            quantile: float = 0.995, iou_threshold: float = IOU_THRESHOLD, categories=None, threshold_op: str = ">",
            union: str = "category", exact: bool = True, upsample: str = "bilinear", preprocess=None,
            num_workers="auto", checkpoint_dir=None, checkpoint_every: int = 50, progress: bool = True,
            topk: int = 8, tokens: bool = False, autocast=None, cache_activations="auto",
            sketch_size: int | None = None, backend: str | None = None, compile="auto",
            transform=None, ties: str = "op", tie_seed: int = 0) -> Dissection:
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
            c's category, the original Network Dissection), 'dataset' (every image) or 'mask'
            (NetDissect-Lite's: only in images where a label of c's category lies inside the unit's
            mask, or is an image label; docs/guide-dissection.md).
        exact: ExactQuantile (True) or the bounded-memory QuantileSketch (False, size=sketch_size).
        upsample: 'bilinear' (align_corners=False) or 'bilinear-align-corners'.
        preprocess: maps a (B, 3, H, W) [0, 1] batch to the model input; None: none, the model gets
            the [0, 1] images (as in saliency, featviz and explain; before this version None meant
            ImageNet mean/std: pass imagenet_preprocess, or the registry model's own, for that).
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
            more, else reads in this process (workers that share the model's cores slow it down,
            benchmarks/RESULTS.md).
        compile: 'auto' (the fast path: before the first counted batch, timed warm-up calls on the
            first batch, their outputs discarded, try the input as given and in channels_last and
            keep the faster; then the model is compiled with torch.compile when the batches to come
            save clearly more than the compile costs (tens of seconds, benchmarks/RESULTS.md); a
            run of fewer than 16 forward calls stays eager with the input as given), True
            (compiled from the first batch) or False (the exact eager path, the input as given). Every batch of both passes goes
            through the one variant chosen (one arithmetic per result; under torch.distributed rank
            0's choice, for every rank). Compiled or channels_last results may differ in the last
            float bits, which can move a threshold and a few pixels. A model that cannot be
            compiled runs eagerly after a one-line warning. Checkpoints record the variant, and a
            resumed run keeps it.
        transform: {layer: fn}: fn maps the layer's captured activations (Tensor[B, K, h, w],
            float32) to a tensor of the same shape, before thresholds and tally (e.g. a rotation of
            the units' basis); recorded in a checkpoint's key like the preprocess.
        ties: what happens to raw activations exactly equal to their unit's threshold. 'op' (default,
            the paper's rule): threshold_op decides ('>' leaves them out; a unit whose quantile is
            its maximum, e.g. ReLU6's 6.0, then never fires; '>=' takes them all, often far more
            than the quantile's share). 'random' (unitscope's own rule): before the tally, each
            tied cell joins the mask with probability share_k = ((1 - quantile) x valid cells -
            cells above) / tied cells, drawn from a hash of (tie_seed, image index, unit, cell), so
            the unit's activated raw cells are the quantile's mass in expectation, and the draw does
            not depend on batch size, resume, ranks or backend; the shares are counted in one extra
            sweep (of the activation cache, else one more forward pass) and kept in the checkpoint.
            Units without tied cells are untouched.
        tie_seed: the seed of ties='random' (an int in [0, 2**63)).
    Returns:
        Dissection with one LayerDissection per layer.
    """
    config = DissectConfig(quantile=quantile, iou_threshold=iou_threshold, threshold_op=threshold_op, union=union,
                           exact=exact, sketch_size=sketch_size, upsample=upsample, batch_size=batch_size, topk=topk,
                           tokens=tokens, autocast=autocast, cache_activations=cache_activations,
                           checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, compile=compile,
                           num_workers=num_workers, progress=progress, backend=backend, preprocess=preprocess,
                           transform=transform or {}, ties=ties, tie_seed=tie_seed)
    layers = [layers] if isinstance(layers, str) else list(layers)
    config.check_layers(layers)
    if preprocess is None:
        _say_preprocess_changed()
    ds = _as_dataset(dataset, categories)
    sizes = {(r.sh, r.sw) for r in ds.rows}
    if len(sizes) != 1:
        raise ValueError(f"dataset label maps differ in size {sorted(sizes)}; dissection needs one (sh, sw)")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    rank, world = rank_and_world()
    N = len(ds)
    shard = (rank * N // world, (rank + 1) * N // world)
    ckpt = checkpoint_path(checkpoint_dir, rank, world) if checkpoint_dir is not None else None
    if ckpt is not None:
        prepare_checkpoint_dir(ckpt)
    model.to(device)
    timer = Timer(device)
    saved = ModelState(model)  # each module's own mode and every buffer come back at the end
    model.eval()
    env = None

    def save(state):
        if ckpt is not None:
            save_checkpoint(ckpt, state, env)
    try:
        with torch.no_grad(), LayerCapture(model, layers, tokens=tokens, detach=True) as capture:
            feed = Feed(model, capture, layers, ds, device, config, shard, timer, progress and rank == 0)
            passes = Passes(feed, config, ds, sizes.pop(), backend, save)
            probe = feed.probe()
            state = None
            if ckpt is not None:
                env = envelope(passes, dict(config.key(), dataset=ds.fingerprint, layers=layers, images=N,
                                            world_size=world, rank=rank, shard=list(shard)), probe)
                state = resume(passes, ckpt, env, rank, world)
            state = state or DissectState(shapes=feed.shapes)
            feed.keep_activations(state)
            if state.stage is not Stage.DONE:
                feed.choose_variant(state, rank, world)
            if state.stage is Stage.THRESHOLD:
                passes.threshold_pass(state)
                passes.finish_threshold(state, world)
            if state.stage is Stage.TALLY and config.ties == "random" and \
                    any(gather(any(state.layers[l].tie_share is None for l in layers), world)):
                passes.tie_pass(state, world)
            if state.stage is Stage.TALLY:
                passes.tally_pass(state)
                passes.finish_tally(state, world)
    finally:
        saved.restore()
    _warn_plateaus(state, quantile, threshold_op, N, rank)
    meta = dict(config.result_settings(), images=N, dataset_root=str(ds.root), compiled=bool(state.compiled))
    results = {}
    for layer in layers:
        entry, t = state.layers[layer], passes.states["tally"][layer]
        counts = {"intersection": t.intersection.cpu(), "activation": t.activation.cpu(), "label": t.label.cpu(),
                  "activation_total": t.activation_total.cpu(), "images": int(t.images), "iou": t.iou().cpu(),
                  "ties": None if entry.ties is None else entry.ties["count"]}
        results[layer] = LayerDissection.from_counts(
            layer, entry.thresholds, counts, entry.topk, label_names=ds.label_names,
            categories=ds.categories, label_category=ds.label_category,
            image_paths=[ds.rows[i].image for i in range(N)], settings=meta)
    return Dissection(results, timings=dict(timer.seconds), settings=meta)


_said: list[bool] = []  # the preprocess=None warning, once per process


def _say_preprocess_changed() -> None:
    """Once per process: preprocess=None no longer means ImageNet normalization here."""
    if not _said:
        _said.append(True)
        warnings.warn("preprocess=None in unitscope.dissect now means no preprocessing, as everywhere in "
                      "unitscope (it meant ImageNet mean/std normalization before); pass "
                      "preprocess=unitscope.dissect.imagenet_preprocess (or models.load(name).preprocess) for "
                      "normalized input", UserWarning, stacklevel=3)


def _as_dataset(dataset, categories) -> BrodenDataset:
    if isinstance(dataset, (str, os.PathLike)):
        return BrodenDataset(dataset, categories=categories)
    if not isinstance(dataset, BrodenDataset):
        raise TypeError(f"dataset must be a BrodenDataset or a dataset folder, got {type(dataset).__name__}")
    if categories is not None and list(categories) != dataset.categories:
        return BrodenDataset(dataset.root, categories=categories, split=dataset.split,
                             resolution=dataset.resolution, packed=dataset._packed_setting)
    return dataset


def _warn_plateaus(state, quantile, op, images, rank) -> None:
    """One console warning for the units whose tie mass is large (LayerDissection.plateau)."""
    found = []
    for layer, entry in state.layers.items():
        if entry.ties is not None:
            _, h, w = state.shapes[layer]
            big = plateau(entry.ties["count"].numpy(), quantile, images * h * w)
            if big.any():
                found.append(f"{layer!r}: {int(big.sum())}")
    if found and rank == 0:
        other = ">=" if op == ">" else ">"
        warnings.warn(f"dissect: units whose activations equal their threshold more often than a fifth of the top "
                      f"{1 - quantile:.3g} share (per layer: {', '.join(found)}); for them the mask rule {op!r} and "
                      f"{other!r} differ by a plateau: see the 'ties' column of the report and tally CSV", stacklevel=3)
