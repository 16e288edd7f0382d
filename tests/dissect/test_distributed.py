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
                [str(w.message) for w in caught if "dissect:" in str(w.message)])

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
