"""Baseline policies: uniform random, epsilon-greedy and UCB1 over each campaign's variants.

Epsilon-greedy and UCB1 keep per-variant click statistics; a variant is identified by its id
where the request or log row names it (``decide``, ``learn_log``), else by its candidate features
(the market env's ``candidates`` rows), so the same copy shown in several sessions shares its
statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.agents.base import Policy, sample_from
from copyloop.agents.features import ArmsByVariant, VariantIndex


class UniformPolicy(Policy):
    """Uniformly random over the valid candidates (the logging policy of ``copyloop simulate``).

    Example:
        >>> import numpy as np
        >>> p = UniformPolicy(seed=0)
        >>> obs = {"user": np.zeros((1, 2)), "candidates": np.zeros((1, 4)),
        ...        "action_mask": np.array([[1, 1, 0, 0]])}
        >>> p.action_probs(obs).tolist()
        [[0.5, 0.5, 0.0, 0.0]]
    """

    policy_id = "uniform"

    def _decide(
        self,
        obs: dict[str, npt.NDArray[Any]],
        mask: npt.NDArray[np.bool_],
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        probs = mask / mask.sum(axis=1, keepdims=True)
        return sample_from(probs, rng), probs


class _CountingPolicy(ArmsByVariant, Policy):
    """Shared bookkeeping: clicks and impressions per variant (by variant id where known, else
    by its features: :class:`~copyloop.agents.features.ArmsByVariant`)."""

    def __init__(self, *, seed: int | None = None, exploration_floor: float = 0.0) -> None:
        super().__init__(seed=seed, exploration_floor=exploration_floor)
        self._index = VariantIndex()
        self._n = np.zeros(0)
        self._s = np.zeros(0)

    def _stats(
        self, obs: dict[str, npt.NDArray[Any]], mask: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        ids = self._arm_ids(obs, mask)
        self._grow()
        safe = np.maximum(ids, 0)
        return ids, self._n[safe], self._s[safe]

    def _grow(self) -> None:
        n = len(self._index)
        if n > self._n.size:
            self._n = np.concatenate([self._n, np.zeros(n - self._n.size)])
            self._s = np.concatenate([self._s, np.zeros(n - self._s.size)])

    supports_weights = True

    def _learn(
        self,
        obs: dict[str, npt.NDArray[Any]],
        actions: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float64],
    ) -> None:
        self._learn_weighted(obs, actions, rewards, np.ones(actions.size))

    def _learn_weighted(
        self,
        obs: dict[str, npt.NDArray[Any]],
        actions: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
    ) -> None:
        mask = obs["action_mask"].astype(bool)
        ids = self._arm_ids(obs, mask)
        self._grow()
        chosen = ids[np.arange(actions.size), actions]
        np.add.at(self._n, chosen, weights)
        np.add.at(self._s, chosen, weights * rewards)

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        return {"n": self._n, "s": self._s, **self._index.state()}

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        self._n = np.asarray(state["n"], float)
        self._s = np.asarray(state["s"], float)
        self._index.load_state(state)


class EpsilonGreedyPolicy(_CountingPolicy):
    """With probability ``epsilon`` a uniform valid candidate, else the best observed CTR
    (ties, including unseen variants with an optimistic ``prior_ctr``, split evenly).

    Args:
        epsilon: exploration probability.
        prior_ctr: CTR assumed for a variant never shown (pseudo-count of one impression).
    """

    policy_id = "epsilon_greedy"

    def __init__(
        self,
        epsilon: float = 0.1,
        prior_ctr: float = 0.05,
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"`epsilon` must be in [0, 1], got {epsilon}")
        super().__init__(seed=seed, exploration_floor=exploration_floor)
        self.epsilon = epsilon
        self.prior_ctr = prior_ctr

    def _decide(self, obs, mask, rng):  # type: ignore[no-untyped-def]
        _, n, s = self._stats(obs, mask)
        mean = np.where(mask, (s + self.prior_ctr) / (n + 1.0), -np.inf)
        best = mask & (mean >= mean.max(axis=1, keepdims=True))
        greedy = best / best.sum(axis=1, keepdims=True)
        uniform = mask / mask.sum(axis=1, keepdims=True)
        probs = (1.0 - self.epsilon) * greedy + self.epsilon * uniform
        return sample_from(probs, rng), probs


class UCB1Policy(_CountingPolicy):
    """UCB1 (Auer et al. 2002) per campaign: unseen variants first, then the highest
    ``mean + c · sqrt(2 ln N / n)``, where N counts the campaign's impressions. Deterministic
    up to ties, so its propensities are 1 (or 1/ties) — use ``exploration_floor`` for OPE.

    Args:
        c: width of the confidence bonus (1 = the textbook bound; click rates are small, so
            smaller values explore less wastefully).
    """

    policy_id = "ucb1"

    def __init__(
        self, c: float = 1.0, *, seed: int | None = None, exploration_floor: float = 0.0
    ) -> None:
        if c < 0:
            raise ValueError(f"`c` must be >= 0, got {c}")
        super().__init__(seed=seed, exploration_floor=exploration_floor)
        self.c = c

    def _decide(self, obs, mask, rng):  # type: ignore[no-untyped-def]
        _, n, s = self._stats(obs, mask)
        total = np.where(mask, n, 0).sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = self.c * np.sqrt(2.0 * np.log(np.maximum(total, 1.0)) / n)
            score = np.where(n > 0, s / np.maximum(n, 1) + bonus, np.inf)
        score = np.where(mask, score, -np.inf)
        best = mask & (score >= score.max(axis=1, keepdims=True))
        probs = best / best.sum(axis=1, keepdims=True)
        return sample_from(probs, rng), probs
