"""unitscope.distributed.all_merge across 2 gloo processes: every rank ends with the single-process
state, for ExactQuantile, QuantileSketch and any object with state_dict/load_state_dict/merge."""
import os
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import unitscope
from unitscope.distributed import all_merge

K, TOTAL = 4, 2 * 3 * 8 * 8


class Tally:
    """A minimal mergeable object: all_merge must not depend on the quantile classes."""

    def __init__(self):
        self.n = torch.zeros(3, dtype=torch.int64)

    def state_dict(self):
        return {"n": self.n.clone()}

    def load_state_dict(self, s):
        self.n = s["n"].clone()

    def merge(self, other):
        self.n += other.n


def data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, K, 8, 8, generator=g)
    x[0, 1, 2, :3] = float("nan")
    return x


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = data()[rank::world]  # each rank its own images
        e = unitscope.ExactQuantile(K, 0.995, 6 * 64).update(x)
        s = unitscope.QuantileSketch(K).update(x)
        t = Tally()
        t.n += rank + 1
        for obj in (e, s, t):
            all_merge(obj)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump({"exact": e.result(), "exact_state": e.state_dict(), "sketch": s.state_dict(),
                         "tally": t.n}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_all_merge_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in range(2)]
    x = data()
    e = unitscope.ExactQuantile(K, 0.995, 6 * 64).update(x[0::2]).update(x[1::2])
    s = unitscope.QuantileSketch(K).update(x)
    for g in got:
        torch.testing.assert_close(g["exact"], e.result(), rtol=0, atol=0, equal_nan=True)
        for k, v in s.state_dict().items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(g["sketch"][k], v), k
        assert g["tally"].tolist() == [3, 3, 3]
    for k in ("candidates", "fill", "count", "nan_count"):
        assert torch.equal(got[0]["exact_state"][k], got[1]["exact_state"][k])


def test_all_merge_without_process_group_and_bad_object():
    t = Tally()
    assert all_merge(t) is t and t.n.tolist() == [0, 0, 0]
    with pytest.raises(TypeError, match="has no state_dict"):
        all_merge(object())
