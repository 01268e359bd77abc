"""New learning settings, promoted only when the service's own log says they beat the online
policy (the "new policies" half of the autopilot; the "new copy" half is
:mod:`copyloop.serve.autopilot`).

A *candidate* is an agent kind and its parameters (``logistic_ts:alpha=0.5``). It is judged on
the model's joined log, in time order, by **progressive validation** — the way it would have
served had it been online:

1. it learns the first ``warm`` share of the rows (the log-row path the learner uses);
2. the rest is cut into ``chunks`` blocks; on each block the candidate, frozen, gives its
   distribution over every row's candidates, and then learns that block before the next one.

Its value on the judged rows is estimated off-policy with the logged (mixture) propensities,
and compared with the online policy's value on the *same rows*, which is their mean reward
(the online policy is the one that chose them). The gate's statistic is the paired difference
``(π_c(a) / μ(a) − 1) · r`` per row; a candidate is **promoted** when its one-sided lower bound
is above 0 (Personalizer's Auto-Optimize rule: a new setting's lower bound must beat the online
policy), else **held**. With several candidates each gets ``alpha / len(candidates)``
(Bonferroni), so the chance that any candidate no better than the online policy is promoted is
at most ``alpha``. The comparison leans towards the online policy: it kept learning inside every
block while the candidate is frozen there.

Signal: the log's rewards (clicks). What promotes: the interval above. A simulation's truth
never enters.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PolicyCandidate:
    """An agent kind (a key of :data:`copyloop.agents.POLICIES`) and its parameters."""

    agent: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> PolicyCandidate:
        """``kind`` or ``kind:key=value,key=value`` (values typed by the constructor's
        defaults), e.g. ``logistic_ts:alpha=0.5``.

        Raises:
            ValueError: an unknown kind, a parameter it does not have, a value of the wrong
                kind, or an agent that cannot learn from log rows.
        """
        from copyloop.agents.offline import parse_params

        name, _, rest = spec.strip().partition(":")
        if not name:
            raise ValueError(f"policy {spec!r}: give an agent kind, e.g. logistic_ts:alpha=0.5")
        items = [p for p in _split_params(rest) if p]
        return cls.checked(name, parse_params(name, items))

    @classmethod
    def checked(cls, agent: str, params: Mapping[str, Any]) -> PolicyCandidate:
        """A candidate whose agent exists, takes these parameters and learns from log rows.

        Raises:
            ValueError: naming what is wrong (the kinds there are, the parameter, how the
                agent learns instead).
        """
        from copyloop.agents.offline import make_policy

        p = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        if "exploration_floor" in p:
            raise ValueError(
                "`exploration_floor` is the model's serving setting, not a candidate's: set it "
                "on the campaign"
            )
        make_policy(agent, p)  # an unknown kind, bad values, an agent that cannot learn rows
        return cls(agent, p)

    @property
    def label(self) -> str:
        if not self.params:
            return self.agent
        return self.agent + ":" + ",".join(f"{k}={_show(v)}" for k, v in self.params.items())


def _split_params(rest: str) -> list[str]:
    """``a=1,b=0,5,c=x`` → ``["a=1", "b=0,5", "c=x"]``: a comma starts a new parameter only
    before ``key=``, so list values keep their commas."""
    out: list[str] = []
    for piece in rest.split(","):
        if "=" in piece or not out:
            out.append(piece.strip())
        else:
            out[-1] += "," + piece.strip()
    return out


def _show(v: Any) -> str:
    if isinstance(v, tuple | list):
        return ",".join(str(x) for x in v)
    return str(v)


@dataclass(frozen=True)
class PolicySettings:
    """How candidate settings are judged.

    Args:
        alpha: the risk of promoting a candidate no better than the online policy, over all
            candidates of one round.
        warm: the share of the rows (oldest first) a candidate learns before it is judged.
        chunks: blocks the judged rows are cut into (the candidate learns each after it).
        min_rows: fewer joined rows than this: hold without judging.
    """

    alpha: float = 0.05
    warm: float = 0.5
    chunks: int = 4
    min_rows: int = 2000

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"`alpha` must be in (0, 1), got {self.alpha}")
        if not 0 < self.warm < 1:
            raise ValueError(f"`warm` must be in (0, 1), got {self.warm}")
        if self.chunks < 1:
            raise ValueError(f"`chunks` must be >= 1, got {self.chunks}")
        if self.min_rows < 10:
            raise ValueError(f"`min_rows` must be >= 10, got {self.min_rows}")


@dataclass(frozen=True)
class PolicyVerdict:
    """One candidate's verdict: ``promote`` or ``hold``, with the numbers behind it."""

    model_id: str
    candidate: str
    agent: str
    params: dict[str, Any]
    action: Literal["promote", "hold"]
    rows: int
    candidate_estimate: float | None
    online_estimate: float | None
    difference: float | None
    lower: float | None
    upper: float | None
    alpha: float | None
    ess: float | None
    reason: str

    def evidence(self) -> dict[str, Any]:
        """The verdict as strict JSON (non-finite numbers become None; tuples lists)."""
        return {k: _json(v) for k, v in asdict(self).items()}


def _json(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_json(x) for x in v]
    return v


def progressive_probs(
    candidate: PolicyCandidate,
    log: Any,
    store: Any,
    settings: PolicySettings,
    *,
    exploration_floor: float | None = None,
) -> tuple[Any, npt.NDArray[np.float64]]:
    """``(judged rows, the candidate's distribution over each row's candidates)`` by
    progressive validation (see the module's text). ``log``: a
    :class:`~copyloop.contract.DecisionLog` with every reward observed, in any order (sorted
    by time here); ``store``: the variants' features (the serving model's store)."""
    import pyarrow as pa

    from copyloop.agents.offline import (
        agent_class,
        check_learnable,
        make_policy,
        policy_probs,
        split_order,
        teach,
    )
    from copyloop.contract import DecisionLog

    params = dict(candidate.params)
    if exploration_floor is not None:
        params["exploration_floor"] = exploration_floor
    if "seed" in inspect.signature(agent_class(candidate.agent).__init__).parameters:
        params.setdefault("seed", 0)  # the same log gives the same verdict
    order, _ = split_order(log)
    n_warm = int(len(order) * settings.warm)
    table = log.table

    def part(rows: npt.NDArray[np.int64]) -> DecisionLog:
        return DecisionLog(table.take(pa.array(rows)), variants=log.variants)

    policy = make_policy(candidate.agent, params)
    check_learnable(policy, log, store)
    policy.attach(store)
    teach(policy, part(order[:n_warm]), store)
    blocks = [b for b in np.array_split(order[n_warm:], settings.chunks) if b.size]
    probs: list[npt.NDArray[np.float64]] = []
    for b in blocks:
        block = part(b)
        probs.append(policy_probs(policy, block, store))
        teach(policy, block, store)
    width = max(p.shape[1] for p in probs)
    out = np.zeros((sum(p.shape[0] for p in probs), width))
    at = 0
    for p in probs:
        out[at : at + p.shape[0], : p.shape[1]] = p
        at += p.shape[0]
    return part(np.concatenate(blocks)), out


def judge_policies(
    log: Any,
    store: Any,
    candidates: Sequence[PolicyCandidate],
    settings: PolicySettings,
    *,
    model_id: str = "",
    exploration_floor: float | None = None,
) -> list[PolicyVerdict]:
    """Each candidate's verdict against the online policy on ``log`` (the model's joined log:
    a :class:`~copyloop.contract.DecisionLog` with its variants table; rows whose reward is not
    observed are left out). ``store``: the variants' features, as the serving model has them."""
    import pyarrow as pa

    from copyloop.contract import DecisionLog
    from copyloop.ope.data import check_target, feedback_from_log
    from copyloop.serve.autopilot import paired_difference

    if not candidates:
        return []
    seen = ~np.isnan(log.reward)
    if not seen.all():
        log = DecisionLog(log.table.filter(pa.array(seen)), variants=log.variants)
    alpha = settings.alpha / len(candidates)
    out: list[PolicyVerdict] = []
    for c in candidates:
        if log.n_rows < settings.min_rows:
            out.append(
                hold_verdict(
                    model_id,
                    c,
                    log.n_rows,
                    f"{log.n_rows:,} of {settings.min_rows:,} joined rows needed to judge",
                )
            )
            continue
        judged, probs = progressive_probs(
            c, log, store, settings, exploration_floor=exploration_floor
        )
        data = feedback_from_log(judged, log.variants)
        target = check_target(probs, data, name=c.label)
        idx = np.arange(data.n_rows)
        online = np.zeros_like(target)
        online[idx, data.action] = data.pscore  # the online policy's weight is 1 on every row
        diff = paired_difference(data, target, online, alpha)
        w = target[idx, data.action] / data.pscore
        ess = float(w.sum() ** 2 / max(float((w**2).sum()), 1e-300))
        level = f"{1 - alpha:.2%} one-sided"
        gain = f"{diff['difference']:+.5f} [{diff['lower']:+.5f}, {diff['upper']:+.5f}]"
        if diff["lower"] > 0:
            action: Literal["promote", "hold"] = "promote"
            why = f"promote: {c.label} beats the online policy by {gain} ({level})"
        else:
            action = "hold"
            why = f"hold: {c.label}'s gain over the online policy {gain} ({level}) includes 0"
            if diff["upper"] < 0:
                why = f"hold: {c.label} is worse than the online policy: {gain} ({level})"
        out.append(
            PolicyVerdict(
                model_id,
                c.label,
                c.agent,
                dict(c.params),
                action,
                int(data.n_rows),
                diff["candidate"],
                diff["incumbent"],
                diff["difference"],
                diff["lower"],
                diff["upper"],
                alpha,
                ess,
                why,
            )
        )
    return out


def hold_verdict(model_id: str, c: PolicyCandidate, rows: int, why: str) -> PolicyVerdict:
    """A ``hold`` without numbers (nothing to judge yet), saying why."""
    return PolicyVerdict(
        model_id,
        c.label,
        c.agent,
        dict(c.params),
        "hold",
        rows,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        f"hold: {why}",
    )


def adopt_best(
    client: Any,
    campaigns: Sequence[str],
    candidates: Sequence[PolicyCandidate],
    settings: PolicySettings,
) -> list[PolicyVerdict]:
    """One round of the autopilot's "new policies": for each campaign (one per model), judge
    the candidates on the service (``client``: a :class:`~copyloop.serve.client.Client`) and
    adopt the promoted one with the highest lower bound, its verdict as the audit log's
    evidence. Returns every verdict; an adopted one is the action ``promote``."""
    out: list[PolicyVerdict] = []
    for cid in campaigns:
        verdicts = client.judge_policies(
            cid, [{"agent": c.agent, "params": dict(c.params)} for c in candidates],
            **{k: getattr(settings, k) for k in ("alpha", "warm", "chunks", "min_rows")},
        )  # fmt: skip
        out += verdicts
        winners = [v for v in verdicts if v.action == "promote"]
        if winners:
            best = max(winners, key=lambda v: v.lower if v.lower is not None else -math.inf)
            client.adopt_policy(cid, {"agent": best.agent, "params": best.params}, best.evidence())
    return out
