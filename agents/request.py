"""One request at a time: the pieces every agent's :meth:`~copyloop.agents.Policy.decide` uses.

- **Replayable randomness.** A decision's random choice is a uniform derived from
  (policy entropy, model version, event id) by a keyed hash (as Azure Personalizer seeds from
  the event id): the same event on the same snapshot gives the same decision, in any thread or
  process, and no generator state is shared or mutated.
- **Exact propensities in K dimensions.** For a Gaussian posterior over a linear head, the K
  candidates' sampled scores are jointly Gaussian, ``N(m, S)`` with ``m = Xμ`` and
  ``S = XΣXᵀ`` (K×K). :func:`gaussian_win_probs` counts each candidate's wins over a fixed
  bank of scrambled-Sobol normal points pushed through ``m + chol(S) z``; the action is then
  drawn from those frequencies, so the logged propensity is exactly the probability with which
  the action was chosen. The bank (``REQUEST_DRAWS`` points) only sets the distance to
  idealised Thompson sampling, measured by ``bench/serve_agents.py`` against 100k fresh draws.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

REQUEST_DRAWS = 8192
"""Points of the quasi-random bank behind per-request Thompson propensities (a power of 2)."""


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
    cum = np.cumsum(probs)
    u = key_uniform(key) * cum[-1]
    i = int(np.searchsorted(cum, u, side="right"))
    i = min(i, probs.size - 1)
    while probs[i] <= 0.0 and i > 0:  # u landed exactly on a boundary before a zero slot
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


def gaussian_win_probs(
    mean: npt.NDArray[np.floating], cov: npt.NDArray[np.floating], n: int = REQUEST_DRAWS
) -> npt.NDArray[np.float64]:
    """P(candidate k has the highest score) under scores ~ N(mean, cov), (K,).

    Counted over the fixed quasi-random bank (ties in a point split evenly), so the result is a
    deterministic function of (mean, cov).
    """
    k = mean.shape[0]
    if k == 1:
        return np.ones(1)
    c = np.asarray(cov, np.float64)
    try:
        chol = np.linalg.cholesky(c + 1e-12 * max(float(np.trace(c)) / k, 1e-30) * np.eye(k))
    except np.linalg.LinAlgError:  # PSD but singular (e.g. identical candidates)
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
