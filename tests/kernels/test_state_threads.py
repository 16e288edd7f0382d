"""States shared between threads and merged with themselves (issue 19, part 4): the compiled kernels
release the GIL, so one object updated from several threads must give the serial result (each object
holds a lock); merge(self) must count the object's values twice, not its NaN padding."""
import threading

import pytest
import torch

import unitscope
from unitscope import ExactQuantile, IoUTally, QuantileSketch
from unitscope.reference.quantile import exact_quantile

BACKENDS = [b for b in unitscope.backends() if b in ("cpp", "numba", "torch")]


def _chunks(n, K=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(8, K, 300, generator=g) for _ in range(n)]
    for c in out:
        c[0, :, :7] = float("nan")
    return out


def _in_threads(fn, items, threads=4):
    barrier = threading.Barrier(threads)
    errors = []

    def work(part):
        barrier.wait()
        try:
            for it in part:
                fn(it)
        except Exception as e:  # noqa: BLE001 (surfaced below)
            errors.append(e)

    ts = [threading.Thread(target=work, args=(items[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_quantile_from_threads_equals_serial(backend):
    chunks = _chunks(16)
    total = 16 * 8 * 300
    serial = ExactQuantile(64, 0.995, total, backend=backend)
    for c in chunks:
        serial.update(c)
    for _ in range(3):
        shared = ExactQuantile(64, 0.995, total, backend=backend)
        _in_threads(shared.update, chunks)
        assert torch.equal(shared.result(), serial.result())
        assert torch.equal(shared.nan_count, serial.nan_count)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sketch_and_tally_from_threads_equal_serial(backend):
    chunks = _chunks(16, seed=1)
    serial, shared = QuantileSketch(64, backend=backend), QuantileSketch(64, backend=backend)
    for c in chunks:
        serial.update(c)
    _in_threads(shared.update, chunks)
    assert all(torch.equal(v, shared._s[k]) for k, v in serial._s.items())

    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 8, 7, 7, generator=g), torch.randint(0, 6, (4, 2, 28, 28), generator=g))
               for _ in range(16)]
    def make():
        return IoUTally(8, 6, label_category=torch.zeros(6, dtype=torch.int64), num_categories=1, out_size=28,
                        backend=backend)

    thr = torch.zeros(8)
    serial_t, shared_t = make(), make()
    for a, lab in batches:
        serial_t.update(a, thr, lab)
    _in_threads(lambda b: shared_t.update(b[0], thr, b[1]), batches)
    for k in ("intersection", "activation", "label", "activation_total"):
        assert torch.equal(getattr(serial_t, k), getattr(shared_t, k)), k
    assert shared_t.images == serial_t.images == 64
    # merges into one object from several threads: the sum of them all
    merged = make()
    _in_threads(merged.merge, [serial_t] * 8)
    assert torch.equal(merged.intersection, serial_t.intersection * 8) and merged.images == 8 * 64


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_quantile_merge_self(backend):
    """merge(self) is the stream seen twice (it used to count the NaN padding as NaN values)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 5, generator=g)
    x[:4, 1] = float("nan")
    q = ExactQuantile(5, 0.5, 100, dim=1, backend=backend).update(x)  # m = 52 > 50: padding kept
    q.merge(q)
    assert q.nan_count.tolist() == [0, 8, 0, 0, 0]
    want = exact_quantile(torch.cat([x, x]), 0.5, dim=1)
    assert torch.equal(q.result(), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sketch_and_tally_merge_self(backend):
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(4))
    s = QuantileSketch(3, backend=backend).update(x)
    twice = QuantileSketch(3, backend=backend).update(x).update(x)
    s.merge(s)
    assert all(torch.equal(v, twice._s[k]) for k, v in s._s.items())
    t = IoUTally(2, 3, label_category=torch.zeros(3, dtype=torch.int64), num_categories=1, out_size=4,
                 backend=backend)
    t.update(torch.randn(2, 2, 2, 2), torch.zeros(2), torch.randint(0, 3, (2, 1, 4, 4)))
    before = t.intersection.clone()
    t.merge(t)
    assert torch.equal(t.intersection, 2 * before) and t.images == 4


def test_locked_objects_still_pickle_and_copy():
    import copy
    import pickle

    q = ExactQuantile(2, 0.5, 4).update(torch.randn(2, 2))
    for other in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
        assert other._lock is not q._lock
        other.update(torch.randn(2, 2))
        assert other.count.tolist() == [4, 4] and q.count.tolist() == [2, 2]
