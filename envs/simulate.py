"""The simulation loop: a policy on the batched market, with what happened as a DecisionLog.

:func:`run_loop` is the one env-stepping loop (act → step → account → log → learn);
:func:`simulate` (totals) and the experiment runner (metrics at evaluation points) both run it.
:func:`events_to_log` is the one builder of DecisionLog rows from an env step.

The loop needs only a policy's two verbs, typed here as :class:`LoopPolicy`, so ``copyloop.envs``
does not import ``copyloop.agents`` (every :class:`copyloop.agents.base.Policy` fits).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from copyloop.contract import DecisionLog, DecisionLogWriter
from copyloop.envs.market import Market
from copyloop.envs.vector import CopyMarketVectorEnv

EPOCH = np.datetime64("2026-01-01T00:00:00", "us")
IMPRESSION_INTERVAL_US = 100_000
"""Simulated time between impressions (0.1 s): ``ts = EPOCH + impression · interval``."""


class Choice(Protocol):
    """A batch of choices with the distributions they were drawn from (what
    :class:`copyloop.agents.base.Decision` holds)."""

    @property
    def actions(self) -> npt.NDArray[np.int64]:
        """Chosen slot per row, (B,)."""
        ...

    @property
    def probs(self) -> npt.NDArray[np.float64]:
        """The distribution each choice was drawn from, (B, K)."""
        ...

    @property
    def propensity(self) -> npt.NDArray[np.float64]:
        """Probability of each chosen slot, (B,)."""
        ...


class LoopPolicy(Protocol):
    """What the loop needs of a policy: choose and learn (every
    :class:`copyloop.agents.base.Policy` has it)."""

    @property
    def policy_id(self) -> str: ...

    def act(self, obs: Mapping[str, npt.NDArray[Any]]) -> Choice: ...

    def update(
        self,
        obs: Mapping[str, npt.NDArray[Any]],
        actions: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float64],
    ) -> None: ...


def events_to_log(
    market: Market,
    obs: dict[str, npt.NDArray[Any]],
    decision: Choice,
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


@dataclass(frozen=True)
class StepBatch:
    """The impressions of one env step that count toward the run (the first ``n`` sessions).

    Attributes:
        start: impressions done before this step.
        clicks: observed reward of each impression, (n,).
        expected: true CTR of the chosen copy, (n,).
        oracle: true CTR of the best candidate (what the oracle that knows the world gets), (n,).
    """

    start: int
    clicks: npt.NDArray[np.float64]
    expected: npt.NDArray[np.float64]
    oracle: npt.NDArray[np.float64]

    @property
    def end(self) -> int:
        """Impressions done after this step."""
        return self.start + int(self.clicks.size)


def run_loop(
    market: Market,
    policy: LoopPolicy,
    rounds: int,
    *,
    seed: int = 0,
    batch_size: int = 1024,
    learn: bool = True,
    out: str | os.PathLike[str] | None = None,
    variants_out: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    on_batch: Callable[[StepBatch], None] | None = None,
) -> DecisionLogWriter | None:
    """Step ``policy`` on the batched market for ``rounds`` impressions — the one simulation loop.

    Each step: the policy acts on ``min(batch_size, rounds)`` sessions, the env steps, the
    counted rows (all but the surplus of the last step) are reported to ``on_batch`` and written
    to the log, and the policy learns from them (``learn``).

    Args:
        market: the market to simulate.
        policy: the (logging) policy; its ``probs`` become the logged propensities.
        rounds: impressions to simulate.
        seed: seed of the env.
        out: DecisionLog Parquet to write, atomically together with the catalog's variants
            table; None = write nothing.
        variants_out: where the variants table goes (default: the log's sidecar,
            :func:`copyloop.contract.variants_sidecar`); only with ``out``.
        batch_size: sessions stepped together (and rows per policy update).
        learn: call ``policy.update`` after every step.
        run_id: prefix of event ids (default ``sim<seed>``).
        metadata: extra key/value metadata of the log file.
        on_batch: called with each step's counted impressions, after the policy learned.

    Returns:
        The (closed) log writer, which names the files written; None without ``out``.
    """
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    if out is None and variants_out is not None:
        raise ValueError("`variants_out` is the variants table of the log at `out` — pass `out`")
    run = run_id or f"sim{seed}"
    writer = None
    if out is not None:
        writer = DecisionLogWriter(
            out,
            market.user_dim,
            metadata={
                "context_names": json.dumps(market.population.feature_names),
                # The ground truth behind the log: lets `copyloop clicksim report` rebuild the
                # world and measure a simulator fit on this log against it.
                "market_config": json.dumps(market.config.to_dict()),
                "policy": repr(policy),
                "seed": str(seed),
                **(metadata or {}),
            },
            variants=market.catalog.variants,
            variants_path=variants_out,
        )
    env = CopyMarketVectorEnv(min(batch_size, rounds), market=market)
    obs, _ = env.reset(seed=seed)
    done = 0
    with writer if writer is not None else contextlib.nullcontext():
        while done < rounds:
            decision = policy.act(obs)
            nxt, rewards, _, _, info = env.step(decision.actions)
            take = min(env.num_envs, rounds - done)
            rows = slice(0, take)
            ctr = info["true_ctr"][rows]
            a = decision.actions[rows]
            batch = StepBatch(done, rewards[rows], ctr[np.arange(take), a], ctr.max(axis=1))
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
            if learn and getattr(policy, "learns_from_rows", True):  # PPO learns by train()
                policy.update({k: v[rows] for k, v in obs.items()}, a, rewards[rows])
            obs = nxt
            done += take
            if on_batch is not None:
                on_batch(batch)
    return writer


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
    policy: LoopPolicy,
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
        out: DecisionLog Parquet to write (atomically, with its variants table); None = don't.
        variants_out: variants table to write (default: the log's sidecar,
            ``<out>.variants.parquet``); only with ``out``.
        batch_size: sessions stepped together.
        learn: call ``policy.update`` after every batch.
        run_id: prefix of event ids (default ``sim<seed>``).
        progress: called with the impressions done after each batch.
    """
    totals = SimulationSummary(0, 0, 0.0, 0.0, None, None)

    def add(b: StepBatch) -> None:
        totals.rounds = b.end
        totals.clicks += int(b.clicks.sum())
        totals.expected_clicks += float(b.expected.sum())
        totals.best_expected_clicks += float(b.oracle.sum())
        if progress is not None:
            progress(b.end)

    writer = run_loop(
        market,
        policy,
        rounds,
        seed=seed,
        batch_size=batch_size,
        learn=learn,
        out=out,
        variants_out=variants_out,
        run_id=run_id,
        on_batch=add,
    )
    if writer is not None:
        totals.out, totals.variants_out = writer.path, writer.variants_path
    return totals
