"""The service's dashboard: one server-rendered page per campaign (``GET /dashboard``).

Decisions per second, served CTR by variant over time (an inline SVG chart), the model's
snapshot versions and the campaign's variant-set versions, the gate's verdicts with their
intervals, and the audit trail — read from the store at request time, rendered with Jinja2
(autoescaped), no JavaScript and nothing fetched from elsewhere. Every number the page shows
carries a ``data-k`` attribute, so tests (and scrapers) read it without parsing prose.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from copyloop.serve.service import Service

WIDTH, HEIGHT = 720, 220
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


@dataclass(frozen=True)
class _Line:
    variant: str
    color: str
    xy: list[tuple[str, str]]

    @property
    def points(self) -> str:
        return " ".join(f"{x},{y}" for x, y in self.xy)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _iv(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    lo, hi = d.get("lower"), d.get("upper")
    return f"{_fmt(d.get('estimate'))} [{_fmt(lo)}, {_fmt(hi)}]"


def _setting(d: dict[str, Any] | None) -> str:
    """``kind(key=value, …)`` of an agent setting (the seed left out: it is not a choice)."""
    if not d:
        return "-"
    params = {k: v for k, v in (d.get("agent_params") or {}).items() if k != "seed"}
    return f"{d.get('agent')}({', '.join(f'{k}={v}' for k, v in params.items())})"


def _gain(ev: dict[str, Any]) -> str:
    """A policy verdict's gain over the online policy and its one-sided bounds."""
    if ev.get("difference") is None:
        return "-"
    return f"{ev['difference']:+.4f} [{_fmt(ev.get('lower'))}, {_fmt(ev.get('upper'))}]"


def _concerns(entry: dict[str, Any], campaign_id: str, model_id: str) -> bool:
    """Whether an audit entry is about this campaign (or its model); meta writes are not."""
    d = entry["detail"]
    if entry["action"] == "meta.set":
        return False
    c = d.get("campaign")
    if isinstance(c, dict):
        c = c.get("campaign_id")
    return c == campaign_id or d.get("model_id") == model_id


def render(
    svc: Service,
    campaign_id: str,
    *,
    key_query: str = "",
    bucket_s: float = 60.0,
    horizon_s: float = 7 * 86400.0,
    window_s: float = 60.0,
) -> str:
    """The dashboard page of ``campaign_id`` (raises the service's 404 for an unknown one)."""
    from importlib.resources import files

    from jinja2 import Environment

    rt = svc.runtime(campaign_id)
    store = svc.store
    now = svc.clock()
    stats = store.stats(campaign_id)
    rows = store.timeline(campaign_id, now - horizon_s, bucket_s)
    recent = store.timeline(campaign_id, now - window_s, window_s)
    rate = sum(r.decisions for r in recent if r.bucket + window_s > now - window_s) / window_s

    per: dict[str, dict[str, int | float]] = {}
    for r in rows:
        p = per.setdefault(r.variant_id, {"decisions": 0, "joined": 0, "reward": 0.0})
        p["decisions"] += r.decisions
        p["joined"] += r.joined
        p["reward"] += r.reward_sum
    states = {v: "active" for v in rt.active}
    states.update({v: "candidate" for v in rt.cfg.candidates})
    if rt.cfg.control:
        states[rt.cfg.control] = "control"
    ids = list(dict.fromkeys([*rt.active, *rt.cfg.candidates, *per]))
    variants = [
        {
            "id": v,
            "state": states.get(v, "retired"),
            "decisions": int(per.get(v, {}).get("decisions", 0)),
            "joined": int(per.get(v, {}).get("joined", 0)),
            "ctr": (per[v]["reward"] / per[v]["joined"] if v in per and per[v]["joined"] else None),
        }
        for v in ids
    ]

    buckets = sorted({r.bucket for r in rows})
    ctrs = {(r.bucket, r.variant_id): r.reward_sum / r.joined for r in rows if r.joined}
    ymax = max(ctrs.values(), default=0.0) or 1.0
    span = max(len(buckets) - 1, 1)
    lines = []
    for n, v in enumerate(v for v in ids if any((b, v) in ctrs for b in buckets)):
        xy = [
            (
                f"{i / span * (WIDTH - 20) + 10:.1f}",
                f"{HEIGHT - 16 - ctrs[b, v] / ymax * (HEIGHT - 36):.1f}",
            )
            for i, b in enumerate(buckets)
            if (b, v) in ctrs
        ]
        lines.append(_Line(v, PALETTE[n % len(PALETTE)], xy))

    sets = store.variant_sets(campaign_id)
    audit = store.audit_log()
    mine = [a for a in audit if _concerns(a, campaign_id, rt.model.model_id)]
    gates = [
        {
            "when": _when(a["ts"]),
            "variant": a["detail"].get("variant"),
            "verdict": a["action"].removeprefix("candidates."),
            "impressions": a["detail"].get("evidence", {}).get("impressions", "-"),
            "interval": _iv(a["detail"].get("evidence", {}).get("candidate")),
            "incumbent": _iv(a["detail"].get("evidence", {}).get("incumbent")),
        }
        for a in audit
        if a["action"] in ("candidates.promote", "candidates.reject")
        and a["detail"].get("campaign") == campaign_id
    ]
    policies = [
        {
            "when": _when(a["ts"]),
            "action": a["action"],
            "change": f"{_setting(a['detail'].get('from'))} → {_setting(a['detail'].get('to'))}",
            "gain": _gain(a["detail"].get("evidence") or {}),
            "rows": (a["detail"].get("evidence") or {}).get("rows", "-"),
        }
        for a in audit
        if a["action"] == "policy.promote" and a["detail"].get("campaign") == campaign_id
    ]
    snaps = store.snapshots(rt.model.model_id)[-10:][::-1]
    env = Environment(autoescape=True)
    template = files("copyloop.serve").joinpath("dashboard.html").read_text()
    return env.from_string(template).render(
        campaign=campaign_id,
        campaigns=list(svc.runtimes),
        keyq=key_query,
        rate=rate,
        window=int(window_s),
        horizon_days=round(horizon_s / 86400, 1),
        stats=stats,
        fmt=_fmt,
        model_version=rt.policy.model_version,
        snapshot_version=rt.snapshot_version,
        variant_set=sets[-1].version if sets else 0,
        bucket=int(bucket_s),
        width=WIDTH,
        height=HEIGHT,
        lines=lines,
        ymax=ymax if ctrs else None,
        first_bucket=_when(buckets[0]) if buckets else "",
        last_bucket=_when(buckets[-1]) if buckets else "",
        variants=variants,
        gates=gates[::-1],
        agent=_setting({"agent": rt.cfg.agent, "agent_params": rt.cfg.agent_params}),
        policies=policies[::-1],
        sets=[
            {
                "version": s.version,
                "when": _when(s.ts),
                "actor": s.actor,
                "action": s.action,
                "active": ", ".join(s.active),
                "candidates": ", ".join(s.config.candidates) or "-",
                "snapshot": s.snapshot_version if s.snapshot_version is not None else "-",
            }
            for s in sets[::-1]
        ],
        snaps=[
            {
                "version": s.version,
                "when": _when(s.created),
                "model_version": s.model_version,
                "rows": s.rows_learned,
            }
            for s in snaps
        ],
        audit=[
            {
                "when": _when(a["ts"]),
                "actor": a["actor"],
                "action": a["action"],
                "detail": json.dumps(a["detail"], sort_keys=True)[:240],
            }
            for a in mine[-50:][::-1]
        ],
    )
