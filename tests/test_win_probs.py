"""Win probabilities of jointly Gaussian scores (agents/request.py): the quadrature for scores
that are independent up to a common shift (and near it), against an independent numpy
quadrature, the quasi-random bank, and 100k fresh draws; edge cases; the compiled one-row
posterior update against Sherman-Morrison in float64."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from copyloop.agents.request import (
    NEAR_INDEPENDENT,
    _near_independent_win_probs,
    _sobol_win_probs,
    gaussian_win_probs,
    kernels,
)

_X, _W = np.polynomial.legendre.leggauss(16)


def independent_reference(mean: np.ndarray, sd: np.ndarray, panels: int = 400) -> np.ndarray:
    """P(k wins) for independent N(mean_k, sd_k²) scores: ∫ p_k Π_{l≠k} Φ_l by a composite
    16-point Gauss-Legendre rule on ``panels`` panels over a 9-sd window (written apart from
    the kernel, in numpy)."""
    lo, hi = (mean - 9 * sd).max(), (mean + 9 * sd).max()
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * (edges[1] - edges[0])
    t = ((edges[:-1] + half)[:, None] + half * _X).ravel()
    w = np.tile(_W, panels)
    z = (t - mean[:, None]) / sd[:, None]
    cdf = ndtr(z)
    dens = np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * sd[:, None])
    others = np.array([np.prod(np.delete(cdf, k, axis=0), axis=0) for k in range(mean.size)])
    return (dens * others) @ (half * w)


def shifted(sd: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A covariance diag(sd²) + b_k + b_l: independent scores plus a correlated common shift
    (the off-diagonals of a disjoint-arm model with a shared intercept)."""
    return np.diag(sd**2) + b[:, None] + b[None, :]


def drawn(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n, method="eigh")
    return np.bincount(z.argmax(axis=1), minlength=mean.size) / n


# (K, mean scale, sd ratio, common shift scale): near-ties, clear leaders, spread-out scales
CASES = [
    (3, 0.1, 1.5, 0.0),
    (3, 1.0, 3.0, 0.5),
    (5, 0.3, 2.0, 0.2),
    (8, 0.5, 6.0, 1.0),
    (10, 0.2, 1.2, 0.3),
    (10, 1.0, 10.0, 0.0),
    (10, 3.0, 16.0, 2.0),
]


@pytest.mark.parametrize(("k", "spread", "ratio", "shift"), CASES)
def test_quadrature_matches_independent_reference(k, spread, ratio, shift) -> None:
    """Independent scores up to a common shift: within 2e-5 of a 6,400-node reference on every
    candidate (the rules are sized for 1e-5), summing to 1, never negative."""
    rng = np.random.default_rng(k * 100 + int(10 * ratio))
    for _ in range(5):
        sd = np.exp(rng.uniform(-np.log(ratio), 0.0, k))
        sd[0], sd[-1] = 1.0, 1.0 / ratio
        mean = rng.normal(0.0, spread, k)
        b = np.abs(rng.normal(0.0, shift, k)) * float(sd.min() ** 2)  # keeps S − 2b ≥ 0 … ish
        cov = shifted(sd, b)
        got = _near_independent_win_probs(mean, cov)
        assert got is not None, "a shifted diagonal covariance takes the quadrature"
        ref = independent_reference(mean, sd)
        np.testing.assert_allclose(got, ref, atol=2e-5)
        assert got.sum() == pytest.approx(1.0, abs=1e-12) and (got >= 0).all()


@pytest.mark.parametrize("k", [3, 6, 10])
def test_quadrature_matches_bank_and_fresh_draws(k) -> None:
    """A diagonal posterior over one-hot arms with an intercept (the stream's LogisticTS):
    the quadrature agrees with the quasi-random bank within 0.01 (the bank's own error ≤ 0.007)
    and with 100k fresh draws within 4.5 SE + 1e-3 per candidate."""
    rng = np.random.default_rng(k)
    for _ in range(3):
        w_shared = rng.uniform(0.1, 1.0)
        w_arm = rng.uniform(0.2, 1.0, k)
        cov = np.diag(w_arm) + w_shared  # φ_k = [1, e_k]: Cov(s_k, s_l) = w₀ + δ_kl w_k
        mean = rng.normal(0.0, 0.5, k)
        got = gaussian_win_probs(mean, cov)
        np.testing.assert_allclose(got, _sobol_win_probs(mean, cov), atol=0.01)
        ref = drawn(mean, cov, 100_000, seed=k)
        tol = 4.5 * np.sqrt(ref * (1 - ref) / 100_000) + 1e-3
        assert (np.abs(got - ref) <= tol).all(), (got, ref)


def nested_reference(mean: np.ndarray, cov: np.ndarray, points: int = 2048) -> np.ndarray:
    """P(k wins) for any covariance: cov = c·diag + rest (rest PSD), the independent part by
    :func:`independent_reference`, the rest averaged over scrambled-Sobol normal points."""
    from scipy.special import ndtri
    from scipy.stats import qmc

    lam = np.diag(cov)
    d = 1.0 / np.sqrt(lam)
    c = 0.9 * np.linalg.eigvalsh(cov * d[:, None] * d[None, :]).min()
    chol = np.linalg.cholesky(cov - c * np.diag(lam) + 1e-14 * np.eye(mean.size))
    z = ndtri(qmc.Sobol(mean.size, seed=7).random(points)).T
    shifts = chol @ z
    sd = np.sqrt(c * lam)
    acc = sum(independent_reference(mean + shifts[:, i], sd, 25) for i in range(points))
    return acc / points


@pytest.mark.parametrize(
    ("k", "rho", "same_sign"), [(4, 0.01, False), (6, 0.05, True), (10, 0.1, False), (8, 0.1, True)]
)
def test_first_order_correction_near_independent(k, rho, same_sign) -> None:
    """Residual correlations up to NEAR_INDEPENDENT (also all of one sign, the worst case for
    a first-order correction): within 1e-3 of a nested 2,048-point reference (the
    uncorrected independent answer errs up to 2.6e-3 here; corrected ≤ 3.4e-4)."""
    rng = np.random.default_rng(k)
    sd = np.exp(rng.uniform(-np.log(2.5), 0.0, k))
    r = rng.uniform(0.0 if same_sign else -rho, rho, (k, k))
    r = np.triu(r, 1) + np.triu(r, 1).T
    cov = np.diag(sd**2) + r * np.outer(sd, sd) + 0.2  # plus a common shift
    assert np.linalg.eigvalsh(cov).min() > 0
    mean = rng.normal(0.0, 0.3, k)
    got = _near_independent_win_probs(mean, cov)
    assert got is not None
    np.testing.assert_allclose(got, nested_reference(mean, cov), atol=1e-3)


@pytest.mark.parametrize(
    ("mean", "cov", "expected"),
    [
        ([0.3], [[1.0]], [1.0]),  # K = 1
        ([0.0, 0.0], [[1.0, 0.3], [0.3, 1.0]], [0.5, 0.5]),  # K = 2, a tie
        ([1.0, 0.0], [[1.0, 0.5], [0.5, 2.0]], [float(ndtr(1.0 / np.sqrt(2.0))), None]),
        ([0.0, 0.0, 0.0, 0.0], np.eye(4) * 0.3 + 0.1, [0.25] * 4),  # a 4-way tie
        ([0.0, 0.0, -100.0], np.eye(3), [0.5, 0.5, 0.0]),  # out of reach: exactly 0
        ([5.0, 0.0, 0.0], np.eye(3) * 1e-6, [1.0, 0.0, 0.0]),  # tiny variances
    ],
)
def test_edge_cases(mean, cov, expected) -> None:
    got = gaussian_win_probs(np.array(mean), np.array(cov, float))
    exp = [1.0 - sum(e for e in expected if e is not None) if e is None else e for e in expected]
    np.testing.assert_allclose(got, exp, atol=1e-9)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("why", "mean", "cov"),
    [
        ("correlated", [0.0, 0.1, 0.2], [[1.0, 0.6, 0.0], [0.6, 1.0, -0.4], [0.0, -0.4, 1.0]]),
        ("scales beyond 16x", [0.0, 0.0, 0.0], np.diag([1.0, 1e-3, 0.5])),
        ("identical candidates", [0.1, 0.1, 0.0], [[1, 1, 0.2], [1, 1, 0.2], [0.2, 0.2, 1]]),
    ],
)
def test_quadrature_declines(why, mean, cov) -> None:
    """Where the quadrature does not hold (strong correlation, too wide a spread of scales, a
    singular pair), it declines and the bank answers."""
    m, c = np.array(mean, float), np.array(cov, float)
    assert _near_independent_win_probs(m, c) is None, why
    got = gaussian_win_probs(m, c)
    assert got.sum() == pytest.approx(1.0, abs=1e-12) and (got >= 0).all()


def test_deterministic_and_float32() -> None:
    """A function of (mean, cov): the same answer every call, and float32 inputs (what the
    serving posterior holds) give the float64 inputs' answer to float32 precision."""
    rng = np.random.default_rng(0)
    mean, cov = rng.normal(size=10), np.diag(rng.uniform(0.5, 1.0, 10)) + 0.3
    a, b = gaussian_win_probs(mean, cov), gaussian_win_probs(mean, cov)
    np.testing.assert_array_equal(a, b)
    c = gaussian_win_probs(mean.astype(np.float32), cov.astype(np.float32))
    np.testing.assert_allclose(c, a, atol=1e-5)
    assert NEAR_INDEPENDENT <= 0.1


def test_rls_rows_matches_sherman_morrison() -> None:
    """The compiled one-row update of the serving posterior (C = v²Σ, float32) follows
    Sherman-Morrison in float64 over 50 sparse and dense rows."""
    rng = np.random.default_rng(0)
    d, v2 = 40, 0.5
    cov64 = np.eye(d) * v2
    mean64 = np.zeros(d)
    cov32, mean32 = cov64.astype(np.float32), mean64.astype(np.float32)
    for i in range(50):
        x = rng.normal(size=d) * (rng.random(d) < (0.2 if i % 2 else 1.0))
        r = float(rng.random() < 0.3)
        kernels().rls_rows(cov32, mean32, x[None, :], np.array([r]), v2)
        cx = cov64 @ x
        den = v2 + x @ cx
        mean64 += cx * (r - x @ mean64) / den
        cov64 -= np.outer(cx, cx) / den
    np.testing.assert_allclose(cov32, cov64, atol=2e-6)
    np.testing.assert_allclose(mean32, mean64, atol=2e-5)
