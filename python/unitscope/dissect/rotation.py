"""random_rotation(): the change of basis of Network Dissection's axis-alignment test (Bau et al. 2017,
section 3.2): a layer's K units replaced by K orthogonal combinations of them, from the identity
(alpha=0) to a random rotation (alpha=1), as a transform of captured (B, K, h, w) activations."""
from __future__ import annotations

import numpy as np
import torch


def _haar_special_orthogonal(K: int, rng: np.random.Generator) -> np.ndarray:
    """A random rotation (float64[K, K], det +1), uniform (Haar) on SO(K): the QR decomposition of a
    Gaussian matrix with R's diagonal made positive (Mezzadri 2007), one column's sign flipped when
    the determinant is -1."""
    q, r = np.linalg.qr(rng.standard_normal((K, K)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _rotation_power(q: np.ndarray, alpha: float) -> np.ndarray:
    """q**alpha = expm(alpha * logm(q)) for a rotation q: the point at fraction alpha along the shortest
    path (geodesic) on SO(K) from the identity to q, orthogonal for every alpha.

    logm through q's eigen-decomposition (q is normal; a random rotation has distinct eigenvalues
    e^{i theta}, none at -1, so the principal logarithm is real): the real part, made exactly skew-
    symmetric, is the generator A. expm(alpha A) through the Hermitian matrix iA's eigh (unitary
    eigenvectors), then the orthogonal polar factor (SVD) removes the rounding, so the result is
    orthogonal to float64 precision."""
    w, v = np.linalg.eig(q)
    a = (v * np.log(w)[None, :]) @ np.linalg.inv(v)
    a = a.real
    a = (a - a.T) / 2
    lam, u = np.linalg.eigh(1j * a)  # 1j*a = u diag(lam) u^H, so a = u diag(-1j*lam) u^H
    r = ((u * np.exp(-1j * alpha * lam)[None, :]) @ u.conj().T).real
    left, _, right = np.linalg.svd(r)
    return left @ right


class RandomRotation:
    """The transform x -> R x over the unit axis of (B, K, ...) activations: rotated unit i is
    sum_j R[i, j] * unit j. `matrix` (float64[K, K]) is R; `K`, `alpha`, `seed` how it was made."""

    def __init__(self, K: int, alpha: float, seed: int):
        self.K, self.alpha, self.seed = K, alpha, seed
        if alpha == 0:
            self.matrix = np.eye(K)
        else:
            q = _haar_special_orthogonal(K, np.random.default_rng(seed))
            self.matrix = q if alpha == 1 else _rotation_power(q, alpha)
        self._cache: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[B, K, h, w] or [B, K, ...], floating) -> the rotated activations, same shape,
        dtype and device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[1] != self.K:
            raise ValueError(f"x must have shape (B, {self.K}, ...) for this rotation of {self.K} units, "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.matrix, dtype=x.dtype, device=x.device)
        r = self._cache[key]
        flat = x.reshape(x.shape[0], self.K, -1)
        return torch.matmul(r, flat).reshape(x.shape)

    def __repr__(self) -> str:  # also what a checkpoint records of the transform
        return f"random_rotation(K={self.K}, alpha={self.alpha!r}, seed={self.seed})"


def random_rotation(K: int, alpha: float = 1.0, seed: int = 0) -> RandomRotation:
    """The paper's random change of basis of a layer's K units (Bau et al. 2017, section 3.2), for
    dissect(transform={layer: random_rotation(K, alpha)}).

    K: the layer's number of units (channels). alpha in [0, 1]: 0 is the identity (the units as
    they are), 1 a rotation drawn uniformly (Haar) from SO(K), and alpha between goes that fraction
    of the way along the geodesic from the identity: R = Q**alpha = expm(alpha logm(Q)), orthogonal
    for every alpha (a straight line (1-alpha) I + alpha Q would not be). seed: the same (K, seed)
    draws the same Q for every alpha, so alphas of one seed lie on one path.
    Returns a callable mapping activations (Tensor[B, K, h, w]) to rotated ones of the same shape.
    """
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K must be a positive integer (the layer's number of units), got {K!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return RandomRotation(int(K), float(alpha), int(seed))
