"""The autopilot: new copy on trial is promoted only when the service's own log says so.

A campaign's candidates are served through its exploration slice (``explore_share``). At
fixed *looks* — when a candidate has been served ``min_impressions · 2^k`` times, up to
``max_impressions`` — the OPE gate compares, on the rows logged up to that impression (so a
look's verdict never changes with later traffic):

* the candidate policy "serve this candidate wherever it was offered" (one-hot), against
* the incumbent: what the service served on those rows (its logged mixture of the agent and
  the slice), whose value is the observed mean reward,

with the log's own propensities. The candidate is **promoted** when its lower confidence bound
beats the incumbent's estimate (Personalizer's Auto-Optimize rule), **rejected** when its upper
bound falls below it, or at the last look without a promotion, and otherwise waits for the
next look. Each look uses ``alpha / looks`` (Bonferroni over the looks), so the chance that a
candidate no better than the incumbent is ever promoted is at most ``alpha``. The verdict and
its numbers go to the service's admin API, which records them in the audit log.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from copyloop.serve.store import Store


@dataclass(frozen=True)
class GateSettings:
    """How candidates are judged.

    Args:
        alpha: the risk of promoting a candidate that is no better than the incumbent, over
            all of its looks.
        min_impressions: the first look, in impressions of the candidate.
        max_impressions: the last look; a candidate not promoted by then is rejected.
        estimator: the OPE estimator (``snipw``, ``ipw``, ``dr``, ...; see ``copyloop ope``).
    """

    alpha: float = 0.05
    min_impressions: int = 500
    max_impressions: int = 16_000
    estimator: str = "snipw"

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {self.alpha}")
        if self.min_impressions < 10:
            raise ValueError(f"`min_impressions` must be >= 10, got {self.min_impressions}")
        if self.max_impressions < self.min_impressions:
            raise ValueError(
                f"`max_impressions` ({self.max_impressions}) must be >= `min_impressions` "
                f"({self.min_impressions})"
            )
        from copyloop.ope import ESTIMATORS

        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"`estimator` must be one of {', '.join(sorted(ESTIMATORS))}, got "
                f"{self.estimator!r}"
            )

    @property
    def looks(self) -> list[int]:
        """Impression counts at which a candidate is judged."""
        n = 1 + math.floor(math.log2(self.max_impressions / self.min_impressions))
        return [self.min_impressions * 2**k for k in range(n)]


@dataclass(frozen=True)
class Verdict:
    """One candidate's state after a look: ``promote``, ``reject`` or ``wait``."""

    campaign_id: str
    variant_id: str
    action: Literal["promote", "reject", "wait"]
    impressions: int
    look: int | None
    rows: int
    candidate: dict[str, float] | None
    incumbent: dict[str, float] | None
    alpha: float | None
    reason: str

    def evidence(self) -> dict[str, Any]:
        """The numbers behind the verdict as strict JSON (a non-finite bound becomes None)."""
        return {
            k: _finite(v) for k, v in asdict(self).items() if k not in ("campaign_id", "action")
        }


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def judge_campaign(
    store: Store, campaign_id: str, settings: GateSettings, *, now: float | None = None
) -> list[Verdict]:
    """The verdict on each of ``campaign_id``'s candidates from the store's joined log."""
    from copyloop.contract import LogValidationError
    from copyloop.ope.evaluate import read_feedback

    cfg = next((c for c in store.campaigns() if c.campaign_id == campaign_id), None)
    if cfg is None:
        raise ValueError(f"campaign {campaign_id!r} is not in the store")
    if not cfg.candidates:
        return []
    out: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="copyloop-autopilot-") as d:
        path = Path(d) / "log.parquet"
        summary = store.export_log(path, campaign_id=campaign_id, now=now)
        if summary.rows == 0:
            return [_wait(cfg.campaign_id, v, 0, "no joined decisions yet") for v in cfg.candidates]
        try:
            log, data = read_feedback(path)
        except LogValidationError as e:
            return [_wait(cfg.campaign_id, v, 0, str(e)) for v in cfg.candidates]
        index = {v: i for i, v in enumerate(log.variants.variant_ids)}  # type: ignore[union-attr]
        for vid in cfg.candidates:
            out.append(judge_rows(data, cfg.campaign_id, vid, index.get(vid), settings))
    return out


def judge_rows(
    data: Any, campaign_id: str, vid: str, j: int | None, settings: GateSettings
) -> Verdict:
    """The verdict on candidate ``vid`` (variant index ``j`` of the log's variants table) from
    a campaign's logged rows (:class:`~copyloop.ope.data.BanditFeedback`, time order)."""
    from copyloop.ope.evaluate import gate_policies

    looks = settings.looks
    alpha = settings.alpha / len(looks)
    if j is None or data.variant is None:
        return _wait(campaign_id, vid, 0, "not offered in the log yet")
    offered = np.flatnonzero((data.variant == j).any(axis=1))
    served = data.variant[offered, data.action[offered]] == j
    shown = np.flatnonzero(served)
    n = int(shown.size)
    reached = [k for k, m in enumerate(looks) if n >= m]
    if not reached:
        return _wait(campaign_id, vid, n, f"{n:,} of {looks[0]:,} impressions to the first look")
    k = reached[-1]
    cut = offered[: shown[looks[k] - 1] + 1]  # the rows up to the look's impression
    sub = data.take(cut.astype(np.intp))
    slot = np.argmax(sub.variant == j, axis=1)
    target = np.zeros(sub.mask.shape)
    target[np.arange(sub.n_rows), slot] = 1.0
    if sub.logging_probs is None:
        raise ValueError("the log has no logging probabilities: the gate needs every candidate's")
    dec = gate_policies(
        sub, target, sub.logging_probs, estimator=settings.estimator, alpha=alpha, seed=k
    )
    ci, ii = dec.candidate, dec.incumbent
    cand = {"estimate": ci.estimate, "lower": ci.lower, "upper": ci.upper}
    inc = {"estimate": ii.estimate, "lower": ii.lower, "upper": ii.upper}
    last = k == len(looks) - 1
    action: Literal["promote", "reject", "wait"]
    why = dec.reason
    if dec.promote:
        action = "promote"
    elif ci.upper < ii.estimate:
        action = "reject"
        why += "; its upper bound is below the incumbent's estimate"
    elif last:
        action = "reject"
        why += f"; the last look ({looks[k]:,} impressions) passed without a promotion"
    else:
        action = "wait"
    return Verdict(campaign_id, vid, action, n, k, int(cut.size), cand, inc, alpha, why)


def _wait(campaign_id: str, vid: str, n: int, why: str) -> Verdict:
    return Verdict(campaign_id, vid, "wait", n, None, 0, None, None, None, why)


def run_once(
    store: Store,
    settle: Callable[[str, str, bool, dict[str, Any]], object],
    settings: GateSettings,
    campaigns: list[str] | None = None,
) -> list[Verdict]:
    """Judge every campaign with candidates (or those named) and settle the verdicts through
    ``settle(campaign, variant, promote, evidence)`` (the admin API: the serving processes
    change their variant sets, the store records the evidence)."""
    names = campaigns or [c.campaign_id for c in store.campaigns() if c.candidates]
    verdicts = []
    for cid in names:
        for v in judge_campaign(store, cid, settings):
            if v.action != "wait":
                settle(cid, v.variant_id, v.action == "promote", v.evidence())
            verdicts.append(v)
    return verdicts
