"""Feature maps and variant identities for the agents.

The market env shows each candidate as a feature row (MiniLM-PCA components and readable text
features). Linear and neural agents score ``φ(user, candidate)``; counting agents (UCB1,
epsilon-greedy, Bernoulli TS) need a stable identity per variant, which :class:`VariantIndex`
derives from the candidate's features, so no variant ids are needed in the observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

FEATURE_MAPS = ("interaction", "candidate")


def candidate_block(obs: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
    """Candidate features as (B, K, dv) from the flattened ``candidates`` observation."""
    cand = np.asarray(obs["candidates"], np.float32)
    b, k = np.shape(obs["action_mask"])
    if cand.shape[1] % k:
        raise ValueError(f"`candidates` width {cand.shape[1]} is not a multiple of K={k}")
    return cand.reshape(b, k, -1)


def feature_dim(kind: str, user_dim: int, cand_dim: int) -> int:
    """Width of :func:`features` for a map ``kind``."""
    if kind == "interaction":
        return (user_dim + 1) * (cand_dim + 1)
    if kind == "candidate":
        return cand_dim + 1
    raise ValueError(f"`features` must be one of {FEATURE_MAPS}, got {kind!r}")


def features(
    obs: Mapping[str, npt.NDArray[Any]], kind: str = "interaction"
) -> npt.NDArray[np.float32]:
    """φ(user, candidate) for every slot, shape (B, K, d).

    ``"interaction"``: the outer product ``[1, user] ⊗ [1, candidate]`` (user effects, copy
    effects and every user×copy interaction, so one linear model can prefer different copy for
    different users). ``"candidate"``: ``[1, candidate]`` only (the same copy ranking for all).
    """
    c = candidate_block(obs)
    b, k, _ = c.shape
    ones = np.ones((b, k, 1), np.float32)
    c1 = np.concatenate([ones, c], axis=2)
    if kind == "candidate":
        return c1
    if kind != "interaction":
        raise ValueError(f"`features` must be one of {FEATURE_MAPS}, got {kind!r}")
    u = np.asarray(obs["user"], np.float32)
    u1 = np.concatenate([np.ones((b, 1), np.float32), u], axis=1)
    return (u1[:, None, :, None] * c1[:, :, None, :]).reshape(b, k, -1)


class VariantIndex:
    """Stable integer ids for candidate feature rows (identical rows = the same variant).

    Rows are keyed by their exact float32 bytes, so ids do not depend on floating-point
    arithmetic (thread counts, BLAS) and survive save/load across machines.
    """

    def __init__(self) -> None:
        self._keys: dict[bytes, int] = {}
        self._width = 0

    def __len__(self) -> int:
        return len(self._keys)

    def ids(
        self, candidates: npt.NDArray[Any], mask: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.int64]:
        """Variant id of each slot, (B, K); -1 on masked slots. New variants get new ids."""
        b, k = mask.shape
        flat = np.asarray(candidates, np.float32).reshape(b, -1)
        if b > 1 and (flat == flat[:1]).all():  # one candidate set for the whole batch
            first = self.ids(flat[:1], mask[:1])
            return (
                np.broadcast_to(first, (b, k)).copy()
                if mask.all() or (mask == mask[:1]).all()
                else np.where(mask, first, -1)
            )
        c = np.ascontiguousarray(flat.reshape(b * k, -1))
        self._width = c.shape[1]
        rows = c.view(np.dtype((np.void, c.shape[1] * 4))).ravel()
        uniq, inv = np.unique(rows, return_inverse=True)
        lookup = np.empty(uniq.size, np.int64)
        for i, key in enumerate(uniq.tolist()):
            got = self._keys.get(key)
            if got is None:
                got = len(self._keys)
                self._keys[key] = got
            lookup[i] = got
        out = lookup[inv.reshape(b, k)]
        return np.where(mask, out, -1)

    def state(self) -> dict[str, npt.NDArray[Any]]:
        n = len(self._keys)
        keys = (
            np.frombuffer(b"".join(self._keys), np.uint8).reshape(n, -1)
            if n
            else np.zeros((0, 0), np.uint8)
        )
        return {"index_keys": keys, "index_ids": np.array(list(self._keys.values()), np.int64)}

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        keys = np.asarray(state["index_keys"], np.uint8)
        ids = np.asarray(state["index_ids"], np.int64).tolist()
        self._keys = {keys[i].tobytes(): ids[i] for i in range(keys.shape[0])}
