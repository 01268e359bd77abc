"""The autopilot: new copy on trial is promoted only when the service's own log says so.

A campaign's candidates are served through its exploration slice (``explore_share``), and the
campaign's agent learns their features from those rows. At fixed *looks* — when a candidate
has been served ``min_impressions · 2^k`` times, up to ``max_impressions`` — the OPE gate
compares, on the rows logged up to that impression — each look is judged once, and its verdict
kept in the store, so neither later traffic nor a later model can re-try it:

* the candidate policy: the campaign's agent as it is now, choosing among the active variants
  *and* this candidate, against
* the incumbent: the same agent among the active variants only,

both evaluated off-policy with the log's mixture propensities, on the same rows: the gate's
statistic is the paired IPW difference of their values (its terms are zero wherever the two
policies agree, so its interval is far tighter than either policy's own). The candidate is
**promoted** when the gain's one-sided lower bound is above 0 (the spirit of Personalizer's
Auto-Optimize: a new setting must beat the online one by its lower bound), **rejected** when
the upper bound is below 0, or at the last look without a promotion, and otherwise waits for
the next look. Each look uses ``alpha / looks``
(Bonferroni over the looks), so the chance that a candidate which does not improve the policy
is ever promoted is at most ``alpha``. The judging runs in the service that holds the model
(``POST /v1/admin/campaigns/{id}/judge``); ``copyloop autopilot`` settles the verdicts through
the admin API, which records them with their numbers in the audit log.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from copyloop.serve.service import Service


@dataclass(frozen=True)
class GateSettings:
    """How candidates are judged.

    Args:
        alpha: the risk of promoting a candidate that is no better than the incumbent, over
            all of its looks.
        min_impressions: the first look, in impressions of the candidate.
        max_impressions: the last look; a candidate not promoted by then is rejected.
    """

    alpha: float = 0.05
    min_impressions: int = 500
    max_impressions: int = 16_000

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
    svc: Service, campaign_id: str, settings: GateSettings, *, now: float | None = None
) -> list[Verdict]:
    """The verdict on each of ``campaign_id``'s candidates, in the service that holds its model.

    The candidate policy is the campaign's agent as it is now (a copy of the learner's model,
    which has learned the candidates' features from the slice's rows) choosing among the active
    variants *and* the candidate; the incumbent is the same agent among the active variants
    only. Both are evaluated off-policy on the logged rows, with the log's mixture propensities.
    """
    from copyloop.contract import LogValidationError
    from copyloop.ope.evaluate import read_feedback

    rt = svc.runtime(campaign_id)
    cfg = rt.cfg
    if not cfg.candidates:
        return []
    with rt.model.lock:
        policy = rt.model.learner_policy.trained_copy()
    store = rt.model.variants
    out: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="copyloop-autopilot-") as d:
        path = Path(d) / "log.parquet"
        summary = svc.store.export_log(path, campaign_id=campaign_id, now=now)
        if summary.rows == 0:
            return [_wait(campaign_id, v, 0, "no joined decisions yet") for v in cfg.candidates]
        try:
            log, data = read_feedback(path)
        except LogValidationError as e:
            return [_wait(campaign_id, v, 0, str(e)) for v in cfg.candidates]
        ids = log.variants.variant_ids  # type: ignore[union-attr]
        index = {v: i for i, v in enumerate(ids)}
        trial = {index[v] for v in cfg.candidates if v in index}

        def targets(rows: Any, j: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
            # the gate's IPW terms are zero on rows with reward 0 whatever the policies do:
            # the agent decides only on the rewarded rows (a few % of them for clicks)
            cand = np.zeros(rows.mask.shape)
            inc = np.zeros(rows.mask.shape)
            for r in np.flatnonzero(rows.reward != 0).tolist():
                slots = np.flatnonzero(rows.mask[r])
                var = rows.variant[r, slots]
                keep = [s for s, v in zip(slots, var, strict=True) if v not in trial]
                ctx = rows.context[r].astype(np.float32)
                a = [ids[rows.variant[r, s]] for s in keep]
                eid = f"gate:{r}"
                inc[r, keep] = policy.decide(ctx, a, event_id=eid, store=store).probs
                slot_j = int(np.flatnonzero(rows.variant[r] == j)[0])
                with_j = policy.decide(ctx, [*a, ids[j]], event_id=eid, store=store).probs
                cand[r, keep] = with_j[:-1]
                cand[r, slot_j] = with_j[-1]
            return cand, inc

        for vid in cfg.candidates:
            j = index.get(vid)
            look = look_of(data, j, settings)
            key = f"gate:{campaign_id}:{vid}:{look}:{settings.alpha}:{settings.looks}"
            done = svc.store.get_meta(key) if look is not None else None
            if done is not None:  # each look is judged once (a later model must not re-try it)
                out.append(Verdict(**json.loads(done)))
                continue
            v = judge_rows(data, campaign_id, vid, j, settings, targets)
            if look is not None:
                svc.store.set_meta(key, json.dumps(asdict(v)).encode()).result()
            out.append(v)
    return out


def look_of(data: Any, j: int | None, settings: GateSettings) -> int | None:
    """The last look candidate ``j``'s impressions in ``data`` have reached (None: none)."""
    if j is None or data.variant is None:
        return None
    offered = np.flatnonzero((data.variant == j).any(axis=1))
    n = int((data.variant[offered, data.action[offered]] == j).sum())
    reached = [k for k, m in enumerate(settings.looks) if n >= m]
    return reached[-1] if reached else None


Targets = Callable[[Any, int], tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
"""``(rows, j) -> (candidate, incumbent)``: the two policies' distributions over the rows' slots
(``rows``: a :class:`~copyloop.ope.data.BanditFeedback`; ``j``: the candidate's variant index)."""


def one_hot_targets(rows: Any, j: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Candidate "serve this line wherever it was offered" against what was served (the log's
    own probabilities): the gate without a model, for logs with no agent behind them."""
    slot = np.argmax(rows.variant == j, axis=1)
    target = np.zeros(rows.mask.shape)
    target[np.arange(rows.n_rows), slot] = 1.0
    if rows.logging_probs is None:
        raise ValueError("the log has no logging probabilities: the gate needs every candidate's")
    return target, rows.logging_probs


def judge_rows(
    data: Any,
    campaign_id: str,
    vid: str,
    j: int | None,
    settings: GateSettings,
    targets: Targets = one_hot_targets,
) -> Verdict:
    """The verdict on candidate ``vid`` (variant index ``j`` of the log's variants table) from
    a campaign's logged rows (:class:`~copyloop.ope.data.BanditFeedback`, time order), comparing
    the two policies ``targets`` gives on the rows up to the look."""
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
    cand_probs, inc_probs = targets(sub, j)
    diff = paired_difference(sub, cand_probs, inc_probs, alpha)
    cand = {"estimate": diff["candidate"]}
    inc = {"estimate": diff["incumbent"]}
    cand.update(lower=diff["incumbent"] + diff["lower"], upper=diff["incumbent"] + diff["upper"])
    last = k == len(looks) - 1
    level = f"{1 - alpha:.2%} one-sided"
    gain = f"{diff['difference']:+.5f} [{diff['lower']:+.5f}, {diff['upper']:+.5f}]"
    action: Literal["promote", "reject", "wait"]
    if diff["lower"] > 0:
        action = "promote"
        why = f"promote: the candidate policy's gain {gain} ({level}) is above 0"
    elif diff["upper"] < 0:
        action = "reject"
        why = f"reject: the candidate policy's gain {gain} ({level}) is below 0"
    elif last:
        action = "reject"
        why = f"reject: gain {gain} ({level}) not shown at the last look ({looks[k]:,} impressions)"
    else:
        action = "wait"
        why = f"wait: gain {gain} ({level}) includes 0; next look at {looks[k + 1]:,}"
    return Verdict(campaign_id, vid, action, n, k, int(cut.size), cand, inc, alpha, why)


def paired_difference(
    rows: Any,
    candidate: npt.NDArray[np.float64],
    incumbent: npt.NDArray[np.float64],
    alpha: float,
) -> dict[str, float]:
    """IPW estimates of two policies on the same rows and of their difference, with the
    difference's one-sided ``1 − alpha`` bounds (CLT over the rows' paired terms
    ``(π_c(a) − π_i(a)) / μ(a) · r``, which are zero wherever the two policies agree — so the
    interval is far tighter than the two policies' separate ones)."""
    from scipy.stats import norm

    idx = np.arange(rows.n_rows)
    a = rows.action
    wc = candidate[idx, a] / rows.pscore
    wi = incumbent[idx, a] / rows.pscore
    d = (wc - wi) * rows.reward
    n = d.size
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    z = float(norm.ppf(1.0 - alpha))
    return {
        "candidate": float((wc * rows.reward).mean()),
        "incumbent": float((wi * rows.reward).mean()),
        "difference": mean,
        "lower": mean - z * se,
        "upper": mean + z * se,
    }


def _wait(campaign_id: str, vid: str, n: int, why: str) -> Verdict:
    return Verdict(campaign_id, vid, "wait", n, None, 0, None, None, None, why)


def run_once(
    judge: Callable[[str], list[Verdict]],
    settle: Callable[[str, str, bool, dict[str, Any]], object],
    campaigns: list[str],
) -> list[Verdict]:
    """Judge each campaign (``judge(campaign)``: the service's judge endpoint, or
    :func:`judge_campaign` in process) and settle the verdicts through ``settle(campaign,
    variant, promote, evidence)`` (the admin API: the serving processes change their variant
    sets and the store records the evidence)."""
    verdicts = []
    for cid in campaigns:
        for v in judge(cid):
            if v.action != "wait":
                settle(cid, v.variant_id, v.action == "promote", v.evidence())
            verdicts.append(v)
    return verdicts
