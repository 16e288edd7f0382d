"""random_rotation: orthogonal for every alpha, the identity at alpha=0, Q**alpha along one geodesic
(R(a) R(b) = R(a+b)), seeded, applied over the unit axis of (B, K, h, w) activations; bad arguments."""
import numpy as np
import pytest
import torch

from unitscope.dissect import random_rotation
from unitscope.dissect.rotation import _haar_special_orthogonal, _rotation_power

ALPHAS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]


@pytest.mark.parametrize("K", [1, 2, 3, 16, 65])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_orthogonal_rotation_for_every_alpha(K, alpha):
    r = random_rotation(K, alpha, seed=1).matrix
    assert r.shape == (K, K)
    np.testing.assert_allclose(r @ r.T, np.eye(K), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-9)


def test_alpha_zero_is_identity_and_one_is_the_random_rotation():
    np.testing.assert_array_equal(random_rotation(32, 0.0, seed=5).matrix, np.eye(32))
    q = random_rotation(32, 1.0, seed=5).matrix
    assert np.abs(q - np.eye(32)).max() > 0.3  # a real change of basis
    # the power path ends at Q itself (alpha=1 returns Q without the logarithm)
    np.testing.assert_allclose(_rotation_power(q, 1.0), q, atol=1e-10)
    x = torch.randn(2, 32, 3, 4)
    assert torch.equal(random_rotation(32, 0.0)(x), x)


def test_fractions_lie_on_one_geodesic():
    K, seed = 24, 3
    r = {a: random_rotation(K, a, seed).matrix for a in (0.25, 0.5, 0.75, 1.0)}
    np.testing.assert_allclose(r[0.25] @ r[0.25], r[0.5], atol=1e-10)
    np.testing.assert_allclose(r[0.25] @ r[0.5], r[0.75], atol=1e-10)
    np.testing.assert_allclose(r[0.5] @ r[0.5], r[1.0], atol=1e-10)
    # distance from the identity grows with alpha: ||R - I|| increases monotonically
    d = [np.linalg.norm(random_rotation(K, a, seed).matrix - np.eye(K)) for a in ALPHAS]
    assert all(b > a for a, b in zip(d, d[1:]))


def test_seeded_and_haar_draw():
    a = random_rotation(40, 0.6, seed=7).matrix
    np.testing.assert_array_equal(a, random_rotation(40, 0.6, seed=7).matrix)
    assert not np.allclose(a, random_rotation(40, 0.6, seed=8).matrix)
    # Haar on SO(K): the mean of many draws' entries is ~0 and each entry has variance ~1/K
    q = np.stack([_haar_special_orthogonal(8, np.random.default_rng(s)) for s in range(400)])
    assert abs(q.mean()) < 0.02 and abs(q.var() - 1 / 8) < 0.01


def test_applied_over_the_unit_axis():
    rot = random_rotation(5, 0.5, seed=2)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    y = rot(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    expected = torch.einsum("ij,bjhw->bihw", torch.from_numpy(rot.matrix), x)
    torch.testing.assert_close(y, expected)
    # orthogonal: the per-pixel norm over units is kept
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1))
    y32 = rot(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, expected.float(), atol=1e-5, rtol=1e-5)
    assert repr(rot) == "random_rotation(K=5, alpha=0.5, seed=2)"


def test_bad_arguments():
    with pytest.raises(ValueError, match="K must be a positive integer"):
        random_rotation(0)
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\], got 1.5"):
        random_rotation(4, 1.5)
    with pytest.raises(ValueError, match="alpha"):
        random_rotation(4, float("nan"))
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        random_rotation(4, 0.5, seed=-1)
    rot = random_rotation(4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4, \.\.\.\).*got \(2, 3, 5, 5\)"):
        rot(torch.zeros(2, 3, 5, 5))
    with pytest.raises(TypeError, match="floating"):
        rot(torch.zeros(2, 4, 5, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        rot(np.zeros((2, 4, 5, 5)))
