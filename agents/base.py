"""The policy interface every copyloop agent implements: choose (with probabilities) and learn.

In the spirit of river's two verbs and obp's ``action_dist``: :meth:`Policy.act` returns the
chosen slots *and* the full distribution the choice was drawn from, so every logged propensity
is the true one. Observations are the market env's batched Dict (``user``, ``candidates``,
``shown``, ``action_mask``); a single observation is a batch of one.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Obs = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Decision:
    """A batch of choices.

    Attributes:
        actions: chosen slot per row, shape (B,).
        probs: the distribution each choice was drawn from, shape (B, K); 0 on masked slots.
    """

    actions: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float64]

    @property
    def propensity(self) -> npt.NDArray[np.float64]:
        """Probability of each chosen action, shape (B,)."""
        return self.probs[np.arange(self.actions.size), self.actions]


def batch_mask(obs: Obs) -> npt.NDArray[np.bool_]:
    """The action mask of a (batched or single) observation as a (B, K) bool array."""
    if "action_mask" not in obs:
        raise KeyError("observation has no `action_mask` — pass the market env's Dict observation")
    mask = np.asarray(obs["action_mask"]).astype(bool)
    if mask.ndim == 1:
        mask = mask[None, :]
    if mask.ndim != 2:
        raise ValueError(f"`action_mask` must be (K,) or (B, K), got shape {mask.shape}")
    empty = ~mask.any(axis=1)
    if empty.any():
        raise ValueError(
            f"rows {np.flatnonzero(empty)[:5].tolist()} have no valid candidate (empty "
            "`action_mask`) — every decision needs at least one candidate"
        )
    return mask


class Policy(ABC):
    """Base class of copyloop agents.

    Constructor arguments are stored as given (so :meth:`clone` and ``repr`` work); learned
    state is private; each policy owns a ``np.random.Generator`` seeded from ``seed``.
    """

    policy_id: str = "policy"

    def __init__(self, *, seed: int | None = None) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @abstractmethod
    def action_probs(self, obs: Obs) -> npt.NDArray[np.float64]:
        """The distribution over candidate slots for each row, shape (B, K), rows sum to 1."""

    def act(self, obs: Obs) -> Decision:
        """Draw one slot per row from :meth:`action_probs`."""
        probs = self.action_probs(obs)
        cum = np.cumsum(probs, axis=1)
        u = self._rng.random((probs.shape[0], 1)) * cum[:, -1:]
        actions = np.minimum((cum <= u).sum(axis=1), probs.shape[1] - 1)
        # The first slot whose cumulative probability exceeds u: never a zero-probability slot.
        return Decision(actions.astype(np.int64), probs)

    def update(self, obs: Obs, actions: npt.ArrayLike, rewards: npt.ArrayLike) -> None:  # noqa: B027
        """Learn from a batch of (observation, action, reward). Non-learning policies ignore it."""

    def clone(self) -> Policy:
        """A fresh, untrained copy with the same constructor arguments."""
        params = {k: copy.deepcopy(v) for k, v in vars(self).items() if not k.startswith("_")}
        return type(self)(**params)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
