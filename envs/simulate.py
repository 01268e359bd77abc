"""Run a policy on the batched market and write what happened as a DecisionLog."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from copyloop.agents.base import Decision, Policy
from copyloop.contract import DecisionLog, DecisionLogWriter
from copyloop.envs.market import Market
from copyloop.envs.vector import CopyMarketVectorEnv

EPOCH = np.datetime64("2026-01-01T00:00:00", "us")
IMPRESSION_INTERVAL_US = 100_000
"""Simulated time between impressions (0.1 s): ``ts = EPOCH + impression · interval``."""


def events_to_log(
    market: Market,
    obs: dict[str, npt.NDArray[Any]],
    decision: Decision,
    info: dict[str, Any],
    rewards: npt.NDArray[np.float64],
    *,
    run_id: str,
    policy_id: str,
    model_version: str = "0",
    rows: slice | None = None,
) -> DecisionLog:
    """One vector-env step as a validated DecisionLog batch (``candidates`` null: the campaign's
    full variant set, in variants-table order; ``action_probs`` the policy's distribution)."""
    sl = rows or slice(None)
    cat = market.catalog
    camp = np.asarray(info["campaign"])[sl]
    slot = np.asarray(decision.actions)[sl]
    n = camp.size
    impression = np.asarray(info["impression"])[sl]
    n_cand = cat.n_candidates[camp]
    probs = np.asarray(decision.probs)[sl]
    keep = np.arange(probs.shape[1])[None, :] < n_cand[:, None]
    offsets = np.concatenate([[0], np.cumsum(n_cand)]).astype(np.int32)
    action_probs = pa.ListArray.from_arrays(pa.array(offsets), pa.array(probs[keep]))
    variant = cat.slots[camp, slot]
    vid = cat.variants.table.column("variant_id").combine_chunks()
    camp_ids = pa.array(cat.campaign_ids)
    users = pa.array(np.asarray(info["user"])[sl]).cast(pa.string())
    ev = pc.binary_join_element_wise(
        pa.array([run_id] * n), pa.array(impression).cast(pa.string()), "-"
    )
    return DecisionLog.from_arrays(
        event_id=ev,
        ts=EPOCH + impression.astype("timedelta64[us]") * IMPRESSION_INTERVAL_US,
        campaign_id=camp_ids.take(pa.array(camp)),
        user_id=pc.binary_join_element_wise(pa.array(["u"] * n), users, ""),
        context=obs["user"][sl],
        action=vid.take(pa.array(np.where(variant >= 0, variant, 0))),
        action_index=slot,
        propensity=decision.propensity[sl],
        action_probs=action_probs,
        reward=np.asarray(rewards, np.float64)[sl],
        policy_id=policy_id,
        model_version=model_version,
    )


@dataclass
class SimulationSummary:
    """Totals of a simulation run."""

    rounds: int
    clicks: int
    expected_clicks: float
    best_expected_clicks: float
    out: Path | None
    variants_out: Path | None

    @property
    def ctr(self) -> float:
        return self.clicks / max(self.rounds, 1)

    @property
    def regret(self) -> float:
        """Expected clicks lost against the oracle that knows every true CTR."""
        return self.best_expected_clicks - self.expected_clicks


def simulate(
    market: Market,
    policy: Policy,
    rounds: int,
    *,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    variants_out: str | os.PathLike[str] | None = None,
    batch_size: int = 1024,
    learn: bool = True,
    run_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimulationSummary:
    """Let ``policy`` choose copy for ``rounds`` impressions; optionally write the DecisionLog.

    Args:
        market: the market to simulate.
        policy: the (logging) policy; its ``action_probs`` become the logged propensities.
        rounds: impressions to simulate.
        seed: seed of the env.
        out: DecisionLog Parquet to write (atomically); None = don't write.
        variants_out: variants table to write (default ``<out>.variants.parquet``).
        batch_size: sessions stepped together.
        learn: call ``policy.update`` after every batch.
        run_id: prefix of event ids (default ``sim<seed>``).
        progress: called with the impressions done after each batch.
    """
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    env = CopyMarketVectorEnv(min(batch_size, rounds), market=market)
    obs, _ = env.reset(seed=seed)
    run = run_id or f"sim{seed}"
    clicks = 0
    exp_clicks = 0.0
    best = 0.0
    done = 0
    writer: DecisionLogWriter | None = None
    out_p = Path(out) if out is not None else None
    var_p = (
        Path(variants_out)
        if variants_out is not None
        else out_p.with_suffix(".variants.parquet")
        if out_p is not None
        else None
    )
    if out_p is not None:
        writer = DecisionLogWriter(
            out_p,
            market.user_dim,
            metadata={
                "context_names": _json(market.population.feature_names),
                # The ground truth behind the log: lets `copyloop clicksim report` rebuild the
                # world and measure a simulator fit on this log against it.
                "market_config": _json(market.config.to_dict()),
                "policy": repr(policy),
                "seed": str(seed),
            },
        )
        writer.__enter__()
    try:
        while done < rounds:
            decision = policy.act(obs)
            nxt, rewards, _, _, info = env.step(decision.actions)
            take = min(env.num_envs, rounds - done)
            rows = slice(0, take)
            ctr = info["true_ctr"][rows]
            a = decision.actions[rows]
            clicks += int(rewards[rows].sum())
            exp_clicks += float(ctr[np.arange(take), a].sum())
            best += float(ctr.max(axis=1).sum())
            if writer is not None:
                writer.write(
                    events_to_log(
                        market,
                        obs,
                        decision,
                        info,
                        rewards,
                        run_id=run,
                        policy_id=policy.policy_id,
                        rows=rows,
                    )
                )
            if learn:
                policy.update({k: v[rows] for k, v in obs.items()}, a, rewards[rows])
            obs = nxt
            done += take
            if progress is not None:
                progress(done)
        if var_p is not None:
            market.catalog.variants.write(var_p)
    except BaseException as e:
        if writer is not None:
            writer.__exit__(type(e), e, e.__traceback__)
        raise
    if writer is not None:
        writer.__exit__(None, None, None)
    return SimulationSummary(
        rounds=done,
        clicks=clicks,
        expected_clicks=exp_clicks,
        best_expected_clicks=best,
        out=out_p,
        variants_out=var_p,
    )


def _json(x: Any) -> str:
    import json

    return json.dumps(x)
