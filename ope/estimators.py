"""Off-policy estimators: small frozen dataclasses on one base (in the spirit of obp).

Every estimator computes, from logged feedback ``data``, a target policy's per-row distribution
``target`` (n, K) and, for the model-based ones, a reward model's predictions ``q`` (n, K):

* the estimate ``V̂`` of the target policy's expected reward, and
* per-row influence terms ``ψ_i`` with mean 0 whose spread gives a CLT interval
  ``V̂ ± z · sd(ψ)/√n`` (for self-normalised estimators the delta-method linearisation), and
* per-row parts whose column means determine the estimate (:meth:`Estimator.parts`), from which
  :mod:`copyloop.ope.resample` draws the studentised (bootstrap-t, the default) or percentile
  bootstrap without copying the data.

With ``w_i = π(a_i|x_i)/p_i`` and ``q̂_i(a)`` the reward model:

=========  ==============================================================================
``dm``     ``mean(Σ_a π(a|x) q̂(a))``
``ipw``    ``mean(w r)``; ``max_weight`` clips ``w`` (biased, lower variance)
``snipw``  ``Σ w r / Σ w``
``dr``     ``mean(Σ_a π q̂ + w (r − q̂(a_i)))``
``sndr``   ``mean(Σ_a π q̂) + Σ w (r − q̂(a_i)) / Σ w``
``switch-dr``  DR where ``w ≤ tau``, DM where ``w > tau`` (Wang et al. 2017)
``dros``   DR with shrunk weights ``λ w / (w² + λ)`` (Su et al. 2020)
``mips``   IPW with marginal weights over action-embedding categories (Saito & Joachims 2022);
           exact categories by default (unbiased), k-means categories optional
``snmips`` self-normalised MIPS
=========  ==============================================================================
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

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


INTERVAL_METHODS = ("clt", "bootstrap-t", "bootstrap")
"""Interval methods of :meth:`Estimator.interval`: the CLT interval from per-row influence terms,
the studentised bootstrap (bootstrap-t) and the percentile bootstrap (both on the estimator's
sufficient statistics, the reward model held fixed; :mod:`copyloop.ope.resample`)."""

_BLOCK = 4096
_SUM_BLOCK = 16_384
"""Rows per block of the fused (n, K) passes: a block of two (n, K) float64 matrices stays in
cache between the row sums and the logged-slot gathers."""


def logged(data: BanditFeedback, m: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``m[i, a_i]`` per row for an (n, K) matrix: flat ``take`` over blocks of rows (2–3×
    faster than ``m[arange(n), a]``, which builds and broadcasts two n-long index arrays)."""
    n, k = m.shape
    if not m.flags.c_contiguous:
        return m[np.arange(n), data.action]
    out = np.empty(n, m.dtype)
    off = np.arange(_SUM_BLOCK, dtype=np.int64) * k
    for s in range(0, n, _SUM_BLOCK):
        e = min(n, s + _SUM_BLOCK)
        m[s:e].reshape(-1).take(off[: e - s] + data.action[s:e], out=out[s:e])
    return out


def importance_weights(data: BanditFeedback, target: Array) -> Array:
    """``π(a_i|x_i) / p_i`` per row."""
    w = logged(data, np.asarray(target, np.float64))
    np.divide(w, data.pscore, out=w)
    return w


def row_terms(data: BanditFeedback, target: Array, q: Array) -> tuple[Array, Array, Array]:
    """Per row ``(Σ_a π(a|x) q̂(x, a), π(a_i|x_i), q̂(x_i, a_i))`` in one blocked pass over the
    two (n, K) matrices (each block's rows are still in cache when its logged slots are read)."""
    target = np.asarray(target, np.float64)
    q = np.asarray(q, np.float64)
    n, k = target.shape
    dm, t_a, q_a = np.empty(n), np.empty(n), np.empty(n)
    off = np.arange(_BLOCK, dtype=np.int64) * k
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        tb, qb = target[s:e], q[s:e]
        np.einsum("nk,nk->n", tb, qb, out=dm[s:e])
        idx = off[: e - s] + data.action[s:e]
        tb.reshape(-1).take(idx, out=t_a[s:e])
        qb.reshape(-1).take(idx, out=q_a[s:e])
    return dm, t_a, q_a


def _columns(*cols: Array) -> Array:
    """Columns side by side, (n, m), column-major: the bootstrap reads each column as one
    contiguous vector (no per-column copy)."""
    out = np.empty((cols[0].shape[0], len(cols)), order="F")
    for j, c in enumerate(cols):
        out[:, j] = c
    return out


def block_sums(
    data: BanditFeedback,
    target: Array,
    q: Array | None,
    weights: Callable[[Array], Array] | None = None,
) -> tuple[float, float, float, float]:
    """``(Σ w r, Σ w, Σ_i Σ_a π q̂, Σ w (r − q̂(a_i)))`` over all rows, ``w = weights(π/p)``, in
    one pass over row blocks: a point estimate never allocates an n-long temporary (the last
    two are 0 without ``q``)."""
    target = np.asarray(target, np.float64)
    n, k = target.shape
    wr = sw = dm = corr = 0.0
    off = np.arange(_SUM_BLOCK, dtype=np.int64) * k
    for s in range(0, n, _SUM_BLOCK):
        e = min(n, s + _SUM_BLOCK)
        idx = off[: e - s] + data.action[s:e]
        tb = target[s:e]
        w = tb.reshape(-1).take(idx) / data.pscore[s:e]
        if weights is not None:
            w = weights(w)
        r = data.reward[s:e]
        wr += float(np.einsum("i,i->", w, r))
        sw += float(w.sum())
        if q is not None:
            qb = np.asarray(q[s:e], np.float64)
            dm += float(np.einsum("nk,nk->", tb, qb))
            corr += float(np.einsum("i,i->", w, r - qb.reshape(-1).take(idx)))
    return wr, sw, dm, corr


def weight_diagnostics(w: Array) -> tuple[float, float]:
    """(effective sample size ``(Σw)²/Σw²``, max weight)."""
    s2 = float(np.einsum("i,i->", w, w))
    return (float(w.sum() ** 2 / s2) if s2 > 0 else 0.0), float(w.max())


def _warn_weights(name: str, w: Array) -> tuple[float, float]:
    """Warn when the weights are extreme; return their (ESS, max weight)."""
    ess, wmax = weight_diagnostics(w)
    n = w.size
    if ess < ESS_WARN_SHARE * n:
        warnings.warn(
            f"{name}: effective sample size {ess:.1f} of {n} rows ({ess / n:.2%}), max weight "
            f"{wmax:.1f} — the target policy is far from the logging policy; expect wide "
            "intervals, prefer DR/SNDR/Switch-DR, or log with more exploration",
            stacklevel=3,
        )
    return ess, wmax


@dataclass(frozen=True)
class Estimator(ABC):
    """Base of all estimators.

    ``estimate`` gives the point estimate; ``interval`` a (1 − α) interval by one of
    :data:`INTERVAL_METHODS` (default :attr:`default_interval`, chosen per estimator by the
    coverage study in ``docs/ope_coverage.md``).
    """

    name: ClassVar[str] = "estimator"
    needs_reward_model: ClassVar[bool] = False
    uses_weights: ClassVar[bool] = True
    default_interval: ClassVar[str] = "bootstrap-t"

    @abstractmethod
    def _terms(self, data: BanditFeedback, target: Array, q: Array | None) -> tuple[float, Array]:
        """(estimate, influence terms (n,))."""

    def _parts(
        self, data: BanditFeedback, target: Array, q: Array | None
    ) -> tuple[Array, Array | None]:
        """(per-row parts (n, m), the importance weights for the diagnostics or None)."""
        est, psi = self._terms(data, target, q)
        w = importance_weights(data, target) if self.uses_weights else None
        return (psi + est)[:, None], w

    def parts(self, data: BanditFeedback, target: Array, q: Array | None = None) -> Array:
        """Per-row summands ``(n, m)`` whose column means determine the estimate through
        :meth:`combine` — what a resampling bootstrap (or a streamed evaluation) needs."""
        return self._parts(data, target, self._check(q, data))[0]

    @staticmethod
    def combine(sums: Array, n: Array) -> Array:
        """The estimate from column sums ``(..., m)`` over ``n`` rows (``(...)``); every
        estimator's ``combine(sums, n)`` is a function of ``sums / n`` alone."""
        return sums[..., 0] / n

    @property
    def label(self) -> str:
        """The name shown in reports."""
        return self.name

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
        self,
        data: BanditFeedback,
        target: Array,
        q: Array | None = None,
        alpha: float = 0.05,
        *,
        method: str | None = None,
        n_boot: int = 999,
        seed: int = 0,
        blocks: int = 10_000,
    ) -> Interval:
        """A (1 − alpha) interval with weight diagnostics (ESS, max weight).

        Args:
            method: ``"clt"`` — ``V̂ ± z_{1−α/2} sd(ψ)/√n`` from the per-row influence terms;
                ``"bootstrap-t"`` — the studentised bootstrap (skew-aware; see
                :mod:`copyloop.ope.resample`); ``"bootstrap"`` — the percentile bootstrap.
                Both bootstraps hold the reward model fixed (for a refitting bootstrap see
                :func:`~copyloop.ope.reward_models.bootstrap_interval`). None: the estimator's
                :attr:`default_interval`.
            n_boot: bootstrap resamples (999 puts the bootstrap-t's order statistics exactly at
                2.5% and 97.5%).
            seed: the bootstrap's seed.
            blocks: beyond this many rows the bootstrap resamples this many random groups of
                rows (Poisson weights), not rows.
        """
        if not 0 < alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
        method = method or self.default_interval
        if method not in INTERVAL_METHODS:
            raise ValueError(f"`method` must be one of {INTERVAL_METHODS}, got {method!r}")
        q = self._check(q, data)
        n = data.n_rows
        if method == "clt":
            est, psi = self._terms(data, target, q)
            half = (
                float(norm.ppf(1 - alpha / 2) * psi.std(ddof=1) / np.sqrt(n)) if n > 1 else np.inf
            )
            lo, hi = est - half, est + half
            w = self._diagnostic_weights(data, target) if self.uses_weights else None
        else:
            from copyloop.ope.resample import percentile_bounds, resample, studentized_bounds

            parts, w = self._parts(data, target, q)
            r = resample(
                parts,
                self.combine,
                n_boot=n_boot,
                rng=np.random.default_rng(seed),
                studentize=method == "bootstrap-t",
                blocks=blocks,
            )
            est = r.point
            lo, hi = (
                studentized_bounds(r, alpha)
                if method == "bootstrap-t"
                else percentile_bounds(r.stats, alpha)
            )
        ess = wmax = None
        if w is not None:
            ess, wmax = _warn_weights(self.label, w)
        return Interval(self.label, est, lo, hi, alpha, method, n, ess, wmax)

    def _diagnostic_weights(self, data: BanditFeedback, target: Array) -> Array:
        return importance_weights(data, target)


@dataclass(frozen=True)
class DM(Estimator):
    """Direct method: the reward model's value of the target policy."""

    name: ClassVar[str] = "dm"
    needs_reward_model: ClassVar[bool] = True
    uses_weights: ClassVar[bool] = False
    default_interval: ClassVar[str] = "clt"  # the CLI refits the model per resample instead

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        v = np.einsum("nk,nk->n", target, q)
        est = float(v.mean())
        return est, v - est

    def _parts(self, data, target, q):  # type: ignore[no-untyped-def]
        return np.einsum("nk,nk->n", target, q)[:, None], None

    def estimate(self, data: BanditFeedback, target: Array, q: Array | None = None) -> float:
        qq = self._check(q, data)
        assert qq is not None  # _check raised otherwise
        return float(np.einsum("nk,nk->", target, qq)) / data.n_rows


@dataclass(frozen=True)
class IPW(Estimator):
    """Inverse propensity weighting; ``max_weight`` clips weights (obp's ``lambda_``)."""

    name: ClassVar[str] = "ipw"
    max_weight: float | None = None

    def __post_init__(self) -> None:
        if self.max_weight is not None and self.max_weight <= 0:
            raise ValueError(f"`max_weight` must be > 0, got {self.max_weight}")

    def _clip(self, w: Array) -> Array:
        return w if self.max_weight is None else np.minimum(w, self.max_weight)

    def estimate(self, data: BanditFeedback, target: Array, q: Array | None = None) -> float:
        """``mean(w r)`` read only on the rows with a non-zero reward (clicks are rare: the
        (n, K) target is touched in a few % of its rows)."""
        nz = np.flatnonzero(data.reward)
        k = target.shape[1]
        if target.flags.c_contiguous:
            t = target.reshape(-1).take(nz * k + data.action[nz])
        else:
            t = target[nz, data.action[nz]]
        w = self._clip(t / data.pscore[nz])
        return float(np.dot(w, data.reward[nz]) / data.n_rows)

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        v = self._clip(importance_weights(data, target)) * data.reward
        est = float(v.mean())
        return est, v - est

    def _parts(self, data, target, q):  # type: ignore[no-untyped-def]
        w = importance_weights(data, target)
        return (self._clip(w) * data.reward)[:, None], w


@dataclass(frozen=True)
class SNIPW(Estimator):
    """Self-normalised IPW."""

    name: ClassVar[str] = "snipw"

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        w = importance_weights(data, target)
        mw = w.mean()
        est = float(np.dot(w, data.reward) / w.sum())
        return est, w * (data.reward - est) / mw

    def estimate(self, data: BanditFeedback, target: Array, q: Array | None = None) -> float:
        wr, sw, _, _ = block_sums(data, target, None)
        return wr / sw

    def _parts(self, data, target, q):  # type: ignore[no-untyped-def]
        w = importance_weights(data, target)
        return _columns(w * data.reward, w), w

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

    def _values(self, data: BanditFeedback, target: Array, q: Array) -> tuple[Array, Array]:
        """(per-row DR terms, raw importance weights)."""
        dm, t_a, q_a = row_terms(data, target, q)
        w = t_a / data.pscore
        return dm + self._weights(w) * (data.reward - q_a), w

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        v = self._values(data, target, q)[0]
        est = float(v.mean())
        return est, v - est

    def estimate(self, data: BanditFeedback, target: Array, q: Array | None = None) -> float:
        q = self._check(q, data)
        _, _, dm, corr = block_sums(data, target, q, self._weights)
        return (dm + corr) / data.n_rows

    def _parts(self, data, target, q):  # type: ignore[no-untyped-def]
        v, w = self._values(data, target, q)
        return v[:, None], w


@dataclass(frozen=True)
class SNDR(Estimator):
    """Self-normalised doubly robust."""

    name: ClassVar[str] = "sndr"
    needs_reward_model: ClassVar[bool] = True

    def _terms(self, data, target, q):  # type: ignore[no-untyped-def]
        dm, t_a, q_a = row_terms(data, target, q)
        w = t_a / data.pscore
        mw = w.mean()
        corr = float(np.dot(w, data.reward - q_a) / w.sum())
        est = float(dm.mean()) + corr
        psi = (dm - dm.mean()) + w * (data.reward - q_a - corr) / mw
        return est, psi

    def _parts(self, data, target, q):  # type: ignore[no-untyped-def]
        dm, t_a, q_a = row_terms(data, target, q)
        w = t_a / data.pscore
        return _columns(dm, w * (data.reward - q_a), w), w

    @staticmethod
    def combine(sums: Array, n: Array) -> Array:
        return sums[..., 0] / n + sums[..., 1] / sums[..., 2]

    def estimate(self, data: BanditFeedback, target: Array, q: Array | None = None) -> float:
        q = self._check(q, data)
        _, sw, dm, corr = block_sums(data, target, q)
        return dm / data.n_rows + corr / sw


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
    data: BanditFeedback, n_categories: int | None, seed: int = 0
) -> npt.NDArray[np.int64]:
    """Discrete action-embedding category per row and slot, (n, K), -1 on unused slots.

    ``n_categories=None``: exact — one category per distinct candidate (its variant when the
    log names variants, else its distinct embedding), so copy shares a weight only with
    identical copy. An integer: k-means over the distinct candidates' embeddings (deterministic
    for a seed), which pools similar copy and is biased when similar copy differs in CTR.
    """
    cat = np.full(data.mask.shape, -1, np.int64)
    if n_categories is None and data.variant is not None:
        cat[data.mask] = data.variant[data.mask]
        return cat
    if data.candidate_features is not None:
        feats = data.candidate_features[data.mask]
        uniq, inv = np.unique(feats, axis=0, return_inverse=True)
        inv = inv.ravel()
    elif data.variant is not None and data.variant_embeddings is not None:
        used, inv = np.unique(data.variant[data.mask], return_inverse=True)
        uniq, inv = data.variant_embeddings[used], inv.ravel()
    else:
        raise ValueError(
            "MIPS needs candidate embeddings — pass the variants table (with "
            "embeddings) when building the feedback"
        )
    if n_categories is None:
        cat[data.mask] = inv
        return cat
    from sklearn.cluster import KMeans

    k = min(n_categories, uniq.shape[0])
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(uniq.astype(np.float64))
    cat[data.mask] = km.labels_[inv]
    return cat


@dataclass(frozen=True)
class MIPS(Estimator):
    """Marginalised IPS over action-embedding categories (Saito & Joachims 2022).

    ``w(x, e) = π(e|x) / π₀(e|x)`` with ``π(e|x) = Σ_{a: e(a)=e} π(a|x)``: copy in one category
    shares one weight, which keeps weights small when there are many similar candidates. MIPS is
    unbiased when the reward depends on the copy only through its category (no direct effect);
    the default, exact categories (``n_categories=None``: one per distinct copy), always
    satisfies that and pools only identical copy (with distinct candidates it equals IPW);
    ``n_categories=k`` pools similar copy by k-means, trading bias for variance — the coverage
    study (``docs/ope_coverage.md``) measures that bias on the click world. Needs the logging
    policy's full distribution (``action_probs``) and candidate embeddings or variant ids.

    Args:
        n_categories: None (exact) or the number of k-means categories of the embeddings.
        self_normalize: SNMIPS.
    """

    name: ClassVar[str] = "mips"
    n_categories: int | None = None
    self_normalize: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_categories is not None and self.n_categories < 1:
            raise ValueError(f"`n_categories` must be >= 1 or None, got {self.n_categories}")

    @property
    def label(self) -> str:
        return "snmips" if self.self_normalize else "mips"

    def weights(self, data: BanditFeedback, target: Array) -> Array:
        if data.logging_probs is None:
            raise ValueError(
                "MIPS needs the logging policy's full distribution — the log's "
                "`action_probs` column is missing"
            )
        cat = embedding_categories(data, self.n_categories, self.seed)
        same = cat == logged(data, cat)[:, None]
        return (target * same).sum(1) / (data.logging_probs * same).sum(1)

    def _parts(self, data, target, q):  # type: ignore[no-untyped-def]
        w = self.weights(data, target)
        return _columns(w * data.reward, w), w

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

    def _diagnostic_weights(self, data: BanditFeedback, target: Array) -> Array:
        return self.weights(data, target)


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
