"""The cpp Grad-CAM's AVX2 paths (chosen at run time; csrc/cpu/gradcam.cpp) give the bits of its
SSE2/scalar paths (UNITSCOPE_NO_AVX2=1): row tails, outputs written around the cache (>= 4 MiB, a
misaligned out= buffer), NaN maps, and the one tie whose order shows, a min of +0.0 against -0.0."""
import pytest
import torch

import unitscope
from unitscope.kernels import gradcam

pytestmark = pytest.mark.skipif("cpp" not in unitscope.backends(), reason="needs the compiled cpp backend")


def _both(monkeypatch, fn):
    monkeypatch.delenv("UNITSCOPE_NO_AVX2", raising=False)
    fast = fn()
    monkeypatch.setenv("UNITSCOPE_NO_AVX2", "1")
    plain = fn()
    monkeypatch.delenv("UNITSCOPE_NO_AVX2")
    return fast, plain


def _same_bits(a, b):
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@pytest.mark.parametrize("size", [(224, 224), (37, 223), (5, 9), (16, 17)])
@pytest.mark.parametrize("normalize", [True, False])
def test_avx2_bits_equal_sse2(monkeypatch, size, normalize):
    g = torch.Generator().manual_seed(sum(size))
    A = torch.randn(3, 6, 7, 7, generator=g)
    A[0, :, 2:5] = 0.0
    A[1, 0, 0, 0] = float("nan")
    W = torch.randn(3, 2, 6, generator=g)
    for relu in (True, False):
        fast, plain = _both(monkeypatch, lambda relu=relu: gradcam(A, weights=W, out_size=size, relu=relu,
                                                                   normalize=normalize, backend="cpp"))
        assert _same_bits(fast, plain)


def test_streamed_large_output_into_misaligned_buffer(monkeypatch):
    """24 x 224 x 224 floats (4.8 MB) are written with non-temporal stores; out= starts 4 bytes past a
    32-byte boundary, so every row has a scalar head."""
    g = torch.Generator().manual_seed(0)
    A, G = torch.randn(24, 16, 7, 7, generator=g).relu(), torch.randn(24, 16, 7, 7, generator=g)
    storage = torch.full((24 * 224 * 224 + 1,), float("nan"))
    buf = storage[1:].view(24, 224, 224)
    fast, plain = _both(monkeypatch, lambda: gradcam(A, G, out_size=224, normalize=True, backend="cpp", out=buf).clone())
    assert _same_bits(fast, plain) and not fast.isnan().any()
    torch.testing.assert_close(fast, gradcam(A, G, out_size=224, normalize=True, backend="torch"), rtol=2e-5, atol=2e-5)


def test_signed_zero_min_follows_the_sse2_order(monkeypatch):
    """Maps whose smallest value is 0 held by both +0.0 and -0.0 pixels: which one is the min decides
    (v - min) for the -0.0 pixels, and the SSE2 lane order decides which; the AVX2 pass must redo
    such a map the SSE2 way. -0.0 comes from the resize: 0.5 x (-1.4e-45) underflows to -0.0."""
    tiny = -torch.finfo(torch.float32).smallest_normal * 2.0 ** -23  # -1.4e-45, the smallest denormal
    g = torch.Generator().manual_seed(3)
    checked, outcomes = 0, set()
    for trial in range(40):
        w = 2 * int(torch.randint(8, 40, (1,), generator=g))
        kind = torch.randint(0, 3, (w // 2,), generator=g)  # per output column: +0, -0 or a positive value
        src = torch.empty(2, w)
        for j, k in enumerate(kind.tolist()):
            src[:, 2 * j:2 * j + 2] = (0.0, tiny, 1.0 + j)[k]
        if not (kind == 0).any() or not (kind == 1).any() or not (kind == 2).any():
            continue
        A = src[None, None]
        # 2 x w -> 1 x w/2 (align_corners=False): every tap weighs 0.5, so tiny columns give -0.0
        fast, plain = _both(monkeypatch, lambda A=A, size=(1, w // 2): gradcam(
            A, weights=torch.ones(1, 1), relu=False, normalize=True, out_size=size, backend="cpp"))
        assert _same_bits(fast, plain), trial
        checked += 1
        outcomes.add(bool(((plain == 0) & torch.signbit(plain)).any()))  # -0.0 kept: the min was +0.0
    assert checked >= 10 and outcomes == {True, False}  # the tie went both ways: the order shows
