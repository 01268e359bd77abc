"""Off-policy estimators: small frozen dataclasses on one base (in the spirit of obp).

Every estimator computes, from logged feedback ``data``, a target policy's per-row distribution
``target`` (n, K) and, for the model-based ones, a reward model's predictions ``q`` (n, K):

* the estimate ``V̂`` of the target policy's expected reward, and
* per-row influence terms ``ψ_i`` with mean 0 whose spread gives a CLT interval
  ``V̂ ± z · sd(ψ)/√n`` (for self-normalised estimators the delta-method linearisation).

With ``w_i = π(a_i|x_i)/p_i`` and ``q̂_i(a)`` the reward model:

=========  ==============================================================================
``dm``     ``mean(Σ_a π(a|x) q̂(a))``
``ipw``    ``mean(w r)``; ``max_weight`` clips ``w`` (biased, lower variance)
``snipw``  ``Σ w r / Σ w``
``dr``     ``mean(Σ_a π q̂ + w (r − q̂(a_i)))``
``sndr``   ``mean(Σ_a π q̂) + Σ w (r − q̂(a_i)) / Σ w``
``switch-dr``  DR where ``w ≤ tau``, DM where ``w > tau`` (Wang et al. 2017)
``dros``   DR with shrunk weights ``λ w / (w² + λ)`` (Su et al. 2020)
``mips``   IPW with marginal weights over action-embedding categories (Saito & Joachims 2022)
``snmips`` self-normalised MIPS
=========  ==============================================================================
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from copyloop.ope.data import BanditFeedback

Array = npt.NDArray[np.float64]

ESS_WARN_SHARE = 0.01
"""Warn when the effective sample size of the importance weights is below this share of n."""


@dataclass(frozen=True)
class Interval:
    """An estimate with its (1 − alpha) confidence interval and weight diagnostics."""

    estimator: str
    estimate: float
    lower: float
    upper: float
    alpha: float
    method: str
    n: int
    ess: float | None = None
    max_weight: float | None = None

    @property
    def width(self) -> float:
        return self.upper - self.lower

    def covers(self, value: float) -> bool:
        return self.lower <= value <= self.upper


def importance_weights(data: BanditFeedback, target: Array) -> Array:
    """``π(a_i|x_i) / p_i`` per row."""
    return target[np.arange(data.n_rows), data.action] / data.pscore


def weight_diagnostics(w: Array) -> tuple[float, float]:
    """(effective sample size ``(Σw)²/Σw²``, max weight)."""
    s2 = float(np.dot(w, w))
    return (float(w.sum() ** 2 / s2) if s2 > 0 else 0.0), float(w.max())


def _warn_weights(name: str, w: Array) -> None:
    ess, wmax = weight_diagnostics(w)
    n = w.size
    if ess < ESS_WARN_SHARE * n:
        warnings.warn(
            f"{name}: effective sample size {ess:.1f} of {n} rows ({ess / n:.2%}), max weight "
            f"{wmax:.1f} — the target policy is far from the logging policy; expect wide "
            "intervals, prefer DR/SNDR/Switch-DR, or log with more exploration",
            stacklevel=3,
        )


@dataclass(frozen=True)
class Estimator(ABC):
    """Base of all estimators."""

    name: ClassVar[str] = "estimator"
    needs_reward_model: ClassVar[bool] = False
    uses_weights: ClassVar[bool] = True

    @abstractmethod
    def _terms(self, data: BanditFeedback, target: Array, q: Array | None) -> tuple[float, Array]:
        """(estimate, influence terms (n,))."""

    def parts(self, data: BanditFeedback, target: Array, q: Array | None = None) -> Array:
        """Per-row summands ``(n, p)`` whose column sums determine the estimate through
        :meth:`combine` — what a resampling bootstrap (or a streamed evaluation) needs."""
        est, psi = self._terms(data, target, self._check(q, data))
        return (psi + est)[:, None]

    @staticmethod
    def combine(sums: Array, n: Array) -> Array:
        """The estimate from column sums ``(..., p)`` over ``n`` rows (``(...)``)."""
        return sums[..., 0] / n

    def _check(self, q: Array | None, data: BanditFeedback) -> Array | None:
        if self.needs_reward_model:
            if q is None:
                raise ValueError(
                    f"{self.name} needs reward-model predictions `q` of shape "
                    f"({data.n_rows}, {data.n_slots}) — fit one with fit_reward_model"
                )
            if q.shape != (data.n_rows, data.n_slots):
                raise ValueError(
                    f"`q` must have shape ({data.n_rows}, {data.n_slots}), got {q.shape}"
                )
        return q

    def estimate(self, data: BanditFeedback, target: Array, q: Array | None = None) -> float:
        """The point estimate of the target policy's value."""
        return self._terms(data, target, self._check(q, data))[0]

    def interval(
        self, data: BanditFeedback, target: Array, q: Array | None = None, alpha: float = 0.05
    ) -> Interval:
        """The CLT interval from the per-row influence terms (``V̂ ± z_{1−α/2} sd(ψ)/√n``)."""
        if not 0 < alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
        est, psi = self._terms(data, target, self._check(q, data))
        n = data.n_rows
        half = float(norm.ppf(1 - alpha / 2) * psi.std(ddof=1) / np.sqrt(n)) if n > 1 else np.inf
        ess = wmax = None
        if self.uses_weights:
            w = importance_weights(data, target)
            _warn_weights(self.name, w)
            ess, wmax = weight_diagnostics(w)
        return Interval(self.name, est, est - half, est + half, alpha, "clt", n, ess, wmax)


def _dm_values(target: Array, q: Array) -> Array:
    return np.einsum("nk,nk->n", target, q)


@dataclass(frozen=True)
class DM(Estimator):
    """Direct method: the reward model's value of the target policy."""

    name: ClassVar[str] = "dm"
    needs_reward_model: ClassVar[bool] = True
    uses_weights: ClassVar[bool] = False

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        v = _dm_values(target, q)
        est = float(v.mean())
        return est, v - est


@dataclass(frozen=True)
class IPW(Estimator):
    """Inverse propensity weighting; ``max_weight`` clips weights (obp's ``lambda_``)."""

    name: ClassVar[str] = "ipw"
    max_weight: float | None = None

    def __post_init__(self) -> None:
        if self.max_weight is not None and self.max_weight <= 0:
            raise ValueError(f"`max_weight` must be > 0, got {self.max_weight}")

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        w = importance_weights(data, target)
        if self.max_weight is not None:
            w = np.minimum(w, self.max_weight)
        v = w * data.reward
        est = float(v.mean())
        return est, v - est


@dataclass(frozen=True)
class SNIPW(Estimator):
    """Self-normalised IPW."""

    name: ClassVar[str] = "snipw"

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        w = importance_weights(data, target)
        mw = w.mean()
        est = float((w * data.reward).sum() / w.sum())
        return est, w * (data.reward - est) / mw

    def parts(self, data: BanditFeedback, target: Array, q: Array | None = None) -> Array:
        w = importance_weights(data, target)
        return np.column_stack([w * data.reward, w])

    @staticmethod
    def combine(sums: Array, n: Array) -> Array:
        return sums[..., 0] / sums[..., 1]


@dataclass(frozen=True)
class DR(Estimator):
    """Doubly robust."""

    name: ClassVar[str] = "dr"
    needs_reward_model: ClassVar[bool] = True

    def _weights(self, w: Array) -> Array:
        return w

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        w = self._weights(importance_weights(data, target))
        qa = q[np.arange(data.n_rows), data.action]
        v = _dm_values(target, q) + w * (data.reward - qa)
        est = float(v.mean())
        return est, v - est


@dataclass(frozen=True)
class SNDR(Estimator):
    """Self-normalised doubly robust."""

    name: ClassVar[str] = "sndr"
    needs_reward_model: ClassVar[bool] = True

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        w = importance_weights(data, target)
        qa = q[np.arange(data.n_rows), data.action]
        dm = _dm_values(target, q)
        mw = w.mean()
        corr = float((w * (data.reward - qa)).sum() / w.sum())
        est = float(dm.mean()) + corr
        psi = (dm - dm.mean()) + w * (data.reward - qa - corr) / mw
        return est, psi

    def parts(self, data: BanditFeedback, target: Array, q: Array | None = None) -> Array:
        q = self._check(q, data)
        assert q is not None
        w = importance_weights(data, target)
        qa = q[np.arange(data.n_rows), data.action]
        return np.column_stack([_dm_values(target, q), w * (data.reward - qa), w])

    @staticmethod
    def combine(sums: Array, n: Array) -> Array:
        return sums[..., 0] / n + sums[..., 1] / sums[..., 2]


@dataclass(frozen=True)
class SwitchDR(DR):
    """Switch-DR (Wang, Agarwal & Dudík 2017): the DR correction only where ``w ≤ tau``."""

    name: ClassVar[str] = "switch-dr"
    tau: float = 100.0

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"`tau` must be > 0, got {self.tau}")

    def _weights(self, w: Array) -> Array:
        return np.where(w <= self.tau, w, 0.0)


@dataclass(frozen=True)
class DRos(DR):
    """DR with optimistic shrinkage (Su et al. 2020): weights ``λ w / (w² + λ)``."""

    name: ClassVar[str] = "dros"
    lambda_: float = 100.0

    def __post_init__(self) -> None:
        if self.lambda_ < 0:
            raise ValueError(f"`lambda_` must be >= 0, got {self.lambda_}")

    def _weights(self, w: Array) -> Array:
        if self.lambda_ == 0:
            return np.zeros_like(w)
        if np.isinf(self.lambda_):  # no shrinkage: plain DR (obp's convention)
            return w
        return self.lambda_ * w / (w * w + self.lambda_)


def embedding_categories(
    data: BanditFeedback, n_categories: int, seed: int = 0
) -> npt.NDArray[np.int64]:
    """Discrete action-embedding category per row and slot, (n, K): k-means over the distinct
    candidates' embeddings (deterministic for a seed); -1 on unused slots."""
    if data.candidate_features is None:
        raise ValueError(
            "MIPS needs candidate embeddings — pass the variants table (with "
            "embeddings) when building the feedback"
        )
    from sklearn.cluster import KMeans

    feats = data.candidate_features[data.mask]
    uniq, inv = np.unique(feats, axis=0, return_inverse=True)
    k = min(n_categories, uniq.shape[0])
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(uniq.astype(np.float64))
    cat = np.full(data.mask.shape, -1, np.int64)
    cat[data.mask] = km.labels_[inv.ravel()]
    return cat


@dataclass(frozen=True)
class MIPS(Estimator):
    """Marginalised IPS over action-embedding categories (Saito & Joachims 2022).

    ``w(x, e) = π(e|x) / π₀(e|x)`` with ``π(e|x) = Σ_{a: e(a)=e} π(a|x)``: similar copy shares
    one weight, which keeps weights small when there are many similar candidates. Needs the
    logging policy's full distribution (``action_probs``) and candidate embeddings.

    Args:
        n_categories: k-means categories of the candidates' embeddings.
        self_normalize: SNMIPS.
    """

    name: ClassVar[str] = "mips"
    n_categories: int = 4
    self_normalize: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_categories < 1:
            raise ValueError(f"`n_categories` must be >= 1, got {self.n_categories}")

    def weights(self, data: BanditFeedback, target: Array) -> Array:
        if data.logging_probs is None:
            raise ValueError(
                "MIPS needs the logging policy's full distribution — the log's "
                "`action_probs` column is missing"
            )
        cat = embedding_categories(data, self.n_categories, self.seed)
        rows = np.arange(data.n_rows)
        same = cat == cat[rows, data.action][:, None]
        return (target * same).sum(1) / (data.logging_probs * same).sum(1)

    def parts(self, data: BanditFeedback, target: Array, q: Array | None = None) -> Array:
        w = self.weights(data, target)
        return np.column_stack([w * data.reward, w])

    def combine(self, sums: Array, n: Array) -> Array:  # type: ignore[override]
        return sums[..., 0] / (sums[..., 1] if self.self_normalize else n)

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        w = self.weights(data, target)
        if self.self_normalize:
            est = float((w * data.reward).sum() / w.sum())
            return est, w * (data.reward - est) / w.mean()
        v = w * data.reward
        est = float(v.mean())
        return est, v - est

    def interval(
        self, data: BanditFeedback, target: Array, q: Array | None = None, alpha: float = 0.05
    ) -> Interval:
        iv = super().interval(data, target, q, alpha)
        ess, wmax = weight_diagnostics(self.weights(data, target))
        return Interval(
            self.name if not self.self_normalize else "snmips",
            iv.estimate,
            iv.lower,
            iv.upper,
            alpha,
            "clt",
            iv.n,
            ess,
            wmax,
        )


ESTIMATORS: dict[str, Estimator] = {
    "dm": DM(),
    "ipw": IPW(),
    "snipw": SNIPW(),
    "dr": DR(),
    "sndr": SNDR(),
    "switch-dr": SwitchDR(),
    "dros": DRos(),
    "mips": MIPS(),
    "snmips": MIPS(self_normalize=True),
}
"""The estimators by CLI name, with default hyper-parameters."""


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose from {sorted(ESTIMATORS)}") from None
