"""The promotion gate: promote a candidate policy only when the evidence says it is better.

Rule (Azure Personalizer's Auto-Optimize): promote when the chosen estimator's *lower*
confidence bound for the candidate beats the incumbent's *point* estimate, on the same log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy.typing as npt

from copyloop.ope.data import BanditFeedback
from copyloop.ope.estimators import Interval, get_estimator


@dataclass(frozen=True)
class GateDecision:
    """Promote or hold, with the numbers behind it."""

    promote: bool
    candidate: Interval
    incumbent: Interval
    reason: str


def gate(
    data: BanditFeedback,
    candidate: npt.NDArray,
    incumbent: npt.NDArray,
    *,
    estimator: str = "dr",
    q: npt.NDArray | None = None,
    alpha: float = 0.05,
    method: str | None = None,
    seed: int = 0,
) -> GateDecision:
    """Compare two target policies (per-row distributions, (n, K)) on one log.

    ``method``: the interval method of :meth:`~copyloop.ope.estimators.Estimator.interval`
    (None: the estimator's default, the studentised bootstrap for the weighting estimators).
    """
    est = get_estimator(estimator)
    cand = est.interval(data, candidate, q, alpha, method=method, seed=seed)
    inc = est.interval(data, incumbent, q, alpha, method=method, seed=seed)
    level = f"{1 - alpha:.0%}"
    if cand.lower > inc.estimate:
        reason = (
            f"promote: the candidate's {level} lower bound {cand.lower:.5f} ({estimator}, "
            f"{cand.method}) "
            f"beats the incumbent's estimate {inc.estimate:.5f}"
        )
        return GateDecision(True, cand, inc, reason)
    reason = (
        f"hold: the candidate's {level} lower bound {cand.lower:.5f} ({estimator}, {cand.method}) "
        "does not "
        f"beat the incumbent's estimate {inc.estimate:.5f}"
        + (
            " (the candidate's estimate is higher, but not by enough evidence)"
            if cand.estimate > inc.estimate
            else ""
        )
    )
    return GateDecision(False, cand, inc, reason)
