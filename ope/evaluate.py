"""Evaluate a target policy on a log: the orchestration behind ``copyloop ope`` and
``copyloop ope gate``, as library functions the CLI and the service both call.

Example:
    >>> rep = evaluate_policy(data, target, ["ipw", "dr"])  # doctest: +SKIP
    >>> rep.to_dict()["estimates"][0]["lower"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.contract import DecisionLog, LogValidationError, read_variants_for
from copyloop.ope.data import BanditFeedback, check_target, feedback_from_log, load_target
from copyloop.ope.estimators import INTERVAL_METHODS, Interval, get_estimator
from copyloop.ope.gate import GateDecision, gate
from copyloop.ope.reward_models import CrossFit, RewardModel, bootstrap_interval, fit_reward_model

MIN_ROWS = 10
"""Fewest logged decisions an interval is computed from; below it no resampling interval means
anything (a 1-row log has no spread to resample)."""


def read_feedback(
    logs: str | os.PathLike[str], variants: str | os.PathLike[str] | None = None
) -> tuple[DecisionLog, BanditFeedback]:
    """Read a log (and its variants table, given or the sidecar) as estimator input.

    Raises:
        LogValidationError: the log breaks the contract, or is too small or has no clicks to
            evaluate anything on (the message says which).
    """
    var = read_variants_for(logs, variants)
    log = DecisionLog.read(logs, variants=var)
    data = feedback_from_log(log, var)
    check_evaluable(data, name=str(logs))
    return log, data


def check_evaluable(data: BanditFeedback, *, name: str = "the log") -> None:
    """Refuse logs on which every interval would be empty or infinite.

    Raises:
        LogValidationError: fewer than :data:`MIN_ROWS` rows, or a constant reward (no click
            at all, or every row clicked): then every estimate is that constant and no interval
            can say how uncertain it is.
    """
    if data.n_rows < MIN_ROWS:
        raise LogValidationError(
            f"{name} has {data.n_rows} logged decision(s); off-policy intervals need at least "
            f"{MIN_ROWS} (and estimates worth reading need thousands) — log more traffic"
        )
    r = data.reward
    if np.all(r == r[0]):
        what = "no click" if r[0] == 0 else f"the same reward ({r[0]:g}) on every row"
        raise LogValidationError(
            f"{name} has {what} in {data.n_rows:,} rows: every estimator would return "
            f"{r[0]:g} with a zero-width interval, which says nothing about the policy — log "
            "more traffic (at a CTR of 1 %, ~100k impressions give ~1,000 clicks)"
        )


def resolve_target(
    spec: str | os.PathLike[str],
    data: BanditFeedback,
    log: DecisionLog,
    market: Callable[[], Any],
) -> npt.NDArray[np.float64]:
    """A target policy's per-row distribution, (n, K): from a saved copyloop agent (``.npz``,
    evaluated on the log's contexts in ``market()``) or a probability file (``.npy``/Parquet)."""
    p = Path(spec)
    if p.suffix == ".npz":
        from copyloop.agents import Policy
        from copyloop.agents.warm import policy_probs_on_log

        policy = Policy.load(p)
        return check_target(policy_probs_on_log(policy, log, market()), data, name=p.name)
    return load_target(p, data)


@dataclass(frozen=True)
class OPEReport:
    """Estimates with intervals for one target policy on one log."""

    rows: int
    alpha: float
    logging_policy_value: float
    estimates: list[tuple[str, Interval]]
    reward_model: RewardModel | None
    fit: CrossFit | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a bound may be ±inf: :func:`copyloop.cli_common.print_json` writes null)."""
        fit = self.fit
        return {
            "rows": self.rows,
            "alpha": self.alpha,
            "logging_policy_value": self.logging_policy_value,
            "reward_model": None
            if fit is None or self.reward_model is None
            else {
                "kind": self.reward_model.kind,
                "folds": self.reward_model.folds,
                "oof_logloss": fit.oof_logloss,
                "base_rate_logloss": fit.base_logloss,
            },
            "estimates": [
                {
                    "estimator": n,
                    "estimate": iv.estimate,
                    "lower": iv.lower,
                    "upper": iv.upper,
                    "interval": iv.method,
                    "ess": iv.ess,
                    "max_weight": iv.max_weight,
                }
                for n, iv in self.estimates
            ],
        }


def evaluate_policy(
    data: BanditFeedback,
    target: npt.NDArray[np.float64],
    estimators: Sequence[str],
    *,
    alpha: float = 0.05,
    reward_model: str = "logistic",
    folds: int = 5,
    interval: str = "auto",
    n_boot: int = 50,
    resamples: int = 999,
    seed: int = 0,
    on_fit: Callable[[], Any] | None = None,
    dm_progress: Callable[[int], None] | None = None,
) -> OPEReport:
    """Estimate ``target``'s value on ``data`` with every estimator named, each with an interval.

    Args:
        data: the log as estimator input (:func:`read_feedback`).
        target: the target policy's per-row distribution, (n, K).
        estimators: names of :data:`copyloop.ope.ESTIMATORS`.
        alpha: 1 − confidence level, in (0, 0.5).
        reward_model: kind of the cross-fitted reward model (DM and the DR family).
        folds: cross-fitting folds.
        interval: ``auto`` (each estimator's default; DM a bootstrap refitting the reward model)
            or one of :data:`~copyloop.ope.estimators.INTERVAL_METHODS`.
        n_boot: resamples of DM's refitting bootstrap.
        resamples: resamples of ``bootstrap-t`` / ``bootstrap``.
        seed: seed of the bootstraps.
        on_fit: called before the reward model is fitted (a CLI shows a spinner).
        dm_progress: called with the resamples done in DM's bootstrap.
    """
    names = list(estimators)
    if not names:
        raise ValueError("`estimators` is empty — name at least one, e.g. dr")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"`alpha` must be in (0, 0.5), got {alpha}")
    if interval != "auto" and interval not in INTERVAL_METHODS:
        raise ValueError(
            f"`interval` must be auto or one of {', '.join(INTERVAL_METHODS)}, got {interval!r}"
        )
    ests = [get_estimator(n) for n in names]
    model = RewardModel(kind=reward_model, folds=folds)
    q = fit = None
    if any(e.needs_reward_model for e in ests):
        if on_fit is not None:
            on_fit()
        fit = fit_reward_model(data, model)
        q = fit.q
    results: list[tuple[str, Interval]] = []
    for name, est in zip(names, ests, strict=True):
        if name == "dm" and interval == "auto":
            iv = bootstrap_interval(
                est,
                data,
                target,
                alpha=alpha,
                n_boot=n_boot,
                model=model,
                q=q,
                refit=True,
                progress=dm_progress,
            )
        else:
            iv = est.interval(
                data,
                target,
                q,
                alpha,
                method=None if interval == "auto" else interval,
                n_boot=resamples,
                seed=seed,
            )
        results.append((name, iv))
    return OPEReport(
        rows=data.n_rows,
        alpha=alpha,
        logging_policy_value=float(data.reward.mean()),
        estimates=results,
        reward_model=model if fit is not None else None,
        fit=fit,
    )


def gate_policies(
    data: BanditFeedback,
    candidate: npt.NDArray[np.float64],
    incumbent: npt.NDArray[np.float64],
    *,
    estimator: str = "dr",
    alpha: float = 0.05,
    interval: str = "auto",
    seed: int = 0,
) -> GateDecision:
    """The promotion gate on one log, fitting the reward model when the estimator needs one."""
    if interval != "auto" and interval not in INTERVAL_METHODS:
        raise ValueError(
            f"`interval` must be auto or one of {', '.join(INTERVAL_METHODS)}, got {interval!r}"
        )
    est = get_estimator(estimator)
    q = fit_reward_model(data).q if est.needs_reward_model else None
    return gate(
        data,
        candidate,
        incumbent,
        estimator=estimator,
        q=q,
        alpha=alpha,
        method=None if interval == "auto" else interval,
        seed=seed,
    )


def gate_to_dict(d: GateDecision) -> dict[str, Any]:
    """A gate decision as plain data."""

    def iv(x: Interval) -> dict[str, float]:
        return {"estimate": x.estimate, "lower": x.lower, "upper": x.upper}

    return {
        "promote": d.promote,
        "reason": d.reason,
        "candidate": iv(d.candidate),
        "incumbent": iv(d.incumbent),
    }


__all__ = [
    "MIN_ROWS",
    "OPEReport",
    "check_evaluable",
    "evaluate_policy",
    "gate_policies",
    "gate_to_dict",
    "read_feedback",
    "resolve_target",
]
