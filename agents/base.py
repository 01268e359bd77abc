"""The policy interface every copyloop agent implements: choose (with probabilities) and learn.

In the spirit of river's two verbs and obp's ``action_dist``: :meth:`Policy.act` returns the
chosen slots *and* the full distribution the choice was drawn from, so every logged propensity
is the true one. Observations are the market env's batched Dict (``user``, ``candidates``,
``shown``, ``action_mask``); a single (unbatched) observation is treated as a batch of one.

Subclasses implement :meth:`Policy._decide` (the distribution, and the choice drawn from it)
and :meth:`Policy._learn`, and expose learned state through :meth:`Policy._get_state` /
:meth:`Policy._set_state` so that :meth:`save` / :meth:`load` and :meth:`clone` work for all.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import threading
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from copyloop.agents.request import Choice, check_context, event_key, floor_probs, pick

if TYPE_CHECKING:
    from copyloop.agents.store import VariantStore
    from copyloop.contract import DecisionLog

Obs = Mapping[str, npt.NDArray[Any]]
FORMAT = "copyloop-policy/1"
_DEFAULT_PATH_LOCK = threading.RLock()


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


def as_batch(obs: Obs) -> dict[str, npt.NDArray[Any]]:
    """The observation as a batch: a single env observation gains a leading axis of 1."""
    for key in ("user", "candidates", "action_mask"):
        if key not in obs:
            raise KeyError(
                f"observation has no `{key}` — pass the market env's Dict observation "
                "(user, candidates, shown, action_mask)"
            )
    single = np.ndim(obs["action_mask"]) == 1
    return {k: np.asarray(v)[None] if single else np.asarray(v) for k, v in obs.items()}


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


def sample_from(probs: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """One draw per row from (B, K) distributions; never lands on a zero-probability slot."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cum[:, -1:]
    # The first slot whose cumulative probability exceeds u always has positive probability.
    return np.minimum((cum <= u).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


class Policy(ABC):
    """Base class of copyloop agents.

    Constructor arguments are stored as given (so :meth:`clone`, ``repr`` and :meth:`save`
    work); learned state is private; each call to :meth:`act` draws from
    ``np.random.default_rng([seed, n])`` where ``n`` counts the calls, so a decision can be
    replayed from a saved policy.

    Args:
        seed: seed of the policy's randomness.
        exploration_floor: minimum probability of every valid candidate (safe live use); the
            policy's own distribution is mixed with uniform so each of the ``n`` valid slots
            gets at least this much. Must be <= 1 / K.
    """

    policy_id: ClassVar[str] = "policy"

    def __init__(self, *, seed: int | None = None, exploration_floor: float = 0.0) -> None:
        if not 0.0 <= exploration_floor < 1.0:
            raise ValueError(f"`exploration_floor` must be in [0, 1), got {exploration_floor}")
        self.seed = seed
        self.exploration_floor = exploration_floor
        self._calls = 0
        self._updates = 0
        self._entropy = seed if seed is not None else int(np.random.default_rng().integers(2**62))
        self._store: VariantStore | None = None
        self._widths: dict[str, int] | None = None

    # ---- the two verbs --------------------------------------------------------------------------
    def act(self, obs: Obs) -> Decision:
        """Choose one candidate per row; ``Decision.probs`` is what it was drawn from."""
        batch = as_batch(obs)
        mask = batch_mask(batch)
        self._check_obs(batch)
        rng = np.random.default_rng([self._entropy, self._calls])
        self._calls += 1
        actions, probs = self._decide(batch, mask, rng)
        f = self.exploration_floor
        if f > 0:
            n_valid = mask.sum(axis=1, keepdims=True)
            if np.any(f * n_valid > 1.0):
                raise ValueError(
                    f"`exploration_floor`={f} is above 1/{int(n_valid.max())}: it cannot hold for "
                    f"{int(n_valid.max())} candidates — lower it"
                )
            explore = rng.random(mask.shape[0]) < (f * n_valid[:, 0])
            if explore.any():
                actions = actions.copy()
                actions[explore] = sample_from(
                    mask[explore] / mask[explore].sum(1, keepdims=True), rng
                )
            probs = (1.0 - f * n_valid) * probs + f * mask
        return Decision(actions.astype(np.int64), probs)

    def action_probs(self, obs: Obs) -> npt.NDArray[np.float64]:
        """The distribution the next :meth:`act` on ``obs`` would draw from, shape (B, K).

        Does not advance the policy's random stream. For Monte-Carlo policies this is the
        distribution of that very draw.
        """
        saved = self._calls
        try:
            return self.act(obs).probs
        finally:
            self._calls = saved

    def update(
        self,
        obs: Obs,
        actions: npt.ArrayLike,
        rewards: npt.ArrayLike,
        sample_weight: npt.ArrayLike | None = None,
    ) -> None:
        """Learn from a batch of (observation, chosen slot, reward).

        Args:
            obs: the observations the choices were made on (batched or single).
            actions: chosen slot per row, (B,).
            rewards: observed reward per row, (B,); must be finite.
            sample_weight: optional non-negative weight per row (importance weights when
                learning from another policy's log); only policies with
                ``supports_weights = True`` accept it.
        """
        batch = as_batch(obs)
        mask = batch_mask(batch)
        self._check_obs(batch)
        a = np.atleast_1d(np.asarray(actions))
        r = np.atleast_1d(np.asarray(rewards, dtype=np.float64))
        b = mask.shape[0]
        if a.shape != (b,) or a.dtype.kind not in "iu":
            raise ValueError(f"`actions` must be {b} integer slots, got {a.dtype} {a.shape}")
        if r.shape != (b,):
            raise ValueError(f"`rewards` must have shape ({b},), got {r.shape}")
        bad = ~np.isfinite(r)
        if bad.any():
            raise ValueError(
                f"`rewards` must be finite; rows {np.flatnonzero(bad)[:5].tolist()} are "
                f"{r[bad][:5].tolist()} — drop unobserved rewards before updating"
            )
        if np.any(a < 0) or np.any(a >= mask.shape[1]) or not mask[np.arange(b), a].all():
            raise ValueError("`actions` must be valid (unmasked) slots of their rows")
        if sample_weight is None:
            self._learn(batch, a.astype(np.int64), r)
        else:
            if not self.supports_weights:
                raise ValueError(f"{type(self).__name__} does not take `sample_weight`")
            w = np.atleast_1d(np.asarray(sample_weight, dtype=np.float64))
            if w.shape != (b,) or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"`sample_weight` must be {b} finite weights >= 0")
            self._learn_weighted(batch, a.astype(np.int64), r, w)
        self._updates += 1

    # ---- one request at a time ------------------------------------------------------------------
    learns_from_rows: ClassVar[bool] = True
    """Whether :meth:`update` / :meth:`learn_log` can teach this policy (PPO learns by train)."""
    how_it_learns: ClassVar[str] = "from rows: update() with env batches, learn_log() with logs"

    @property
    def model_version(self) -> str:
        """The version of the learned state: the number of updates it has taken."""
        return str(self._updates)

    @property
    def store(self) -> VariantStore | None:
        """The variant store :meth:`decide` looks candidates up in (see :meth:`attach`)."""
        return self._store

    def attach(self, store: VariantStore) -> Policy:
        """Use ``store`` for :meth:`decide` and :meth:`learn_log` (returns self for chaining)."""
        known = getattr(self, "_widths", None)
        if known is not None and store.dim != known["candidate"]:
            raise ValueError(
                f"the store's variants have {store.dim} features but this policy learned on "
                f"{known['candidate']} — use the store (featurizer) it was trained with"
            )
        self._store = store
        return self

    def decide(
        self,
        context: npt.ArrayLike,
        candidate_ids: Sequence[str],
        *,
        event_id: str,
        store: VariantStore | None = None,
    ) -> Choice:
        """Choose one of ``candidate_ids`` for one request, with every candidate's probability.

        Safe to call from many threads at once (it reads the learned state, never writes it);
        the choice is a function of (event id, model version, request), so the same event on
        the same snapshot gives the same decision.

        Args:
            context: the request's features, (du,), as the policy was trained on.
            candidate_ids: variant ids in the store, unique, in display order.
            event_id: the request's id; its hash is the decision's randomness.
            store: the variant store (default: the attached one).

        Example:
            >>> pol = LinearTSPolicy(seed=0).attach(store)  # doctest: +SKIP
            >>> c = pol.decide(user_features, ["p1-original", "p1-urgent"], event_id="e-42")
            >>> c.variant_id, c.probs, c.model_version  # doctest: +SKIP
        """
        st = store if store is not None else self._store
        if st is None:
            raise ValueError("no variant store: attach one (policy.attach(store)) or pass store=")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError(f"`event_id` must be a non-empty string, got {event_id!r}")
        ids, cand = st.request(candidate_ids)
        known = self._widths
        u = check_context(context, None if known is None else known["user"])
        if known is not None and cand.shape[1] != known["candidate"]:
            raise ValueError(
                f"the store's variants have {cand.shape[1]} features but this policy learned on "
                f"{known['candidate']} — use the store (featurizer) it was trained with"
            )
        if st is not self._store:
            self._note_store(st)
        version = self.model_version
        key = event_key(self._entropy, version, event_id)
        probs = self._decide_request(u, cand, key, ids)
        if self.exploration_floor > 0:
            probs = floor_probs(probs, self.exploration_floor)
        i = pick(probs, key)
        return Choice(event_id, ids[i], i, probs, version)

    def project(self, candidate_lists: Iterable[Sequence[str]], store: Any = None) -> int:
        """Precompute what :meth:`decide` needs for these candidate lists (a service calls it
        with every campaign's active list when it hands over a model); returns how many
        lists got something. This default: nothing to precompute (0). LinearTS overrides it
        (:meth:`copyloop.agents.LinearTSPolicy.project`)."""
        return 0

    def _decide_request(
        self,
        user: npt.NDArray[np.float32],
        cand: npt.NDArray[np.float32],
        key: int,
        ids: Sequence[str],
    ) -> npt.NDArray[np.float64]:
        """Every candidate's probability for one request, (K,). This default runs the batched
        decision on a batch of one (its ``candidate_ids`` = ``ids``) with a generator seeded by
        the event ``key``; agents with a per-request fast path override it."""
        k = cand.shape[0]
        obs: dict[str, npt.NDArray[Any]] = {
            "user": user[None, :],
            "candidates": cand.reshape(1, -1),
            "shown": np.zeros((1, k), np.float32),
            "action_mask": np.ones((1, k), np.int8),
            "candidate_ids": np.array([list(ids)], dtype=np.str_),
        }
        with _DEFAULT_PATH_LOCK:  # batched code may grow caches: one request at a time here
            _, probs = self._decide(obs, np.ones((1, k), bool), np.random.default_rng(key))
        return np.asarray(probs[0], np.float64)

    def learn_one(
        self,
        context: npt.ArrayLike,
        variant_id: str,
        reward: float,
        *,
        weight: float | None = None,
        store: VariantStore | None = None,
    ) -> None:
        """Learn from one request's outcome — the per-request twin of :meth:`decide` (river's
        ``learn_one``): the context it was decided on, the variant shown, the reward.

        The same learning as :meth:`update` on a batch of one row or :meth:`learn_log` on a
        one-row log (one implementation), without building either; counting agents key the
        arm by ``variant_id``.

        Args:
            context: the request's features, (du,).
            variant_id: the variant that was shown (in the store).
            reward: its reward; must be finite.
            weight: optional importance weight >= 0 (policies with ``supports_weights``).
            store: the variant store (default: the attached one).

        Raises:
            ValueError: the policy cannot learn from rows (PPO), an unknown variant id, a
                context of the wrong width or not finite, a non-finite reward, a bad weight.
        """
        if not self.learns_from_rows:
            raise ValueError(
                f"{type(self).__name__} cannot learn from log rows: {self.how_it_learns}"
            )
        st = store if store is not None else self._store
        if st is None:
            raise ValueError("no variant store: attach one (policy.attach(store)) or pass store=")
        try:
            _, cand = st.request((variant_id,))
        except ValueError:
            raise ValueError(
                f"`variant_id` {variant_id!r} is not in the variant store — add it first "
                "(VariantStore.add, or the service's admin API)"
            ) from None
        try:
            r = float(reward)
        except (TypeError, ValueError):
            raise ValueError(f"`reward` must be a number, got {reward!r}") from None
        if not math.isfinite(r):
            raise ValueError(f"`reward` must be finite, got {r} — skip unobserved rewards")
        w = None
        if weight is not None:
            if not self.supports_weights:
                raise ValueError(f"{type(self).__name__} does not take `weight`")
            w = float(weight)
            if not (math.isfinite(w) and w >= 0.0):
                raise ValueError(f"`weight` must be a finite number >= 0, got {weight!r}")
        known = self._widths
        u = check_context(context, None if known is None else known["user"])
        if known is not None and cand.shape[1] != known["candidate"]:
            raise ValueError(
                f"the store's variants have {cand.shape[1]} features but this policy learned on "
                f"{known['candidate']} — use the store (featurizer) it was trained with"
            )
        if st is not self._store:
            self._note_store(st)
        self._learn_one(u, cand[0], str(variant_id), r, w)
        self._updates += 1

    def _note_store(self, store: VariantStore) -> None:
        """Hook: ``store`` was passed to a per-request call without being attached (counting
        agents name their arms through it)."""
        return None

    def _learn_one(
        self,
        user: npt.NDArray[np.float32],
        cand: npt.NDArray[np.float32],
        variant_id: str,
        reward: float,
        weight: float | None,
    ) -> None:
        """Learn from one validated row. This default runs the batched learning on a batch of
        one (its ``candidate_ids`` = the variant id); agents with a per-row fast path override
        it with the same arithmetic."""
        obs: dict[str, npt.NDArray[Any]] = {
            "user": user[None, :],
            "candidates": cand[None, :],
            "shown": np.zeros((1, 1), np.float32),
            "action_mask": np.ones((1, 1), np.int8),
            "candidate_ids": np.array([[variant_id]], dtype=np.str_),
        }
        self._check_obs(obs)
        a, r = np.zeros(1, np.int64), np.array([reward])
        if weight is None:
            self._learn(obs, a, r)
        else:
            self._learn_weighted(obs, a, r, np.array([weight]))

    def learn_log(
        self,
        log: DecisionLog,
        store: VariantStore | None = None,
        *,
        sample_weight: npt.ArrayLike | None = None,
        batch_size: int = 4096,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Learn from DecisionLog rows — the rows the service stores, a replayed log, a warm
        start — through the same :meth:`update` as the env's batches.

        Each row teaches (context, the chosen variant's features from the store, reward); rows
        without an observed reward are skipped. Returns the rows learned from.

        Raises:
            ValueError: the policy cannot learn from rows (PPO), an action id the store does
                not know, a context width the policy was not trained on.
        """
        if not self.learns_from_rows:
            name = type(self).__name__
            raise ValueError(f"{name} cannot learn from log rows: {self.how_it_learns}")
        st = store if store is not None else self._store
        if st is None:
            raise ValueError("no variant store: attach one (policy.attach(store)) or pass store=")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        reward = log.reward
        keep = np.flatnonzero(~np.isnan(reward))
        actions = log.table.column("action").to_pylist()
        try:
            rows = (
                st.rows([actions[i] for i in keep], unique=False)
                if keep.size
                else np.zeros(0, np.int64)
            )
        except ValueError as e:
            raise ValueError(f"the log's `action`: {e}") from None
        ctx = log.context
        vids = np.array([actions[i] for i in keep], dtype=np.str_)
        w = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        if w is not None and w.shape != (log.n_rows,):
            raise ValueError(f"`sample_weight` must have one weight per log row ({log.n_rows})")
        if st is not self._store:
            self._note_store(st)
        feats = st.features
        for start in range(0, keep.size, batch_size):
            sl = slice(start, start + batch_size)
            idx = keep[sl]
            n = idx.size
            obs: dict[str, npt.NDArray[Any]] = {
                "user": ctx[idx],
                "candidates": feats[rows[sl]],
                "shown": np.zeros((n, 1), np.float32),
                "action_mask": np.ones((n, 1), np.int8),
                "candidate_ids": vids[sl, None],
            }
            self.update(obs, np.zeros(n, np.int64), reward[idx], None if w is None else w[idx])
            if progress is not None:
                progress(start + n)
        return int(keep.size)

    # ---- subclass hooks ---------------------------------------------------------------------
    @abstractmethod
    def _decide(
        self,
        obs: dict[str, npt.NDArray[Any]],
        mask: npt.NDArray[np.bool_],
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """(chosen slot per row, the distribution it was drawn from (B, K))."""

    def _learn(
        self,
        obs: dict[str, npt.NDArray[Any]],
        actions: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float64],
    ) -> None:
        """Learn from a validated batch. Non-learning policies ignore it."""
        return None

    supports_weights: ClassVar[bool] = False

    def _learn_weighted(
        self,
        obs: dict[str, npt.NDArray[Any]],
        actions: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
    ) -> None:
        """Learn from a weighted batch (policies with ``supports_weights``)."""
        raise NotImplementedError(
            f"{type(self).__name__} sets supports_weights but does not override _learn_weighted"
        )

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        return {}

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        return None

    def _check_obs(self, obs: dict[str, npt.NDArray[Any]]) -> None:
        """Width check: the first batch fixes the user and per-candidate feature widths, later
        ones must match (the number of candidates may vary: a log row carries only the chosen
        one, a request its own set)."""
        k = max(int(np.shape(obs["action_mask"])[1]), 1)
        widths = {
            "user": int(np.shape(obs["user"])[1]),
            "candidate": int(np.shape(obs["candidates"])[1]) // k,
        }
        known = getattr(self, "_widths", None)
        if known is None:
            self._widths = widths
        elif known != widths:
            bad = {k: (known[k], v) for k, v in widths.items() if known[k] != v}
            raise ValueError(
                "observation widths changed: "
                + ", ".join(f"`{k}` had {a}, now {b}" for k, (a, b) in bad.items())
                + " — one policy serves one market layout"
            )

    # ---- params, clone, persistence ---------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments as given."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def clone(self) -> Policy:
        """A fresh, untrained copy with the same constructor arguments."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def trained_copy(self) -> Policy:
        """A copy with the learned state (arrays copied), version, entropy and store: it
        decides exactly as this policy does now while this one keeps learning — what a
        service's learner hands its serving path. The same state :meth:`save` writes."""
        new = self.clone()
        new._calls, new._entropy, new._updates = self._calls, self._entropy, self._updates
        if self._widths is not None:
            new._widths = dict(self._widths)
        new._set_state({k: np.array(v, copy=True) for k, v in self._get_state().items()})
        new._store = self._store
        return new

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def save(self, path: str | os.PathLike[str], *, store: VariantStore | None = None) -> Path:
        """Save parameters and learned state to one ``.npz`` file: a versioned snapshot.

        No pickle; written atomically; a sha256 over every array is kept in the header and
        checked on load. With ``store`` (default: the attached one) the variant store and its
        featurizer travel in the same file, so one artifact serves requests.
        """
        from copyloop.contract import atomic_path

        state = {f"state/{k}": np.asarray(v) for k, v in self._get_state().items()}
        st = store if store is not None else self._store
        if st is not None:
            state.update({f"store/{k}": np.asarray(v) for k, v in st.to_arrays().items()})
        widths = getattr(self, "_widths", None)
        header = {
            "format": FORMAT,
            "class": type(self).__name__,
            "params": self.get_params(),
            "calls": self._calls,
            "updates": self._updates,
            "model_version": self.model_version,
            "entropy": str(self._entropy),
            "widths": widths,
            "sha256": _arrays_digest(state),
        }
        p = Path(path)
        with atomic_path(p) as tmp, open(tmp, "wb") as f:
            np.savez(f, __header__=np.array(json.dumps(header)), **state)  # type: ignore[arg-type]
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Load a policy saved with :meth:`save` (any copyloop policy class)."""
        from copyloop.agents import POLICIES

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"policy file {p} does not exist")
        fix = "re-save the policy (Policy.save), or check the file was copied whole"
        try:
            with np.load(p, allow_pickle=False) as z:
                header = json.loads(str(z["__header__"]))
                arrays = {k: z[k] for k in z.files if k != "__header__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"{p} is not a readable copyloop policy file ({reason}) — it may be truncated "
                f"or corrupted; {fix}"
            ) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            got = header.get("format") if isinstance(header, dict) else None
            raise ValueError(f"{p} has format {got!r}, expected {FORMAT!r} — {fix}")
        digest = header.get("sha256")
        if digest is not None and digest != _arrays_digest(arrays):
            raise ValueError(f"{p}: checksum mismatch — the arrays were altered or damaged; {fix}")
        state = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
        stored = {k[len("store/") :]: v for k, v in arrays.items() if k.startswith("store/")}
        try:
            klass = {c.__name__: c for c in POLICIES.values()}.get(header["class"])
            if klass is None or not issubclass(klass, cls):
                raise ValueError(f"{p} holds a {header['class']}, which is not a {cls.__name__}")
            pol = klass(**header["params"])
            pol._calls = int(header["calls"])
            pol._entropy = int(header["entropy"])
            pol._updates = int(header.get("updates", 0))
            widths = header.get("widths")
            if widths is not None and "candidates" in widths:  # files before per-slot widths
                k = max(int(widths["action_mask"]), 1)
                widths = {"user": widths["user"], "candidate": int(widths["candidates"]) // k}
            if widths is not None:
                pol._widths = widths
            pol._set_state(state)
            if stored:
                from copyloop.agents.store import VariantStore

                pol._store = VariantStore.from_arrays(stored)
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"{p}: the policy header or state is incomplete ({type(e).__name__}: {e}) — {fix}"
            ) from None
        return pol


def _arrays_digest(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
