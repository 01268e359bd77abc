"""Feature maps and variant identities for the agents.

The market env shows each candidate as a feature row (MiniLM-PCA components and readable text
features). Linear and neural agents score ``φ(user, candidate)``; counting agents (UCB1,
epsilon-greedy, Bernoulli TS) need a stable identity per variant: :class:`VariantIndex` keys
arms by variant id where the request or log row names its variants (an observation's optional
``candidate_ids``), and by the candidate's feature row for the env's batches, which carry none.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

FEATURE_MAPS = ("interaction", "candidate")
_ADOPT_LOCK = threading.Lock()


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
    """Stable integer arm numbers for variants: by variant id where the caller knows it, else by
    the candidate's feature row.

    A request (:meth:`~copyloop.agents.Policy.decide`) and a log row
    (:meth:`~copyloop.agents.Policy.learn_log`) name their variants, so two variants with
    identical features are two arms. The env's batches carry only feature rows: those are keyed
    by their exact float32 bytes (independent of floating-point arithmetic, BLAS and thread
    counts, so numbers survive save/load across machines), unless a variant store translates
    the row to the one variant it belongs to (:meth:`adopt`, ``lookup``).
    """

    def __init__(self) -> None:
        self._keys: dict[bytes | str, int] = {}
        self._width = 0

    def __len__(self) -> int:
        return len(self._keys)

    def _number(self, key: bytes | str) -> int:
        got = self._keys.get(key)
        if got is None:
            got = len(self._keys)
            self._keys[key] = got
        return got

    def ids(
        self,
        candidates: npt.NDArray[Any],
        mask: npt.NDArray[np.bool_],
        variant_ids: npt.NDArray[Any] | None = None,
        lookup: Mapping[bytes, str] | None = None,
    ) -> npt.NDArray[np.int64]:
        """Arm number of each slot, (B, K); -1 on masked slots. New variants get new numbers.

        Args:
            candidates: the flattened candidate features, (B, K·dc).
            mask: valid slots, (B, K).
            variant_ids: the slots' variant ids, (B, K) strings, when the caller has them (they
                win over the features).
            lookup: feature-row bytes → variant id for rows that belong to exactly one variant
                (:meth:`~copyloop.agents.store.VariantStore.feature_ids`).
        """
        b, k = mask.shape
        if variant_ids is not None:
            vids = np.asarray(variant_ids).reshape(b, k)
            uniq, inv = np.unique(vids[mask], return_inverse=True)
            nums = np.fromiter((self._number(str(v)) for v in uniq.tolist()), np.int64, uniq.size)
            out = np.full((b, k), -1, np.int64)
            out[mask] = nums[inv.ravel()]
            return out
        flat = np.asarray(candidates, np.float32).reshape(b, -1)
        if b > 1 and (flat == flat[:1]).all():  # one candidate set for the whole batch
            first = self.ids(flat[:1], mask[:1], lookup=lookup)
            return (
                np.broadcast_to(first, (b, k)).copy()
                if mask.all() or (mask == mask[:1]).all()
                else np.where(mask, first, -1)
            )
        c = np.ascontiguousarray(flat.reshape(b * k, -1))
        self._width = c.shape[1]
        rows = c.view(np.dtype((np.void, c.shape[1] * 4))).ravel()
        uniq, inv = np.unique(rows, return_inverse=True)
        keys: list[bytes] = uniq.tolist()
        get = (lambda key: key) if lookup is None else (lambda key: lookup.get(key, key))
        out_ids = np.fromiter((self._number(get(key)) for key in keys), np.int64, len(keys))
        return np.where(mask, out_ids[inv.reshape(b, k)], -1)

    def adopt(self, lookup: Mapping[bytes, str]) -> int:
        """Re-key arms known by a feature row to the variant id ``lookup`` gives that row (a
        policy trained on env batches, then attached to a store, serves its variants by id with
        what it learned). An id that already has its own arm keeps it. Returns the arms re-keyed.
        """
        moved = 0
        for key in [k for k in self._keys if isinstance(k, bytes)]:
            vid = lookup.get(key)
            if vid is not None and vid not in self._keys:
                self._keys[vid] = self._keys.pop(key)
                moved += 1
        return moved

    def state(self) -> dict[str, npt.NDArray[Any]]:
        by_row = [(k, v) for k, v in self._keys.items() if isinstance(k, bytes)]
        by_id = [(k, v) for k, v in self._keys.items() if isinstance(k, str)]
        n = len(by_row)
        keys = (
            np.frombuffer(b"".join(k for k, _ in by_row), np.uint8).reshape(n, -1)
            if n
            else np.zeros((0, 0), np.uint8)
        )
        raw = [k.encode() for k, _ in by_id]
        width = max((len(r) for r in raw), default=0)
        vids = np.zeros((len(raw), width), np.uint8)  # UTF-8, zero-padded: numbers, no pickle
        for i, r in enumerate(raw):
            vids[i, : len(r)] = np.frombuffer(r, np.uint8)
        return {
            "index_keys": keys,
            "index_ids": np.array([v for _, v in by_row], np.int64),
            "index_variant_ids": vids,
            "index_variant_arms": np.array([v for _, v in by_id], np.int64),
        }

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        keys = np.asarray(state["index_keys"], np.uint8)
        ids = np.asarray(state["index_ids"], np.int64).tolist()
        loaded: dict[bytes | str, int] = {keys[i].tobytes(): ids[i] for i in range(keys.shape[0])}
        if "index_variant_ids" in state:  # snapshots before variant-id keys have none
            raw = np.asarray(state["index_variant_ids"], np.uint8)
            vids = [bytes(row).rstrip(b"\x00").decode() for row in raw]
            arms = np.asarray(state["index_variant_arms"], np.int64).tolist()
            loaded.update(dict(zip(vids, arms, strict=True)))
        self._keys = loaded


class ArmsByVariant:
    """Mixin for counting policies: arm numbers from a :class:`VariantIndex`, by variant id.

    An observation's optional ``candidate_ids`` (B, K) — set by ``decide`` and ``learn_log``,
    which know the ids — name the arms; env batches without them are translated through the
    attached store's :meth:`~copyloop.agents.store.VariantStore.feature_ids`, else keyed by
    feature row. Attaching a store re-keys arms learned by feature row to their variant ids.
    """

    _index: VariantIndex
    _store: Any
    _keys_store: Any = None

    def _arm_ids(
        self, obs: Mapping[str, npt.NDArray[Any]], mask: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.int64]:
        store = self._store if self._store is not None else self._keys_store
        return self._index.ids(
            obs["candidates"],
            mask,
            obs.get("candidate_ids"),
            None if store is None else store.feature_ids(),
        )

    def attach(self, store: Any) -> Any:
        out = super().attach(store)  # type: ignore[misc]
        self._index.adopt(store.feature_ids())
        return out

    def _note_store(self, store: Any) -> None:
        """A store passed to ``decide`` / ``learn_log`` / ``learn_one`` without attaching it:
        arms learned by feature row join their ids, and later env batches are named through
        it, so learning by id (a warm start from a log) and acting on env batches meet."""
        if self._store is None and store is not self._keys_store:
            with _ADOPT_LOCK:  # concurrent decides may bring the same new store
                if store is not self._keys_store:
                    self._index.adopt(store.feature_ids())
                    self._keys_store = store
