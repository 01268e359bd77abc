"""One request at a time: the pieces every agent's :meth:`~copyloop.agents.Policy.decide` uses.

- **Replayable randomness.** A decision's random choice is a uniform derived from
  (policy entropy, model version, event id) by a keyed hash (as Azure Personalizer seeds from
  the event id): the same event on the same snapshot gives the same decision, in any thread or
  process, and no generator state is shared or mutated.
- **Exact propensities in K dimensions.** For a Gaussian posterior over a linear head, the K
  candidates' sampled scores are jointly Gaussian, ``N(m, S)`` with ``m = Xμ`` and
  ``S = XΣXᵀ`` (K×K). :func:`gaussian_win_probs` computes each candidate's chance to win:
  by one-dimensional quadrature where the scores are independent up to a common shift (or
  nearly: a first-order correction takes the rest), else over a fixed bank of scrambled-Sobol
  normal points pushed through ``m + chol(S) z``, with one coordinate integrated in closed
  form (see there). The action is then drawn from those probabilities, so the logged
  propensity is exactly the probability with which the action was chosen; the method only
  sets the distance to idealised Thompson sampling, measured by ``bench/serve_agents.py``
  against 100k fresh draws.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np
import numpy.typing as npt

REQUEST_DRAWS = 2048
"""Points of the quasi-random bank behind per-request Thompson propensities (a power of 2).

With one coordinate integrated in closed form (:func:`gaussian_win_probs`), 2,048 points are as
close to idealised Thompson sampling as 8,192 points of plain counting were: max abs error
0.007 / 0.006 (LinearTS / LogisticTS, 10 arms) and 0.002 / 0.003 (the default market, K ≤ 8)
over 168 requests against a 2²⁰-point reference (``bench/serve_agents.py`` measures it against
100k fresh draws)."""
FALLBACK_DRAWS = 8192
"""Points of plain win counting, for a covariance that leaves no coordinate to integrate."""


@dataclass(frozen=True)
class Choice:
    """One decision.

    Attributes:
        event_id: the request's event id (its randomness comes from it).
        variant_id: the chosen candidate.
        index: its position in the request's candidates.
        probs: the probability of every candidate, in request order, (K,); sums to 1.
        model_version: the version of the policy that decided.
    """

    event_id: str
    variant_id: str
    index: int
    probs: npt.NDArray[np.float64]
    model_version: str

    @property
    def propensity(self) -> float:
        """Probability of the chosen candidate."""
        return float(self.probs[self.index])


def event_key(entropy: int, version: str, event_id: str) -> int:
    """A 64-bit key from (policy entropy, model version, event id): the seed of one decision."""
    h = hashlib.blake2b(f"{entropy}\x1f{version}\x1f{event_id}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def key_uniform(key: int) -> float:
    """A uniform in [0, 1) from an :func:`event_key` (53 bits)."""
    return (key >> 11) * (1.0 / (1 << 53))


def pick(probs: npt.NDArray[np.float64], key: int) -> int:
    """Inverse-CDF draw from ``probs`` with the event's uniform; never a zero-probability slot."""
    ps = probs.tolist()
    cum = list(accumulate(ps))  # left-to-right sums, as np.cumsum
    u = key_uniform(key) * cum[-1]
    for i, c in enumerate(cum):
        if c > u:  # the first slot whose cumulative probability exceeds u: p > 0 there
            return i
    i = len(ps) - 1  # u at the very top (rounding): the last slot with positive probability
    while ps[i] <= 0.0 and i > 0:
        i -= 1
    return i


_BANKS: dict[int, npt.NDArray[np.float32]] = {}
_BANK_LOCK = threading.Lock()


def normal_bank(k: int, n: int = REQUEST_DRAWS) -> npt.NDArray[np.float32]:
    """A fixed (k, n) bank of standard-normal points: scrambled Sobol through the normal
    quantile, seeded, so every process has the same one (cached per k)."""
    key = k * 1_000_003 + n
    bank = _BANKS.get(key)
    if bank is None:
        from scipy.special import ndtri
        from scipy.stats import qmc

        with _BANK_LOCK:
            bank = _BANKS.get(key)
            if bank is None:
                pts = qmc.Sobol(d=k, scramble=True, seed=20261204).random(n)
                bank = np.ascontiguousarray(ndtri(np.clip(pts, 1e-12, 1 - 1e-12)).T, np.float32)
                bank.setflags(write=False)
                _BANKS[key] = bank
    return bank


_AUGMENTED: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}


def _augmented_banks(k: int, n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The (k − 1)-dimensional bank with a row of ones below it (the mean's column), as its
    first :data:`FIRST_PASS` points and the rest, each (k, ·) and contiguous (a Sobol
    sequence's first 2^m points are a balanced point set of their own)."""
    key = k * 1_000_003 + n
    banks = _AUGMENTED.get(key)
    if banks is None:
        out = np.ones((k, n), np.float32)
        out[: k - 1] = normal_bank(k - 1, n)
        first = min(FIRST_PASS, n // 2)
        parts = (np.ascontiguousarray(out[:, :first]), np.ascontiguousarray(out[:, first:]))
        for h in parts:
            h.setflags(write=False)
        banks = _AUGMENTED.setdefault(key, parts)
    return banks


FIRST_PASS = 512
"""Points of the bank every request uses; the rest only when :data:`SPLIT_TOLERANCE` says so."""
SPLIT_TOLERANCE = 0.05
"""The rest of the bank is used when, after the first :data:`FIRST_PASS` points, candidates
other than the leader and the runner-up hold more than this probability (where counting among
the others errs most). Below it the race is the leader's against the runner-up, which the
closed-form coordinate makes smooth: on 168 requests (10-arm stream and the default market)
the max error against a 2²⁰-point reference is the whole bank's (0.007 / 0.006 / 0.003 /
0.003), and one row at a time ~16 % (LinearTS) / ~42 % (LogisticTS) of stream requests needed
the rest (measured when every request took the bank; one-hot arms now take the quadrature)."""


def gaussian_win_probs(
    mean: npt.NDArray[np.floating], cov: npt.NDArray[np.floating], n: int = REQUEST_DRAWS
) -> npt.NDArray[np.float64]:
    """P(candidate k has the highest score) under scores ~ N(mean, cov), (K,).

    A deterministic function of (mean, cov), by one of two methods:

    - **Quadrature** (:func:`_near_independent_win_probs`) where the scores are independent up
      to a common shift, or nearly so (residual correlations ≤ :data:`NEAR_INDEPENDENT`, the
      candidates' scales within 16x): a one-dimensional integral over the max's window,
      within 1e-5 of the exact probabilities for independent scores and within ~1e-3 at
      residual correlation 0.1 (first-order corrected). Disjoint-arm models with a shared
      intercept (one-hot arms) are the exact case; K = 2 is closed form.
    - **The quasi-random bank** (:func:`_sobol_win_probs`) for any other covariance.
    """
    k = mean.shape[0]
    if k == 1:
        return np.ones(1)
    m = np.asarray(mean, np.float64)
    quad = _near_independent_win_probs(m, cov)
    if quad is not None:
        return quad
    return _sobol_win_probs(m, cov, n)


def _sobol_win_probs(
    mean: npt.NDArray[np.float64], cov: npt.NDArray[np.floating], n: int = REQUEST_DRAWS
) -> npt.NDArray[np.float64]:
    """:func:`gaussian_win_probs` over the quasi-random bank, for any covariance.

    The candidate with the highest mean is put last in the Cholesky order, so its score is
    ``μ_c(z) + σ_c ε`` with ``ε`` its own independent normal: given the other K − 1 scores
    (one point ``z`` of the fixed quasi-random bank), it wins with probability
    ``Φ((μ_c(z) − M(z)) / σ_c)``, M the others' best, and the others' best wins otherwise —
    one coordinate integrated exactly (Rao-Blackwellisation), which turns the counting of a
    discontinuous indicator into a smooth average and needs ~4x fewer points for the same
    error. 1 − Φ is Page's tanh form (within 1.8e-4). The bank's first points decide whether
    the rest is needed (:data:`FIRST_PASS`, :data:`SPLIT_TOLERANCE`). A covariance with no
    independent part left for that candidate (e.g. two identical candidates) is counted over
    :data:`FALLBACK_DRAWS` plain points instead.

    One compiled call (:func:`copyloop.agents._kernels.bank_win_probs`) from the covariance
    to the probabilities: the same order, factor, bank points, pass decision and tie
    splitting as the numpy version it replaced (kept in ``tests/test_win_probs.py`` as the
    reference), summed in another order — the two agree to ~1e-6 (6e-8 at most over 2,783
    default-market requests), and a given input always gives the same output. The numpy
    version spent its ~45 µs a request in ~25 small numpy calls; this takes ~10 µs.
    """
    k = mean.shape[0]
    kern = _KERNELS if _KERNELS is not None else kernels()
    first, rest = _augmented_banks(k, n)
    out = np.empty(k)
    if kern.bank_win_probs(mean, cov, first, rest, SPLIT_TOLERANCE, out):
        return out
    return _counted_win_probs(mean, cov)  # singular, or nothing of the leader's own left


NEAR_INDEPENDENT = 0.1
"""Largest residual correlation |R_kl| / √(Λ_k Λ_l) (see :func:`_near_independent_win_probs`)
for which the win probabilities come from one-dimensional quadrature with a first-order
correction; above it, from the quasi-random bank. On random near-independent covariances
(K = 3–10, residual correlations up to this value, standard deviations within 3x) the
corrected quadrature's max abs error is 7e-4 against a 2¹³-point nested reference, 2e-5 at
correlations ≤ 0.01 (``tests/test_win_probs.py``)."""
_QUAD_WINDOW = 5.0
"""Half-width of the integration window in standard deviations: the max of the scores lies
outside it, and a candidate left out of it wins, with probability below K·Φ(−5) = K·3e-7."""
_QUAD_NODES = ((3.0, 32), (6.0, 40), (8.0, 48), (16.0, 64))
"""(largest ratio of the candidates' standard deviations, Gauss–Legendre nodes): each row
keeps the error of independent scores' win probabilities below 1e-5 (max over 400 random
cases per ratio, K = 2–10, against 6,000 nodes on a wider window); a wider spread of scales
takes the quasi-random bank."""
_KERNELS: Any = None
_RULES: tuple[npt.NDArray[Any], ...] = ()


def kernels() -> Any:
    """The compiled kernels (:mod:`copyloop.agents._kernels`), imported on first use (with the
    quadrature's Gauss–Legendre rules) and called once on tiny inputs, so that a process pays
    numba's start (~1 s: import, cached kernels, dispatcher) at one known moment — a service
    can call this at startup — never again per request."""
    global _KERNELS, _RULES
    if _KERNELS is None:
        with _BANK_LOCK:
            if _KERNELS is None:
                from copyloop.agents import _kernels

                width = max(n for _, n in _QUAD_NODES)
                nodes = np.zeros((len(_QUAD_NODES), width))
                weights = np.zeros((len(_QUAD_NODES), width))
                for q, (_, n) in enumerate(_QUAD_NODES):
                    nodes[q, :n], weights[q, :n] = np.polynomial.legendre.leggauss(n)
                ratios = np.array([r for r, _ in _QUAD_NODES])
                counts = np.array([n for _, n in _QUAD_NODES], np.int64)
                _RULES = (ratios, counts, nodes, weights)
                eye = np.eye(3)
                # the banks' type (read-only float32), without _augmented_banks: that would
                # take _BANK_LOCK, held here
                bank = np.ones((3, 8), np.float32)
                bank.setflags(write=False)
                for c in (eye, eye.astype(np.float32)):  # the serving posterior is float32
                    _kernels.win_probs(
                        np.zeros(3), c, NEAR_INDEPENDENT, _QUAD_WINDOW, *_RULES, np.empty(3)
                    )
                    _kernels.bank_win_probs(
                        np.zeros(3), c, bank, bank, SPLIT_TOLERANCE, np.empty(3)
                    )
                _kernels.rls_rows(
                    np.eye(2, dtype=np.float32),
                    np.zeros(2, np.float32),
                    np.ones((1, 2)),
                    np.ones(1),
                    1.0,
                )
                one32 = np.ones((1, 2), np.float32)
                frozen = one32.copy()
                frozen.setflags(write=False)  # a request's [1, c] may be a cached read-only one
                for c1 in (one32, frozen):
                    _kernels.request_moments(
                        np.eye(4, dtype=np.float32),
                        np.zeros(4, np.float32),
                        one32[0],
                        c1,
                        np.empty(1),
                        np.empty((1, 1)),
                    )
                _kernels.spd_inverse(np.eye(2))
                _KERNELS = _kernels
    return _KERNELS


def _near_independent_win_probs(
    mean: npt.NDArray[np.float64], cov: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64] | None:
    """:func:`gaussian_win_probs` by one-dimensional quadrature where the scores are
    (nearly) independent up to a common shift; None where they are not (the caller then uses
    the quasi-random bank).

    Who wins depends only on the differences of the scores, and adding one random scalar to
    every score leaves those alone: a covariance ``S`` with off-diagonals ``b_k + b_l`` ranks
    like independent scores with variances ``Λ_k = S_kk − 2 b_k``. (A disjoint-arm model with
    a shared intercept is exactly that — e.g. a diagonal posterior over one-hot arms.) ``b`` is
    fitted to the off-diagonals by least squares (closed form); for independent scores
    ``P(k wins) = ∫ p_k(t) Π_{l≠k} Φ_l(t) dt``, one Gauss–Legendre rule over the window
    where the max lives serving every k. What is left of the off-diagonals, ``R``, enters to
    first order by Price's theorem (∂P/∂S_ij = ∂²P/∂m_i∂m_j), which the same nodes
    integrate: the error is second order in ``R`` (see :data:`NEAR_INDEPENDENT`). Candidates
    that cannot reach the window get 0. Compiled (numba): one call, ~K²·nodes flops.
    """
    k = mean.shape[0]
    if k == 2:  # closed form: P(s₀ > s₁) = Φ((m₀ − m₁) / √Var(s₀ − s₁))
        v = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
        if not v > 1e-12 * float(cov[0, 0] + cov[1, 1]):  # identical candidates: counted
            return None
        p0 = 0.5 * math.erfc((float(mean[1]) - float(mean[0])) / math.sqrt(2.0 * v))
        return np.array([p0, 1.0 - p0])
    kern = _KERNELS if _KERNELS is not None else kernels()
    out = np.empty(k)
    if kern.win_probs(mean, cov, NEAR_INDEPENDENT, _QUAD_WINDOW, *_RULES, out):
        return out
    return None


def _counted_win_probs(
    mean: npt.NDArray[np.floating], cov: npt.NDArray[np.floating], n: int = FALLBACK_DRAWS
) -> npt.NDArray[np.float64]:
    """Win frequencies over ``n`` plain bank points (ties in a point split evenly)."""
    k = mean.shape[0]
    c = np.asarray(cov, np.float64)
    try:
        chol = np.linalg.cholesky(c + 1e-12 * max(float(np.trace(c)) / k, 1e-30) * np.eye(k))
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(c)
        chol = v * np.sqrt(np.maximum(w, 0.0))
    s = chol.astype(np.float32) @ normal_bank(k, n)
    s += np.asarray(mean, np.float32)[:, None]
    top = s == s.max(axis=0, keepdims=True)
    per_point = top.sum(axis=0, dtype=np.float32)
    if np.all(per_point == 1.0):
        wins = np.count_nonzero(top, axis=1).astype(np.float64)
    else:  # ties split evenly within a point
        wins = (top / per_point).sum(axis=1, dtype=np.float64)
    return wins / wins.sum()


def check_context(context: npt.ArrayLike, width: int | None) -> npt.NDArray[np.float32]:
    """A request's context as a finite float32 vector of the policy's width.

    Raises:
        ValueError: not 1-D numbers, the wrong width, or NaN/inf (naming the positions).
    """
    if type(context) is np.ndarray and context.dtype == np.float32:
        u = context
    else:
        try:
            u = np.asarray(context, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("`context` must be a vector of numbers") from None
    if u.ndim != 1:
        raise ValueError(f"`context` must be one vector (d,), got shape {u.shape}")
    if width is not None and u.shape[0] != width:
        raise ValueError(
            f"`context` has {u.shape[0]} features but this policy was trained on {width} — "
            "send the campaign's declared features, in order"
        )
    if not math.isfinite(float(u.sum())):  # NaN or ±inf anywhere makes the sum so (or overflow)
        bad = ~np.isfinite(u)
        if bad.any():
            raise ValueError(
                f"`context` must be finite; positions {np.flatnonzero(bad)[:5].tolist()} are "
                f"{u[bad][:5].tolist()} — impute missing features before deciding"
            )
    return u


def floor_probs(probs: npt.NDArray[np.float64], floor: float) -> npt.NDArray[np.float64]:
    """Mix with uniform so every candidate gets at least ``floor`` (the exploration floor)."""
    if floor <= 0:
        return probs
    k = probs.size
    if floor * k > 1.0:
        raise ValueError(
            f"`exploration_floor`={floor} is above 1/{k}: it cannot hold for {k} candidates — "
            "lower it"
        )
    return (1.0 - floor * k) * probs + floor
