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
