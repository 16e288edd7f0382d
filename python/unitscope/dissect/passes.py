"""The two passes of a dissection over one DissectState, run by one engine (stream this shard's
batches, feed each batch's activations to the named running states of every layer, count the images,
snapshot the states every `checkpoint_every` batches), and the merges that end each pass."""
from __future__ import annotations

import torch

import unitscope
from unitscope.dissect.ranks import gather, merge_all
from unitscope.dissect.state import LayerState, Stage
from unitscope.dissect.ties import ThresholdTies, TieCounts, include_ties
from unitscope.dissect.topk import TopKImages


class Passes:
    """states: {"quantile" | "topk" | "tally" | "ties": {layer: running state}} (a ties entry None:
    unknown, for a run resumed from a version-3 checkpoint in its second pass). save(state): write a
    checkpoint (or nothing)."""

    def __init__(self, feed, config, ds, out_size, backend, save):
        self.feed, self.config, self.ds, self.out_size, self.backend = feed, config, ds, out_size, backend
        self.layers, self.device, self.timer, self.save = feed.layers, feed.device, feed.timer, save
        self.states: dict[str, dict] = {"quantile": {}, "topk": {}, "tally": {}, "ties": {}}

    # ---- the running states ----------------------------------------------------------------------
    def make_threshold_states(self, shapes) -> None:
        c, total = self.config, len(self.ds)
        for layer in self.layers:
            K, h, w = shapes[layer]
            q: unitscope.ExactQuantile | unitscope.QuantileSketch
            if c.exact:
                q = unitscope.ExactQuantile(K, c.quantile, total * h * w, dim=1, device=self.device,
                                            backend=self.backend)
            else:
                kw = {} if c.sketch_size is None else {"size": c.sketch_size}
                q = unitscope.QuantileSketch(K, dim=1, device=self.device, seed=0, backend=self.backend, **kw)
            self.states["quantile"][layer] = q
            self.states["topk"][layer] = TopKImages(K, c.topk, (h, w), device=self.device)

    def make_tally_states(self, state) -> None:
        lc = torch.from_numpy(self.ds.label_category.clip(min=0)).to(self.device)
        for layer in self.layers:
            self.states["tally"][layer] = unitscope.IoUTally(
                state.shapes[layer][0], self.ds.num_labels, label_category=lc,
                num_categories=len(self.ds.categories), out_size=self.out_size,
                align_corners=self.config.align_corners, threshold_op=self.config.threshold_op,
                union=self.config.union, device=self.device, backend=self.backend)
            self.states["ties"][layer] = ThresholdTies(state.layers[layer].thresholds.to(self.device))

    def snapshot(self, state, names) -> None:
        """The named states' state_dicts into the DissectState (an unknown one: none)."""
        for layer in self.layers:
            entry = state.layer(layer)
            for name in names:
                obj = self.states[name][layer]
                setattr(entry, name, None if obj is None else obj.state_dict())

    # ---- the engine ------------------------------------------------------------------------------
    def _stream(self, state, part, fields, activations, update) -> None:
        """Feed this shard's batches from state.done on: activations(batch) -> {layer: (B, K, h, w)};
        update(layer, acts, batch) under the timer's `part`; snapshot and save every
        checkpoint_every batches."""
        every = self.config.checkpoint_every
        names = ("quantile", "topk") if part == "threshold" else ("tally", "ties")
        desc = "dissect: thresholds" if part == "threshold" else "dissect: tally"
        for nb, batch in enumerate(self.feed.batches(state.done, fields, desc), 1):
            acts = activations(batch, state.done)
            with self.timer(part):
                for layer, a in acts.items():
                    update(layer, a, batch, state.done)
            state.done += batch["index"].numel()
            if every and nb % every == 0:
                self.snapshot(state, names)
                self.save(state)

    # ---- pass 1: quantiles and top-k ---------------------------------------------------------------
    def threshold_pass(self, state) -> None:
        if not self.states["quantile"]:
            self.make_threshold_states(state.shapes)
        s, cache = self.states, self.feed.cache

        def update(layer, a, batch, done):
            s["quantile"][layer].update(a)
            s["topk"][layer].update(a, batch["index"])
            if cache is not None:
                cache[layer][done:done + a.shape[0]].copy_(a)
        self._stream(state, "threshold", ("image",), lambda batch, done: self.feed.forward(batch["image"]), update)

    def finish_threshold(self, state, world) -> None:
        """Merge the ranks' states; each unit's threshold (+inf where all its activations were NaN:
        a dead unit that never fires); on to pass 2."""
        c = self.config
        with self.timer("threshold"):
            for layer in self.layers:
                q = merge_all(self.states["quantile"][layer], world)
                t = merge_all(self.states["topk"][layer], world)
                thr = q.result() if c.exact else q.quantile(c.quantile)
                thr = torch.nan_to_num(thr.detach().float().cpu(), nan=float("inf"))
                state.layers[layer] = LayerState(thresholds=thr, topk=t.state_dict())
        state.stage, state.done = Stage.TALLY, 0
        self.save(state)

    # ---- ties="random": the tied cells' share, counted before the tally ---------------------------
    def tie_pass(self, state, world) -> None:
        """Count each unit's activations above and equal to its threshold over the dataset (this
        shard, then summed over the ranks: one sweep of the cache, else one more forward pass) and
        keep each unit's tie share (TieCounts.shares); saved with the state. Not checkpointed
        within: an interrupted sweep is redone."""
        counts = {layer: TieCounts(state.layers[layer].thresholds.to(self.device)) for layer in self.layers}
        cache, bs = self.feed.cache, self.config.batch_size
        with self.timer("threshold"):
            if cache is not None:
                for layer in self.layers:
                    for lo in range(0, cache[layer].shape[0], bs):
                        counts[layer].update(cache[layer][lo:lo + bs].to(self.device))
            else:
                for batch in self.feed.batches(0, ("image",), "dissect: tie counts"):
                    for layer, a in self.feed.forward(batch["image"]).items():
                        counts[layer].update(a)
            for layer in self.layers:
                parts = gather(counts[layer].counts.cpu(), world)
                counts[layer].counts = torch.stack(parts).sum(0)
                state.layers[layer].tie_share = counts[layer].shares(self.config.quantile)
        self.save(state)

    def _activations(self, batch, done) -> dict:
        """Pass 2's activations of a batch: the cache's (from image `done` of the shard) or a forward."""
        cache = self.feed.cache
        if cache is None:
            return self.feed.forward(batch["image"])
        n = batch["index"].numel()
        return {layer: cache[layer][done:done + n].to(self.device) for layer in self.layers}

    # ---- pass 2: IoU tallies and threshold ties -----------------------------------------------------
    def tally_pass(self, state) -> None:
        if not self.states["tally"]:
            self.make_tally_states(state)
        thresholds = {layer: state.layers[layer].thresholds.to(self.device) for layer in self.layers}
        s, cache, c = self.states, self.feed.cache, self.config
        shares = {layer: state.layers[layer].tie_share for layer in self.layers} if c.ties == "random" else {}

        def update(layer, a, batch, done):
            if s["ties"][layer] is not None:
                s["ties"][layer].update(a)  # the raw ties, before any is drawn in
            if layer in shares:
                a = include_ties(a, thresholds[layer], shares[layer], batch["index"], c.tie_seed, c.threshold_op)
            s["tally"][layer].update(a, thresholds[layer], batch["pixel_labels"].to(self.device),
                                     batch["image_labels"].to(self.device), batch["annotated"].to(self.device))
        fields = ("labels",) if cache is not None else ("image", "labels")
        self._stream(state, "tally", fields, self._activations, update)

    def finish_tally(self, state, world) -> None:
        with self.timer("tally"):
            known = all(gather(all(t is not None for t in self.states["ties"].values()), world))
            for layer in self.layers:
                self.states["tally"][layer] = merge_all(self.states["tally"][layer], world)
                ties = self.states["ties"][layer]
                self.states["ties"][layer] = merge_all(ties, world) if known else None
            self.snapshot(state, ("tally", "ties"))
        state.stage = Stage.DONE
        self.save(state)
