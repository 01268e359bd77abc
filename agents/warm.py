"""Warm-start any agent from a DecisionLog, so it starts from history instead of from zero."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from copyloop.agents.base import Policy
from copyloop.contract import DecisionLog, LogValidationError


def warm_start(
    policy: Policy,
    log: DecisionLog,
    market: Any,
    *,
    batch_size: int = 4096,
    importance_weights: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> Policy:
    """Replay a log's observed rewards into ``policy`` (in place; returned for chaining).

    The observation of each row is rebuilt from the log's ``context`` (the user features) and
    the market's candidate features for the row's campaign. Rows without an observed reward are
    skipped.

    Non-contextual estimators (UCB1, epsilon-greedy, Bernoulli TS) estimate each variant's CTR
    averaged over users; under a logging policy that chose variants differently for different
    users those averages are biased, so by default they learn with importance weights
    ``1/propensity``, self-normalised per variant so the evidence counts stay the true counts.
    Contextual models (linear/logistic/neural TS, LinUCB) model the click given user and copy,
    which the logging policy does not bias, so they replay unweighted.

    Args:
        policy: the agent to warm-start.
        log: decisions with their propensities (``candidates`` null: the campaign's full set
            in the market's catalog order).
        market: the :class:`~copyloop.envs.Market` the log's campaigns come from.
        batch_size: rows per update.
        importance_weights: force weighting on or off (default: by policy kind, see above).
        progress: called with the rows done.
    """
    from copyloop.agents.store import VariantStore

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    _campaign_rows(log, market)  # the log must belong to this market
    store = policy.store or VariantStore.from_catalog(market.catalog)
    w = log_weights(policy, log, importance_weights)
    # The same path as the service's delayed rewards: DecisionLog rows through update().
    policy.learn_log(log, store, sample_weight=w, batch_size=batch_size, progress=progress)
    return policy


def needs_weights(policy: Policy) -> bool:
    """Whether ``policy`` learns from a log with importance weights by default: the
    non-contextual estimators (UCB1, epsilon-greedy, Bernoulli TS; see :func:`warm_start`)."""
    from copyloop.agents.baselines import EpsilonGreedyPolicy, UCB1Policy
    from copyloop.agents.ts import BernoulliTSPolicy

    return isinstance(policy, UCB1Policy | EpsilonGreedyPolicy | BernoulliTSPolicy)


def log_weights(
    policy: Policy, log: DecisionLog, importance_weights: bool | None = None
) -> npt.NDArray[np.float64] | None:
    """The per-row weights ``policy`` learns ``log`` with, or None (unweighted).

    Weighted (by default for :func:`needs_weights` policies; ``importance_weights`` forces it on
    or off): ``1/propensity``, self-normalised per chosen variant so the evidence counts stay
    the true counts. Shape ``(n,)``, for :meth:`~copyloop.agents.Policy.learn_log`.
    """
    weighted = needs_weights(policy) if importance_weights is None else importance_weights
    if not weighted:
        return None
    observed = ~np.isnan(log.reward)
    raw = 1.0 / log.propensity
    _, inv = np.unique(np.asarray(log.table.column("action")), return_inverse=True)
    inv = inv.ravel()
    mean_w = np.bincount(inv, weights=np.where(observed, raw, 0.0)) / np.maximum(
        np.bincount(inv, weights=observed.astype(float)), 1.0
    )
    return np.asarray(raw / mean_w[inv], np.float64)


def _campaign_rows(log: DecisionLog, market: Any) -> npt.NDArray[np.int64]:
    """Catalog index of each row's campaign, after checking the log belongs to ``market``."""
    if log.context_dim != market.user_dim:
        raise LogValidationError(
            f"`context` has {log.context_dim} features but the market's users have "
            f"{market.user_dim} — use a log of this market"
        )
    if log.table.column("candidates").null_count != log.n_rows:
        raise LogValidationError(
            "`candidates` must be null (the campaign's full variant set) to rebuild observations "
            "from the market's catalog"
        )
    camp = pc.index_in(
        log.table.column("campaign_id"), value_set=pa.array(market.catalog.campaign_ids)
    )
    if camp.null_count:
        bad = np.flatnonzero(np.asarray(camp.is_null()))
        raise LogValidationError(
            f"`campaign_id` rows {bad[:5].tolist()} name campaigns the market does not have — "
            "use a log of this market"
        )
    return np.asarray(camp.to_numpy(zero_copy_only=False), np.int64)


def _observations(
    market: Any, users: npt.NDArray[np.float32], campaigns: npt.NDArray[np.int64]
) -> dict[str, npt.NDArray[Any]]:
    return {
        "user": users,
        "candidates": market.slot_features[campaigns],
        "shown": np.zeros((campaigns.size, market.max_candidates), np.float32),
        "action_mask": market.slot_mask[campaigns],
    }


def policy_probs_on_log(
    policy: Policy, log: DecisionLog, market: Any, *, batch_size: int = 8192
) -> npt.NDArray[np.float64]:
    """The distribution ``policy`` would use on each logged decision, (n, K) — the target
    probabilities for off-policy evaluation of a saved agent."""
    camp = _campaign_rows(log, market)
    ctx = log.context
    out = np.zeros((log.n_rows, market.max_candidates))
    for start in range(0, log.n_rows, batch_size):
        sl = slice(start, start + batch_size)
        out[sl] = policy.action_probs(_observations(market, ctx[sl], camp[sl]))
    return out
