"""Summaries of DecisionLog files, computed by streaming (bounded memory for any size)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from copyloop.contract import SCHEMA_VERSION, DecisionLog, guard_read


def summarize_log(path: str | os.PathLike[str], *, batch_size: int = 1_000_000) -> dict[str, Any]:
    """Validate a DecisionLog batch by batch and summarise it.

    Returns rows, schema version, context width (and feature names when stored), campaigns,
    distinct actions, time range, observed rewards, CTR, propensity range, the effective sample
    size of inverse-propensity weights (``(Σw)² / Σw²``, ``w = 1/propensity``), policies.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"log file {path} does not exist — check the path")
    meta = guard_read(Path(path), "log", lambda: pq.read_schema(path)).metadata or {}
    rows = 0
    observed = 0
    reward_sum = 0.0
    p_min, p_max = np.inf, -np.inf
    w_sum = w_sq = 0.0
    campaigns: set[str] = set()
    actions: set[str] = set()
    policies: set[str] = set()
    explicit_candidates = 0
    with_probs = 0
    with_position = 0
    ts_min = ts_max = None
    context_dim = None
    for log in DecisionLog.iter_batches(path, batch_size=batch_size):
        t = log.table
        rows += log.n_rows
        context_dim = log.context_dim
        r = log.reward
        ok = ~np.isnan(r)
        observed += int(ok.sum())
        reward_sum += float(r[ok].sum())
        p = log.propensity
        p_min, p_max = min(p_min, float(p.min())), max(p_max, float(p.max()))
        w = 1.0 / p
        w_sum += float(w.sum())
        w_sq += float((w * w).sum())
        campaigns.update(pc.unique(t.column("campaign_id")).to_pylist())
        if len(actions) < 1_000_000:
            actions.update(pc.unique(t.column("action")).to_pylist())
        policies.update(pc.unique(t.column("policy_id")).to_pylist())
        explicit_candidates += log.n_rows - t.column("candidates").null_count
        with_probs += log.n_rows - t.column("action_probs").null_count
        with_position += log.n_rows - t.column("position").null_count
        mm = pc.min_max(t.column("ts")).as_py()
        ts_min = mm["min"] if ts_min is None else min(ts_min, mm["min"])
        ts_max = mm["max"] if ts_max is None else max(ts_max, mm["max"])
    out: dict[str, Any] = {
        "rows": rows,
        "schema_version": (meta.get(b"copyloop.schema") or SCHEMA_VERSION.encode()).decode(),
        "context_dim": context_dim,
    }
    if b"copyloop.context_names" in meta:
        out["context_names"] = json.loads(meta[b"copyloop.context_names"])
    out.update(
        {
            "campaigns": len(campaigns),
            "distinct_actions": len(actions),
            "policies": sorted(policies),
            "ts_min": ts_min,
            "ts_max": ts_max,
            "rewards_observed": observed,
            "reward_mean": reward_sum / observed if observed else None,
            "propensity_min": p_min if rows else None,
            "propensity_max": p_max if rows else None,
            "ips_ess": (w_sum * w_sum / w_sq) if rows else None,
            "rows_with_candidates": explicit_candidates,
            "rows_with_action_probs": with_probs,
            "rows_with_position": with_position,
        }
    )
    return out


def segment_table(path: str | os.PathLike[str], market: Any) -> list[dict[str, Any]]:
    """Observed impressions, clicks and CTR per user segment of a simulated log (the segment is
    the one-hot at the start of the user features)."""
    names = market.population.segment_names
    s = len(names)
    imps = np.zeros(s, np.int64)
    clicks = np.zeros(s)
    for log in DecisionLog.iter_batches(path):
        seg = log.context[:, :s].argmax(axis=1)
        r = np.nan_to_num(log.reward)
        imps += np.bincount(seg, minlength=s)
        clicks += np.bincount(seg, weights=r, minlength=s)
    return [
        {
            "segment": n,
            "impressions": int(imps[i]),
            "clicks": int(clicks[i]),
            "CTR": float(clicks[i] / max(imps[i], 1)),
        }
        for i, n in enumerate(names)
    ]
