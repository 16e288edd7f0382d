"""Two gloo processes (spawned) dissect a sharded dataset; the merged result equals one process."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import unitscope
from unitscope.data import BrodenDataset


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4, padding=2), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 6, 3, stride=2, padding=1))


def _worker(rank, world, port, root, out, ckpt):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        d = unitscope.dissect(_model(), ["1", "2"], BrodenDataset(root), batch_size=5, progress=False,
                              checkpoint_dir=ckpt)
        torch.save({l.layer: {"thresholds": l.thresholds, "iou": l.iou, "intersection": l.intersection,
                              "activation": l.activation, "label": l.label_count, "topk": l.topk_index,
                              "maps": l.topk_maps, "images": l.images} for l in d}, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one(concept_root, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(concept_root), str(tmp_path), str(tmp_path / "ckpt")), nprocs=2)
    single = unitscope.dissect(_model(), ["1", "2"], BrodenDataset(concept_root), batch_size=5, progress=False)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["dissect-rank0of2.pt", "dissect-rank1of2.pt"]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for layer in ("1", "2"):
            s = single[layer]
            g = got[layer]
            assert g["images"] == 24
            assert np.array_equal(g["thresholds"], s.thresholds)
            for name, mine in (("iou", s.iou), ("intersection", s.intersection), ("activation", s.activation),
                               ("label", s.label_count), ("topk", s.topk_index), ("maps", s.topk_maps)):
                assert np.array_equal(g[name], mine), (rank, layer, name)


def _resume_worker(rank, world, port, root, out, ckpt):
    """Three reruns after a finished run, each after rank 1's checkpoint is changed: deleted (ranks
    at different stages: all restart), rewound to the start of pass 2 (rank 0 redoes its pass-2
    share), corrupted (every rank stops with the error instead of waiting in a collective)."""
    import datetime
    import warnings

    from unitscope.dissect import CheckpointError
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))
    mine = Path(ckpt) / "dissect-rank1of2.pt"

    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = unitscope.dissect(_model(), ["1", "2"], BrodenDataset(root), batch_size=5, progress=False,
                                  checkpoint_dir=ckpt)
        return ({l.layer: (l.thresholds, l.iou, l.topk_index) for l in d},
                [str(w.message) for w in caught if "different stages" in str(w.message)])  # (not the plateau one)

    def change(edit):
        if rank == 1:
            edit()
        torch.distributed.barrier()

    def rewind():
        state = torch.load(mine, weights_only=True)
        from unitscope.dissect.checkpoint import save_checkpoint
        state.update(stage="tally", done=0)
        for entry in state["layers"].values():
            entry.pop("tally")
            entry.pop("ties")  # (format 4: the tie counts of the second pass go with its tally)
        save_checkpoint(mine, {k: v for k, v in state.items() if k not in ("format", "version", "digest")})

    try:
        results = {"first": run()}
        change(mine.unlink)
        results["deleted"] = run()
        change(rewind)
        results["rewound"] = run()
        change(lambda: mine.write_bytes(b"garbage"))
        try:
            run()
            results["corrupt"] = "no error"
        except CheckpointError as e:
            results["corrupt"] = str(e)
        torch.save(results, Path(out) / f"resume{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_where_to_resume(concept_root, tmp_path):
    mp.spawn(_resume_worker, args=(2, _free_port(), str(concept_root), str(tmp_path), str(tmp_path / "ckpt")),
             nprocs=2)
    single = unitscope.dissect(_model(), ["1", "2"], BrodenDataset(concept_root), batch_size=5, progress=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"resume{rank}.pt", weights_only=False)
        for case in ("first", "deleted", "rewound"):
            arrays, _ = got[case]
            for layer in ("1", "2"):
                s = single[layer]
                assert all(np.array_equal(a, b) for a, b in zip(arrays[layer], (s.thresholds, s.iou, s.topk_index))), \
                    (rank, case, layer)
        warned = {case: got[case][1] for case in ("first", "deleted", "rewound")}
        if rank == 0:  # said once, by rank 0
            assert warned["first"] == []
            assert warned["deleted"] == ["dissect: the ranks' checkpoints are at different stages (rank 0: done, "
                                         "rank 1: none); every rank restarts from the first pass"]
            assert warned["rewound"] == ["dissect: the ranks' checkpoints are at different stages (rank 0: done, "
                                         "rank 1: tally); ranks that had finished redo their share of the second pass"]
        else:
            assert all(w == [] for w in warned.values())
        msg = got["corrupt"]
        assert "dissect-rank1of2.pt is unreadable" in msg
        assert msg.startswith("rank 1 refused its checkpoint, so every rank stops") == (rank == 0)


class _RankFormat(torch.nn.Module):
    """A conv net whose output is shifted by 0.25 on channels_last input (a visible stand-in for
    rounding differences) and runs slower on contiguous input on rank 0 but slower on channels_last
    on rank 1: deciding alone, the ranks would keep different formats."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=4, padding=2)
        self.tap = torch.nn.Identity()

    def forward(self, x):
        import time
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if cl == (rank == 1):
            time.sleep(0.03)
        return self.tap(self.conv(x) + (0.25 if cl else 0.0))


def _variant_worker(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        d = unitscope.dissect(_RankFormat(), ["tap"], BrodenDataset(root), batch_size=1, progress=False,
                              compile="auto", cache_activations=False, checkpoint_dir=Path(out) / "ckpt")
        l = d["tap"]
        torch.save({"thresholds": l.thresholds, "intersection": l.intersection, "topk": l.topk_values,
                    "ties": l.ties}, Path(out) / f"variant{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_every_rank_uses_rank_0s_forward_variant(concept_root, tmp_path):
    """compile='auto' on two ranks: rank 0's trial decides (channels_last here) for both, before any
    counted batch, so the merged result equals one process's (which keeps channels_last too)."""
    mp.spawn(_variant_worker, args=(2, _free_port(), str(concept_root), str(tmp_path)), nprocs=2)
    single = unitscope.dissect(_RankFormat(), ["tap"], BrodenDataset(concept_root), batch_size=1, progress=False,
                               compile="auto", cache_activations=False, checkpoint_dir=tmp_path / "single")
    assert torch.load(tmp_path / "single" / "dissect.pt", weights_only=True)["channels_last"] is True
    for rank in range(2):
        state = torch.load(tmp_path / "ckpt" / f"dissect-rank{rank}of2.pt", weights_only=True)
        assert state["channels_last"] is True and state["compiled"] is False
        got, s = torch.load(tmp_path / f"variant{rank}.pt", weights_only=False), single["tap"]
        for name, mine in (("thresholds", s.thresholds), ("intersection", s.intersection),
                           ("topk", s.topk_values), ("ties", s.ties)):
            assert np.array_equal(got[name], mine), (rank, name)
