"""Off-policy evaluation of logs larger than memory: one streamed pass, bounded by the batch.

:func:`evaluate_scan` reads a log (a Parquet file, or a dataset folder of part files scanned by
DuckDB: :meth:`copyloop.contract.DecisionLog.iter_batches`) batch by batch. Per batch it builds
the estimator input (:func:`~copyloop.ope.data.feedback_from_log`), asks ``target`` for the
target policy's distribution on those rows, and folds each estimator's per-row parts
(:meth:`~copyloop.ope.estimators.Estimator.parts`) into running sums: their mean and their
covariance (merged across batches with Chan et al.'s pairwise update, so no ``Σx² − n·x̄²``
cancellation), and the importance weights' ``Σw``, ``Σw²`` and maximum. At the end each
estimate is ``combine(sums, n)`` and its interval the CLT one, ``V̂ ± z·se`` with the
delta-method ``se`` from that covariance: the same numbers as
:func:`~copyloop.ope.evaluate.evaluate_policy` with ``interval="clt"`` on the whole log in
memory (to rounding; ``tests/test_log_scale.py``).

Only estimators whose per-row parts need nothing but the row are streamed
(:data:`SCAN_ESTIMATORS`): the reward-model family cross-fits a model over the whole log, and
the bootstraps resample it.

Example:
    >>> probs = lambda log, data: my_policy_probs(log)  # (n, K) per batch  # doctest: +SKIP
    >>> rep = evaluate_scan("logs/", probs, ["ipw", "snipw"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from copyloop.contract import DecisionLog, LogValidationError, VariantsTable
from copyloop.ope.data import BanditFeedback, check_target, feedback_from_log
from copyloop.ope.estimators import ESS_WARN_SHARE, Interval, get_estimator, importance_weights
from copyloop.ope.evaluate import MIN_ROWS, OPEReport
from copyloop.ope.resample import delta_se

SCAN_ESTIMATORS = ("ipw", "snipw")
"""Estimators :func:`evaluate_scan` streams (no reward model, per-row parts)."""

TargetFn = Callable[[DecisionLog, BanditFeedback], npt.NDArray[np.float64]]
"""``target(batch, data)``: the target policy's distribution on a batch's rows, (n, K)."""


@dataclass
class _Moments:
    """Running mean and scatter matrix of per-row parts (n, m), and weight sums."""

    n: int = 0
    mean: npt.NDArray[np.float64] | None = None
    scatter: npt.NDArray[np.float64] | None = None  # Σ (x − x̄)(x − x̄)ᵀ
    w_sum: float = 0.0
    w_sq: float = 0.0
    w_max: float = -np.inf
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, parts: npt.NDArray[np.float64], w: npt.NDArray[np.float64] | None) -> None:
        nb = parts.shape[0]
        mb = parts.mean(axis=0)
        c = parts - mb
        sb = c.T @ c
        if self.mean is None or self.scatter is None:
            self.n, self.mean, self.scatter = nb, mb, sb
        else:
            tot = self.n + nb
            d = mb - self.mean
            self.scatter = self.scatter + sb + np.outer(d, d) * (self.n * nb / tot)
            self.mean = self.mean + d * (nb / tot)
            self.n = tot
        if w is not None:
            self.w_sum += float(w.sum())
            self.w_sq += float(np.einsum("i,i->", w, w))
            self.w_max = max(self.w_max, float(w.max()))


def evaluate_scan(
    logs: str | os.PathLike[str],
    target: TargetFn,
    estimators: Sequence[str] = SCAN_ESTIMATORS,
    *,
    variants: VariantsTable | None = None,
    alpha: float = 0.05,
    batch_size: int = 1_000_000,
    progress: Callable[[int], None] | None = None,
) -> OPEReport:
    """Estimate a target policy's value on a log of any size, with CLT intervals.

    Args:
        logs: a DecisionLog Parquet file or a dataset folder of them.
        target: the target policy's distribution on each batch (see :data:`TargetFn`).
        estimators: names from :data:`SCAN_ESTIMATORS`.
        variants: the log's variants table (needed when ``candidates`` is null).
        alpha: 1 − confidence level, in (0, 0.5).
        batch_size: rows per streamed batch (memory is bounded by it).
        progress: called with the rows done after each batch.

    Raises:
        ValueError: an estimator that cannot be streamed, or bad ``alpha``/``batch_size``.
        LogValidationError: the log breaks the contract, has fewer than
            :data:`~copyloop.ope.evaluate.MIN_ROWS` rows or a constant reward.
    """
    names = list(estimators)
    if not names:
        raise ValueError("`estimators` is empty — name at least one, e.g. ipw")
    bad = [n for n in names if n not in SCAN_ESTIMATORS]
    if bad:
        raise ValueError(
            f"`estimators` {bad} cannot be streamed over a log larger than memory (the "
            "reward-model estimators cross-fit a model on the whole log); use "
            f"{', '.join(SCAN_ESTIMATORS)}, or evaluate a log that fits in memory"
        )
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"`alpha` must be in (0, 0.5), got {alpha}")
    ests = [get_estimator(n) for n in names]
    moments = [_Moments() for _ in ests]
    rows = 0
    r_sum = 0.0
    r_min, r_max = np.inf, -np.inf
    for log in DecisionLog.iter_batches(logs, batch_size=batch_size, variants=variants):
        data = feedback_from_log(log, variants)
        probs = check_target(target(log, data), data, name="target")
        for est, mom in zip(ests, moments, strict=True):
            w = importance_weights(data, probs) if est.uses_weights else None
            mom.add(np.asarray(est.parts(data, probs), np.float64), w)
        rows += data.n_rows
        r = data.reward
        r_sum += float(r.sum())
        r_min, r_max = min(r_min, float(r.min())), max(r_max, float(r.max()))
        if progress is not None:
            progress(rows)
    if rows < MIN_ROWS:
        raise LogValidationError(
            f"{logs} has {rows} logged decision(s); off-policy intervals need at least "
            f"{MIN_ROWS} — log more traffic"
        )
    if r_min == r_max:
        raise LogValidationError(
            f"{logs} has the same reward ({r_min:g}) on every one of its {rows:,} rows: every "
            "estimator would return it with a zero-width interval — log more traffic"
        )
    z = float(norm.ppf(1 - alpha / 2))
    results: list[tuple[str, Interval]] = []
    for name, est, mom in zip(names, ests, moments, strict=True):
        assert mom.mean is not None and mom.scatter is not None  # rows >= MIN_ROWS
        n = np.asarray(float(mom.n))
        point = float(est.combine(mom.mean * mom.n, n))
        cov = mom.scatter / (mom.n - 1)
        se = float(delta_se(est.combine, mom.mean, cov, n))
        ess = mom.w_sum**2 / mom.w_sq if mom.w_sq > 0 else 0.0
        if ess < ESS_WARN_SHARE * mom.n:
            warnings.warn(
                f"{est.label}: effective sample size {ess:.1f} of {mom.n} rows "
                f"({ess / mom.n:.2%}), max weight {mom.w_max:.1f} — the target policy is far "
                "from the logging policy; expect wide intervals",
                stacklevel=2,
            )
        results.append(
            (
                name,
                Interval(
                    est.label,
                    point,
                    point - z * se,
                    point + z * se,
                    alpha,
                    "clt",
                    mom.n,
                    ess,
                    mom.w_max,
                ),
            )
        )
    return OPEReport(
        rows=rows,
        alpha=alpha,
        logging_policy_value=r_sum / rows,
        estimates=results,
        reward_model=None,
        fit=None,
    )


__all__ = ["SCAN_ESTIMATORS", "TargetFn", "evaluate_scan"]
