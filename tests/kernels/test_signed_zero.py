"""ExactQuantile keeps, states and returns zeros as +0.0 on every backend (issue 24 part 4): CUDA's
torch.topk orders -0.0 below +0.0 and the CPU's does not, so a stream mixing the two zeros gave
results equal in value but not in bits."""
import pytest
import torch

import unitscope
from conftest import device_of
from unitscope.reference.quantile import exact_quantile


def mixed_zeros(seed, n=3000, K=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, K, generator=g)
    zero = torch.rand(n, K, generator=g) < 0.6  # the quantiles of interest fall on a zero
    sign = torch.where(torch.rand(n, K, generator=g) < 0.5, -1.0, 1.0)
    return torch.where(zero, sign * 0.0, x)


def run(backend, x, q, parts=3):
    dev = device_of(backend) if backend != "torch" else torch.device("cpu")
    e = unitscope.ExactQuantile(x.shape[1], q, x.shape[0], dim=1, device=dev, backend=backend)
    for piece in x.chunk(parts):
        e.update(piece.to(dev))
    return e


def bits(t):
    return t.cpu().contiguous().view(torch.int32)


@pytest.mark.parametrize("q", [0.9, 0.2, 0.5, 0.7])  # top mode, bottom mode, both near the middle
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_zeros_give_the_same_bits_on_every_backend(backend, q, seed):
    x = mixed_zeros(seed)
    assert (torch.signbit(x) & (x == 0)).any() and (~torch.signbit(x) & (x == 0)).any()
    want = run("torch", x, q)
    got = run(backend, x, q)
    for e in (want, got):
        cand = e.state_dict()["candidates"]
        assert not (torch.signbit(cand) & (cand == 0)).any(), "a -0.0 candidate"
    s, w = got.state_dict(), want.state_dict()
    used = torch.arange(s["candidates"].shape[1])[None, :] < s["fill"][:, None]
    assert torch.equal(s["fill"], w["fill"])
    assert torch.equal(bits(s["candidates"])[used], bits(w["candidates"])[used])
    r = got.result()
    assert torch.equal(bits(r), bits(want.result()))
    assert torch.equal(r.cpu(), exact_quantile(x, q, dim=1))
    assert not (torch.signbit(r) & (r == 0)).any()
