"""The service's core, without HTTP: campaigns in memory (config, variants, the serving
snapshot), ranking, rewards, admin changes. :mod:`copyloop.serve.app` puts HTTP around it and
:mod:`copyloop.serve.learner` updates its snapshots.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.agents import POLICIES, Policy
from copyloop.agents.request import event_key, pick
from copyloop.agents.store import VariantStore
from copyloop.serve.metrics import Metrics
from copyloop.serve.store import (
    CampaignConfig,
    DecisionRecord,
    RewardOutcome,
    Store,
    VariantRecord,
    open_store,
    parse_store_url,
)

ROLES = ("all", "api", "learner")
CATALOG_REV = "catalog_rev"
"""Meta key that every admin change rewrites, so other processes see that the campaigns,
variants or settings changed (a replica re-reads them when it differs from its own)."""


def default_snapshot_dir(store: str) -> Path:
    """Where snapshots go by default: beside a SQLite file, or ``./copyloop-<db>.snapshots``
    for a PostgreSQL store. Replicas read the paths the store records, so they share this
    folder (one machine, or a shared file system)."""
    if store.startswith(("postgresql://", "postgres://")):
        from urllib.parse import urlsplit

        name = urlsplit(store).path.lstrip("/") or "postgres"
        return Path.cwd() / f"copyloop-{name}.snapshots"
    db = parse_store_url(store)
    return db.with_name(db.name + ".snapshots")


def explore_mix(
    choice: Any, ids: list[str], trial: list[str], share: float, policy: Policy, eid: str
) -> tuple[list[str], int, list[float]]:
    """The exploration slice mixed into one decision: with probability ``share`` a uniform
    pick among the ``trial`` candidates, else the agent's ``choice`` among ``ids`` (disjoint
    sets). Returns the request's full candidate list, the served index and every candidate's
    mixture probability (what the log records, so OPE sees the real propensities). The coin
    and the pick come from the event id, so the decision replays like the agent's own."""
    probs = [(1.0 - share) * float(p) for p in choice.probs] + [share / len(trial)] * len(trial)
    v = policy.model_version
    if pick(np.array([1.0 - share, share]), event_key(policy._entropy, f"slice:{v}", eid)) == 1:
        uniform = np.full(len(trial), 1.0 / len(trial))
        k = pick(uniform, event_key(policy._entropy, f"trial:{v}", eid))
        return ids + trial, len(ids) + k, probs
    return ids + trial, int(choice.index), probs


class ServiceError(Exception):
    """A request the service refuses: ``status`` is its HTTP status, ``message`` says why,
    ``loc`` names the body field at fault (for a 422)."""

    def __init__(self, status: int, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.loc = loc


@dataclass
class ServiceConfig:
    """How to build a service (one per app; tests build one per case).

    Args:
        store: ``sqlite:///path.db`` (or a path).
        featurizer: the saved :class:`~copyloop.envs.featurize.CopyFeaturizer` every variant's
            copy features come from (the catalog's, for the default market).
        encoder: text encoder for new variants' embeddings (default: the packaged MiniLM,
            loaded on first use); anything with ``encode(list[str]) -> (n, e)``.
        snapshot_dir: where snapshots go (default: ``<db>.snapshots/`` beside the database).
        learn_interval_s: the learner's tick (how often it looks for a due hand-over); None
            runs no learner thread (call ``service.learner.step()`` yourself).
        publish_interval_s: most often the learner joins and learns a model's settled rows
            and hands the new model to the serving path (an in-memory copy); a reward reaches
            rank probabilities within about ``learn_interval_s + publish_interval_s``.
        snapshot_interval_s: most often a model is saved to disk (a restart loads the last
            snapshot and re-learns the rows joined after it, so this bounds restart work,
            not durability).
        max_body_bytes: largest request body accepted (413 above).
        key_cache_s: how long a verified key is trusted without re-hashing (revocation delay).
        clock: the time source (seconds since the epoch); tests move it.
        synchronous: SQLite ``FULL`` (durable acknowledgements) or ``NORMAL``.
        role: ``all`` — one process serves and learns; ``api`` — a replica: it serves, learns
            nothing, and follows the learner's snapshots and other processes' admin changes
            through the store (every ``follow_interval_s``); ``learner`` — serves too, and
            saves a snapshot at every hand-over (``publish_interval_s``) so replicas pick it up
            within about ``publish_interval_s + follow_interval_s``. Run one learner (or one
            ``all``) per store.
        follow_interval_s: how often a replica looks for a new snapshot or admin change.
        commit_linger_s: how long the store's writer waits for more writes before it commits
            a batch, after a batch of several (0: at once) — fewer commits, less CPU per
            write, that much latency. At 1 ms under load (20–32 connections) a commit carried
            ~15 writes instead of ~3, and the writer's CPU per rank+reward pair fell from
            ~254 to ~110 µs.
    """

    store: str
    featurizer: Any
    encoder: Any = None
    snapshot_dir: Path | None = None
    learn_interval_s: float | None = 0.05
    publish_interval_s: float = 0.5
    snapshot_interval_s: float = 10.0
    max_body_bytes: int = 64 * 1024
    key_cache_s: float = 60.0
    clock: Callable[[], float] = time.time
    synchronous: str = "FULL"
    role: str = "all"
    follow_interval_s: float = 0.2
    commit_linger_s: float = 0.001

    def __post_init__(self) -> None:
        if self.featurizer is None:
            raise ValueError("`featurizer` is required: the saved featurizer of the copy")
        if self.role not in ROLES:
            raise ValueError(f"`role` must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not self.follow_interval_s > 0:
            raise ValueError(f"`follow_interval_s` must be > 0, got {self.follow_interval_s}")
        if self.learn_interval_s is not None and not self.learn_interval_s > 0:
            raise ValueError(f"`learn_interval_s` must be > 0 or None, got {self.learn_interval_s}")
        for name in ("publish_interval_s", "snapshot_interval_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.commit_linger_s <= 0.1:
            raise ValueError(
                f"`commit_linger_s` must be in [0, 0.1] seconds, got {self.commit_linger_s}"
            )
        if self.max_body_bytes < 1024:
            raise ValueError(f"`max_body_bytes` must be >= 1024, got {self.max_body_bytes}")


MAX_MODEL_FEATURES = 4096
"""Largest feature count of a full-covariance agent (LinearTS, LinUCB): its d×d posterior is
held several times over (learner, serving copy, float32 serving covariance)."""

_FULL_COVARIANCE = ("linear_ts", "linucb", "neural_linear_ts")


def check_model_size(cfg: CampaignConfig, candidate_dim: int) -> None:
    """Refuse a campaign whose agent would not fit in memory, naming the width that would.

    Raises:
        ValueError: a full-covariance agent over interaction features of more than
            :data:`MAX_MODEL_FEATURES` features.
    """
    if cfg.agent not in _FULL_COVARIANCE:
        return
    if cfg.agent_params.get("features", "interaction") != "interaction":
        return
    d = (cfg.context_width + 1) * (candidate_dim + 1)
    if d > MAX_MODEL_FEATURES:
        widest = MAX_MODEL_FEATURES // (candidate_dim + 1) - 1
        gib = 8 * d * d / 2**30
        raise ValueError(
            f"`context_width` {cfg.context_width} makes {cfg.agent} a {d:,}-feature model (a "
            f"{gib:,.1f} GiB covariance); the widest that fits {MAX_MODEL_FEATURES:,} features "
            f"is {widest} — send fewer context features, or agent_params "
            '{"features": "candidate"}'
        )


def new_policy(cfg: CampaignConfig) -> Policy:
    """A fresh agent of the campaign's kind, parameters and exploration floor.

    Raises:
        ValueError: an unknown kind, an agent that cannot learn from rows, bad parameters.
    """
    klass = POLICIES.get(cfg.agent)
    if klass is None:
        raise ValueError(f"`agent` must be one of {sorted(POLICIES)}, got {cfg.agent!r}")
    if not klass.learns_from_rows:
        raise ValueError(
            f"`agent` {cfg.agent!r} cannot learn from logged rows: {klass.how_it_learns}"
        )
    try:
        return klass(**cfg.agent_params, exploration_floor=cfg.exploration_floor)
    except TypeError as e:
        raise ValueError(f"`agent_params` do not fit {cfg.agent!r}: {e}") from None


@dataclass
class ModelRuntime:
    """One model (agent) in memory, shared by the campaigns that name it. ``policy`` is what
    the serving path decides with, replaced whole (a reference swap) when the learner
    publishes; ``learner_policy`` is the learner's own copy."""

    model_id: str
    cfg: CampaignConfig
    """The agent settings (kind, params, width, floor) every campaign of the model shares."""
    variants: VariantStore
    policy: Policy
    learner_policy: Policy
    snapshot_version: int = 0
    through_join: int = 0
    """The last join the learner's copy holds (rows joined later are not in it)."""
    saved_join: int = 0
    """The last join the newest snapshot on disk holds."""
    published_at: float = 0.0
    """``time.monotonic()`` of the last hand-over to the serving path."""
    saved_at: float = 0.0
    """``time.monotonic()`` of the last snapshot save."""
    rows_since_save: int = 0
    unpublished: list[float] = field(default_factory=list)
    """Reward times of rows the learner holds and the serving copy does not yet."""
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class CampaignRuntime:
    """One campaign in memory: its config, its active variants, and its model."""

    cfg: CampaignConfig
    active: list[str]
    model: ModelRuntime

    @property
    def policy(self) -> Policy:
        return self.model.policy

    @property
    def variants(self) -> VariantStore:
        return self.model.variants

    @property
    def snapshot_version(self) -> int:
        return self.model.snapshot_version


_SHARED = ("agent", "agent_params", "context_width", "exploration_floor")
_ROLLBACK_FIELDS = ("candidates", "control", "explore_share")
"""What a rollback restores of the config besides the active set (the serving settings stay)."""
_AGENT_FIELDS = ("agent", "agent_params")
"""Restored too when the snapshot rolled back to holds another agent (a promoted setting)."""


class Service:
    """Campaigns, ranking, rewards and admin changes over a :class:`Store`."""

    def __init__(self, config: ServiceConfig, store: Store | None = None) -> None:
        self.config = config
        self.clock = config.clock
        self.store: Store = store or open_store(config.store, synchronous=config.synchronous)
        self.store.linger_s = config.commit_linger_s
        self.snapshot_dir = (config.snapshot_dir or default_snapshot_dir(config.store)).resolve()
        self.catalog_rev = self.store.get_meta(CATALOG_REV)
        self.metrics = Metrics()
        self.runtimes: dict[str, CampaignRuntime] = {}
        self.models: dict[str, ModelRuntime] = {}
        self._admin_lock = threading.Lock()
        self._encoder = config.encoder
        self._key_cache: dict[str, tuple[str, float]] = {}
        # Event ids: 16 random hex digits drawn once per process, then a counter — unique
        # across restarts and replicas without a system call per request (os.urandom, which
        # uuid4 calls, cost ~160 µs a call on this machine's VM).
        self._eid_prefix = secrets.token_hex(8)
        self._eid_counter = itertools.count()
        from copyloop.serve.learner import Follower, Learner

        self.learner = Learner(self)
        self.follower = Follower(self)
        cfgs = self.store.campaigns()
        records = self.store.variants()
        for cfg in cfgs:
            if cfg.model not in self.models:
                mine = [c.campaign_id for c in cfgs if c.model == cfg.model]
                recs = [r for r in records if r.campaign_id in mine]
                self.models[cfg.model] = self._load_model(cfg, recs)
            active = [
                r.variant_id for r in records if r.campaign_id == cfg.campaign_id and r.active
            ]
            self.runtimes[cfg.campaign_id] = CampaignRuntime(cfg, active, self.models[cfg.model])
        for m in self.models.values():  # as every hand-over does (learner.prepared)
            m.policy.project(self.candidate_lists(m), m.variants)

    def candidate_lists(self, m: ModelRuntime) -> list[list[str]]:
        """The active variant list of every campaign on model ``m`` (what a request without
        ``candidate_ids`` ranks)."""
        return [
            list(rt.active) for rt in list(self.runtimes.values()) if rt.model is m and rt.active
        ]

    def start(self) -> None:
        """Start the background threads the role needs: the learner (``all``, ``learner``)
        and the follower (``api``, ``learner``) — after the agents' compiled kernels are
        loaded, so no request pays their start (~1 s)."""
        from copyloop.agents.request import kernels

        kernels()
        if self.config.role != "api":
            self.learner.start()
        if self.config.role != "all":
            self.follower.start()

    def close(self) -> None:
        self.follower.stop()
        self.learner.stop()
        try:
            if self.config.role != "api":  # a replica never writes snapshots
                self.learner.save_all()
        finally:
            self.store.close()

    def sync_catalog(self) -> int:
        """Bring campaigns, variants and settings in memory up to the store, after another
        process (a replica's admin call) changed them; returns the campaigns added."""
        with self._admin_lock:
            rev = self.store.get_meta(CATALOG_REV)
            cfgs = self.store.campaigns()
            records = self.store.variants()
            of: dict[str, list[VariantRecord]] = {}
            for r in records:
                of.setdefault(r.campaign_id, []).append(r)
            added = 0
            for cfg in cfgs:
                recs = of.get(cfg.campaign_id, [])
                m = self.models.get(cfg.model)
                if m is None:
                    mine = {c.campaign_id for c in cfgs if c.model == cfg.model}
                    m = self._load_model(cfg, [r for r in records if r.campaign_id in mine])
                    self.models[cfg.model] = m
                else:
                    new = [r for r in recs if r.variant_id not in m.variants]
                    if new:
                        self._add_to_model(m, cfg.campaign_id, new)
                active = [r.variant_id for r in recs if r.active]
                rt = self.runtimes.get(cfg.campaign_id)
                if rt is None:
                    self.runtimes[cfg.campaign_id] = CampaignRuntime(cfg, active, m)
                    added += 1
                    continue
                rt.active = active
                if cfg.exploration_floor != m.cfg.exploration_floor:
                    with m.lock:
                        for p in (m.policy, m.learner_policy):
                            p.exploration_floor = cfg.exploration_floor
                        m.cfg = replace(m.cfg, exploration_floor=cfg.exploration_floor)
                rt.cfg = cfg
            self.catalog_rev = rev
            return added

    def _catalog_changed(self) -> None:
        """Tell other processes that the campaigns, variants or settings changed."""
        rev = secrets.token_bytes(8)
        self.store.set_meta(CATALOG_REV, rev).result()
        self.catalog_rev = rev

    # ---- campaigns and models in memory -------------------------------------------------------
    def _variant_store(self, records: Sequence[VariantRecord]) -> VariantStore:
        """The variants' features: read from the store's cache where this featurizer already
        computed them (the text features of a catalog take about a second), else computed and
        cached."""
        feat = self.config.featurizer
        if not records:
            return VariantStore([], np.zeros((0, feat.dim), np.float32), [], feat)
        cache = self._feature_cache()
        uncached = [r for r in records if r.variant_id not in cache]
        if uncached:
            emb = np.stack([np.asarray(r.embedding, np.float32) for r in uncached])
            new = feat.transform(emb, [r.text for r in uncached])
            cache.update({r.variant_id: row for r, row in zip(uncached, new, strict=True)})
            self._save_feature_cache(cache)
        feats = np.stack([cache[r.variant_id] for r in records]).astype(np.float32)
        return VariantStore(
            [r.variant_id for r in records], feats, [r.campaign_id for r in records], feat
        )

    def _cache_key(self) -> str:
        from copyloop.serve.store import featurizer_bytes

        digest = hashlib.sha256(featurizer_bytes(self.config.featurizer)).hexdigest()[:16]
        return f"variant_features:{digest}"

    def _feature_cache(self) -> dict[str, npt.NDArray[np.float32]]:
        import io

        blob = self.store.get_meta(self._cache_key())
        if blob is None:
            return {}
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return dict(zip(z["ids"].tolist(), z["features"], strict=True))

    def _save_feature_cache(self, cache: dict[str, npt.NDArray[np.float32]]) -> None:
        import io

        buf = io.BytesIO()
        ids = list(cache)
        np.savez(buf, ids=np.array(ids), features=np.stack([cache[i] for i in ids]))
        self.store.set_meta(self._cache_key(), buf.getvalue()).result()

    def _load_model(self, cfg: CampaignConfig, records: Sequence[VariantRecord]) -> ModelRuntime:
        """A model from the store: its variants, its last snapshot (or a fresh agent), and the
        rows it learned after that snapshot, re-learned (the learner's catch-up)."""
        snaps = self.store.snapshots(cfg.model)
        if snaps:
            learner = Policy.load(snaps[-1].path)
            learner.exploration_floor = cfg.exploration_floor
        else:
            learner = new_policy(cfg)
        variants = self._variant_store(records)
        learner.attach(variants)
        m = ModelRuntime(cfg.model, cfg, variants, learner, learner)
        if snaps:
            m.snapshot_version = snaps[-1].version
            m.through_join = m.saved_join = snaps[-1].through_join
        self.learner.catch_up(m)
        from copyloop.serve.learner import prepared

        m.policy = prepared(m.learner_policy.trained_copy(), m)
        m.published_at = m.saved_at = time.monotonic()
        return m

    def _new_event_id(self) -> str:
        return f"{self._eid_prefix}-{next(self._eid_counter):x}"

    def runtime(self, campaign_id: str) -> CampaignRuntime:
        rt = self.runtimes.get(campaign_id)
        if rt is None:
            raise ServiceError(404, f"campaign {campaign_id!r} does not exist")
        return rt

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if self._encoder is None:
            from copyloop.envs.embed import default_encoder

            self._encoder = default_encoder()
        return np.asarray(self._encoder.encode(texts), np.float32)

    # ---- ranking ------------------------------------------------------------------------------
    def decide(
        self,
        campaign_id: str,
        context: Sequence[float],
        candidate_ids: Sequence[str] | None,
        excluded_ids: Sequence[str],
        event_id: str | None,
        defer_activation: bool,
        user_id: str | None = None,
    ) -> tuple[DecisionRecord, dict[str, Any] | None]:
        """One decision (not yet stored): the record, and the agent's choice in shadow mode."""
        rt = self.runtime(campaign_id)
        cfg = rt.cfg
        if len(context) != cfg.context_width:
            raise ServiceError(
                422,
                f"`context` has {len(context)} features; campaign {campaign_id!r} declares "
                f"{cfg.context_width}",
            )
        active = set(rt.active)
        if candidate_ids is None:
            ids = list(rt.active)
        else:
            bad = [c for c in candidate_ids if c not in active][:5]
            if bad:
                raise ServiceError(
                    422,
                    f"`candidate_ids` {bad} are not active variants of campaign {campaign_id!r}",
                )
            ids = list(candidate_ids)
        if excluded_ids:
            drop = set(excluded_ids)
            ids = [c for c in ids if c not in drop]
        if not ids:
            raise ServiceError(
                422,
                "no candidates left: the campaign has no active variants "
                "or every candidate was excluded",
            )
        eid = event_id or self._new_event_id()
        with np.errstate(over="ignore"):
            ctx = np.asarray(context, np.float32)
        if not np.isfinite(ctx).all():
            bad = np.flatnonzero(~np.isfinite(ctx))[:5].tolist()
            raise ServiceError(
                422,
                f"`context` positions {bad} are outside float32's range (|x| <= 3.4e38)",
                ("context",),
            )
        model = rt.model
        policy = model.policy  # one reference read: the whole decision uses one snapshot
        agent = None
        if cfg.mode == "logging":
            probs = np.full(len(ids), 1.0 / len(ids))
            i = pick(probs, event_key(policy._entropy, "logging", eid))
            served, probs_l, pid = ids[i], probs.tolist(), "uniform"
        else:
            try:
                choice = policy.decide(ctx, ids, event_id=eid, store=model.variants)
            except ValueError as e:
                raise ServiceError(422, str(e)) from None
            trial = (
                [c for c in cfg.candidates if c not in set(excluded_ids)]
                if cfg.explore_share > 0 and candidate_ids is None
                else []
            )
            if cfg.mode == "online" and trial:
                ids, i, probs_l = explore_mix(choice, ids, trial, cfg.explore_share, policy, eid)
                served, pid = ids[i], f"{policy.policy_id}+explore"
            elif cfg.mode == "online":
                i, served, probs_l, pid = (
                    choice.index,
                    choice.variant_id,
                    choice.probs.tolist(),
                    policy.policy_id,
                )
            else:  # shadow: the baseline (first candidate) is served, the agent's pick logged
                i, served, pid = 0, ids[0], "baseline_first"
                probs_l = [1.0] + [0.0] * (len(ids) - 1)
                agent = {"variant_id": choice.variant_id, "probabilities": choice.probs.tolist()}
        now = self.clock()
        rec = DecisionRecord(
            event_id=eid,
            ts=now,
            campaign_id=campaign_id,
            user_id=user_id,
            context=ctx,
            candidates=ids,
            action=served,
            action_index=i,
            propensity=probs_l[i],
            action_probs=probs_l,
            model_version=policy.model_version,
            policy_id=pid,
            mode=cfg.mode,
            deferred=defer_activation,
            activated=not defer_activation,
            closes_at=now + cfg.reward_wait_s,
            agent_action=None if agent is None else agent["variant_id"],
            agent_probs=None if agent is None else agent["probabilities"],
            model_id=model.model_id,
            early=cfg.aggregation == "earliest",
        )
        return rec, agent

    async def rank(self, *args: Any, **kw: Any) -> tuple[DecisionRecord, dict[str, Any] | None]:
        """Decide, then wait until the decision is durable."""
        rec, agent = self.decide(*args, **kw)
        try:
            await self.store.arecord_decision(rec)
        except sqlite3.IntegrityError:
            raise ServiceError(409, f"event id {rec.event_id!r} was already used") from None
        self.metrics.decision_child(rec.campaign_id, rec.mode).inc()
        return rec, agent

    async def reward(self, event_id: str, reward_id: str, value: float) -> RewardOutcome:
        out = await self.store.arecord_reward(event_id, reward_id, value, self.clock())
        if out.status == "unknown_event":
            raise ServiceError(404, f"event {event_id!r} has no decision")
        if out.status == "conflict":
            raise ServiceError(
                409,
                f"reward {reward_id!r} of event {event_id!r} was stored with another value — "
                "give each distinct reward its own reward_id",
            )
        if out.status == "duplicate":
            self.metrics.duplicate_rewards.inc()
        else:
            self.metrics.rewards.inc()
            if out.late:
                self.metrics.late_rewards.inc()
        return out

    async def activate(self, event_id: str) -> None:
        out = await asyncio.wrap_future(self.store.activate(event_id))
        if out == "unknown_event":
            raise ServiceError(404, f"event {event_id!r} has no decision")
        if out == "joined":
            raise ServiceError(409, f"event {event_id!r} was already joined; too late to activate")

    # ---- admin --------------------------------------------------------------------------------
    def _records(
        self, campaign_id: str, variants: Sequence[tuple[str | None, str]]
    ) -> list[VariantRecord]:
        texts = [t for _, t in variants]
        ids = [
            vid or f"{campaign_id}-{hashlib.sha1(t.encode()).hexdigest()[:10]}"
            for vid, t in variants
        ]
        if len(set(ids)) != len(ids):
            raise ServiceError(422, "variants repeat an id or a text — each line once")
        emb = self.encode(texts) if texts else np.zeros((0, 1), np.float32)
        pairs = enumerate(zip(ids, texts, strict=True))
        return [VariantRecord(i, campaign_id, t, emb[k]) for k, (i, t) in pairs]

    def _model_for(self, cfg: CampaignConfig) -> tuple[CampaignConfig, ModelRuntime | None]:
        """The campaign's config with its model's shared settings, and the model if it exists
        (422 when the campaign disagrees with the model's other campaigns)."""
        m = self.models.get(cfg.model)
        if m is None:
            if "seed" not in cfg.agent_params:  # a decision is replayable from its snapshot
                cfg = replace(cfg, agent_params={**cfg.agent_params, "seed": secrets.randbits(62)})
            return cfg, None
        params = dict(cfg.agent_params)
        params.setdefault("seed", m.cfg.agent_params.get("seed"))
        cfg = replace(cfg, agent_params=params)
        differ = [k for k in _SHARED if getattr(cfg, k) != getattr(m.cfg, k)]
        if differ:
            want = ", ".join(f"{k}={getattr(m.cfg, k)!r}" for k in differ)
            raise ServiceError(
                422,
                f"model {cfg.model!r} is shared: its campaigns use {want} — give the same "
                "settings, or another `model_id`",
            )
        return cfg, m

    def create_campaign(
        self, cfg: CampaignConfig, variants: Sequence[tuple[str | None, str]], actor: str
    ) -> CampaignRuntime:
        with self._admin_lock:
            if cfg.campaign_id in self.runtimes:
                raise ServiceError(409, f"campaign {cfg.campaign_id!r} exists — PATCH it instead")
            cfg, model = self._model_for(cfg)
            try:
                check_model_size(cfg, self.config.featurizer.dim)
                new_policy(cfg)
            except ValueError as e:
                raise ServiceError(422, str(e)) from None
            records = self._records(cfg.campaign_id, variants)
            if cfg.control and cfg.control not in {r.variant_id for r in records}:
                raise ServiceError(422, f"the control {cfg.control!r} is not one of the variants")
            if cfg.candidates:
                raise ServiceError(
                    422, "`candidates` are added after creation (POST .../candidates)"
                )
            try:
                self.store.create_campaign(cfg, records, actor).result()
            except sqlite3.IntegrityError as e:
                raise ServiceError(409, f"a variant id already exists ({e})") from None
            if model is None:
                model = self._load_model(cfg, records)
                self.models[cfg.model] = model
            elif records:
                self._add_to_model(model, cfg.campaign_id, records)
            rt = CampaignRuntime(cfg, [r.variant_id for r in records], model)
            self.runtimes[cfg.campaign_id] = rt
            self._set_variants(rt, cfg, rt.active, actor, "variants.initial", {})
            return rt

    def update_campaign(
        self, campaign_id: str, changes: dict[str, Any], actor: str
    ) -> CampaignConfig:
        with self._admin_lock:
            rt = self.runtime(campaign_id)
            try:
                cfg = replace(rt.cfg, **changes)
            except ValueError as e:
                raise ServiceError(422, str(e)) from None
            if cfg.control and cfg.control not in rt.active:
                raise ServiceError(
                    422, f"the control {cfg.control!r} is not an active variant of {campaign_id!r}"
                )
            m = rt.model
            sharing = [c for c, r in self.runtimes.items() if r.model is m]
            if cfg.exploration_floor != m.cfg.exploration_floor and len(sharing) > 1:
                raise ServiceError(
                    409,
                    f"`exploration_floor` belongs to model {m.model_id!r}, which campaigns "
                    f"{sharing[:5]} share — they keep one floor",
                )
            self._set_variants(rt, cfg, rt.active, actor, "campaign.update", {"changes": changes})
            with m.lock:
                for p in (m.policy, m.learner_policy):
                    p.exploration_floor = cfg.exploration_floor
                m.cfg = replace(m.cfg, exploration_floor=cfg.exploration_floor)
            return cfg

    @staticmethod
    def _add_to_model(m: ModelRuntime, campaign_id: str, records: Sequence[VariantRecord]) -> None:
        m.variants.add(
            [r.variant_id for r in records],
            [r.text for r in records],
            campaign_id,
            embeddings=np.stack([np.asarray(r.embedding) for r in records]),
        )

    def _set_variants(
        self,
        rt: CampaignRuntime,
        cfg: CampaignConfig,
        active: Sequence[str],
        actor: str,
        action: str,
        detail: dict[str, Any],
        new: Sequence[VariantRecord] = (),
    ) -> int:
        """Make ``active`` and ``cfg`` the campaign's, durably and as a new variant-set version
        (one store transaction), then in memory; returns the version."""
        try:
            version = self.store.set_variant_set(
                cfg,
                active,
                actor,
                action,
                detail,
                new_variants=new,
                snapshot_version=rt.model.snapshot_version,
            ).result()
        except sqlite3.IntegrityError:
            raise ServiceError(409, "a variant with that id (or text) already exists") from None
        if new:
            self._add_to_model(rt.model, cfg.campaign_id, new)
        rt.active, rt.cfg = list(active), cfg
        self._catalog_changed()
        return version

    def _new_records(
        self, rt: CampaignRuntime, campaign_id: str, variants: Sequence[tuple[str | None, str]]
    ) -> list[VariantRecord]:
        records = self._records(campaign_id, variants)
        known = [r.variant_id for r in records if r.variant_id in rt.model.variants]
        if known:
            raise ServiceError(409, f"variant id(s) {known[:5]} already exist")
        return records

    def add_variants(
        self, campaign_id: str, variants: Sequence[tuple[str | None, str]], actor: str
    ) -> list[str]:
        with self._admin_lock:
            rt = self.runtime(campaign_id)
            records = self._new_records(rt, campaign_id, variants)
            ids = [r.variant_id for r in records]
            self._set_variants(
                rt, rt.cfg, rt.active + ids, actor, "variants.add", {"variant_ids": ids}, records
            )
            return ids

    def add_candidates(
        self, campaign_id: str, variants: Sequence[tuple[str | None, str]], actor: str
    ) -> list[str]:
        """New copy on trial: stored inactive and served only through the exploration slice
        (``explore_share`` of the requests) until promoted or rejected."""
        with self._admin_lock:
            rt = self.runtime(campaign_id)
            records = [
                replace(r, active=False) for r in self._new_records(rt, campaign_id, variants)
            ]
            ids = [r.variant_id for r in records]
            cfg = replace(rt.cfg, candidates=[*rt.cfg.candidates, *ids])
            self._set_variants(
                rt, cfg, rt.active, actor, "candidates.add", {"variant_ids": ids}, records
            )
            return ids

    def settle_candidate(
        self, campaign_id: str, variant_id: str, promote: bool, actor: str, evidence: dict[str, Any]
    ) -> int:
        """Promote a candidate into the active set, or reject it (it stays stored, never
        served again); ``evidence`` (the gate's numbers) goes into the audit log. Returns the
        new variant-set version."""
        with self._admin_lock:
            rt = self.runtime(campaign_id)
            if variant_id not in rt.cfg.candidates:
                raise ServiceError(
                    404, f"{variant_id!r} is not a candidate of campaign {campaign_id!r}"
                )
            rest = [c for c in rt.cfg.candidates if c != variant_id]
            cfg = replace(rt.cfg, candidates=rest)
            active = [*rt.active, variant_id] if promote else rt.active
            action = "candidates.promote" if promote else "candidates.reject"
            detail = {"variant": variant_id, "evidence": evidence}
            return self._set_variants(rt, cfg, active, actor, action, detail)

    def retire_variant(self, campaign_id: str, variant_id: str, actor: str) -> None:
        with self._admin_lock:
            rt = self.runtime(campaign_id)
            if variant_id not in rt.active:
                raise ServiceError(
                    404, f"variant {variant_id!r} is not in campaign {campaign_id!r}"
                )
            if variant_id == rt.cfg.control:
                raise ServiceError(
                    409,
                    f"{variant_id!r} is the campaign's protected control — name another "
                    "control first (PATCH control)",
                )
            active = [v for v in rt.active if v != variant_id]
            self._set_variants(
                rt, rt.cfg, active, actor, "variants.retire", {"variant": variant_id}
            )

    def rollback(self, campaign_id: str, version: int, actor: str) -> int:
        """Restore variant-set ``version`` (its active variants, candidates, control and share)
        and the model snapshot that was serving when it was recorded, in one step: both are
        recorded as new versions (nothing is deleted). Only the learning process (role
        ``all`` or ``learner``) holds the model to roll back. Returns the new set version."""
        if self.config.role == "api":
            raise ServiceError(
                409, "rollback changes the model: send it to the learner process (role learner)"
            )
        with self._admin_lock:
            rt = self.runtime(campaign_id)
            sets = {s.version: s for s in self.store.variant_sets(campaign_id)}
            if version not in sets:
                raise ServiceError(
                    404,
                    f"campaign {campaign_id!r} has no variant set {version} "
                    f"(versions {min(sets, default=0)}..{max(sets, default=0)})",
                )
            old = sets[version]
            snap = None
            if old.snapshot_version:
                snap = self.learner.rollback(rt.model, old.snapshot_version)
            restore = {k: getattr(old.config, k) for k in _ROLLBACK_FIELDS}
            detail = {"to_variant_set": version, "to_snapshot": old.snapshot_version}
            if snap is not None:
                detail["new_snapshot"] = snap
            agent = {k: getattr(old.config, k) for k in _AGENT_FIELDS}
            m = rt.model
            if agent != {k: getattr(m.cfg, k) for k in _AGENT_FIELDS}:
                # the earlier agent setting comes back: from the snapshot restored, or — a set
                # recorded before any snapshot — as a fresh agent of that setting that learns
                # every row the model has learned; the model's settings follow, for every
                # campaign that shares the model
                if snap is None:
                    cfg_old = replace(m.cfg, **agent)
                    snap = self.learner.adopt(m, new_policy(cfg_old), cfg_old)
                    detail["new_snapshot"] = snap
                with m.lock:
                    m.cfg = replace(m.cfg, **agent)
                for r in self.runtimes.values():
                    if r.model is m and r is not rt:
                        self._set_variants(
                            r, replace(r.cfg, **agent), r.active, actor, "policy.rollback", detail
                        )
                restore |= agent
            cfg = replace(rt.cfg, **restore)
            return self._set_variants(rt, cfg, old.active, actor, "rollback", detail)

    # ---- new learning settings ---------------------------------------------------------------
    def _learning_process(self, what: str) -> None:
        if self.config.role == "api":
            raise ServiceError(
                409,
                f"{what} needs the model's learner: send it to the learner process (role learner)",
            )

    def model_log(self, m: ModelRuntime, path: Path, now: float | None = None) -> Any:
        """The joined log of every campaign that shares model ``m``, written to ``path``
        (a DecisionLog with its variants table) and read back; None when it has no rows."""
        from copyloop.agents.offline import read_log
        from copyloop.contract import read_variants_for

        mine = [c for c, r in self.runtimes.items() if r.model is m]
        if self.store.export_log(path, now=now, campaign_ids=mine).rows == 0:
            return None
        return read_log(path, read_variants_for(path))

    def judge_policies(
        self, campaign_id: str, candidates: Sequence[Any], settings: Any, now: float | None = None
    ) -> list[Any]:
        """Each candidate agent setting's verdict against ``campaign_id``'s model as it serves,
        on the joined log of every campaign sharing that model
        (:func:`copyloop.serve.policies.judge_policies`). Runs in the learning process."""
        import tempfile

        from copyloop.serve.policies import hold_verdict, judge_policies

        self._learning_process("judging agent settings")
        m = self.runtime(campaign_id).model
        for c in candidates:
            try:
                check_model_size(
                    replace(m.cfg, agent=c.agent, agent_params=dict(c.params)),
                    self.config.featurizer.dim,
                )
            except ValueError as e:
                raise ServiceError(422, f"policy {c.label!r}: {e}") from None
        with tempfile.TemporaryDirectory(prefix="copyloop-policies-") as d:
            log = self.model_log(m, Path(d) / "log.parquet", now)
            if log is None:
                return [
                    hold_verdict(m.model_id, c, 0, "no joined decisions yet") for c in candidates
                ]
            return judge_policies(
                log, m.variants, candidates, settings, model_id=m.model_id,
                exploration_floor=m.cfg.exploration_floor,
            )  # fmt: skip

    def adopt_policy(
        self,
        campaign_id: str,
        agent: str,
        params: dict[str, Any],
        evidence: dict[str, Any],
        actor: str,
    ) -> tuple[int, list[int]]:
        """Make ``agent`` with ``params`` the learning and serving agent of ``campaign_id``'s
        model (shared by its other campaigns): a fresh agent learns every row the model has
        learned, in order, and replaces it; the change is recorded — with ``evidence``, the
        gate's numbers — as a new variant-set version of each campaign of the model, and the
        agent as a new snapshot. :meth:`rollback` to an earlier version restores the earlier
        agent. Returns ``(snapshot version, variant-set versions)``."""
        self._learning_process("changing the agent")
        with self._admin_lock:
            rt = self.runtime(campaign_id)
            m = rt.model
            try:
                cfg = replace(m.cfg, agent=agent, agent_params=dict(params))
                check_model_size(cfg, self.config.featurizer.dim)
                policy = new_policy(cfg)
            except ValueError as e:
                raise ServiceError(422, str(e)) from None
            before = {"agent": m.cfg.agent, "agent_params": dict(m.cfg.agent_params)}
            snap = self.learner.adopt(m, policy, cfg)
            detail = {"from": before, "to": {"agent": agent, "agent_params": dict(params)},
                      "snapshot": snap, "evidence": evidence}  # fmt: skip
            sets = [
                self._set_variants(
                    r,
                    replace(r.cfg, agent=agent, agent_params=dict(params)),
                    r.active,
                    actor,
                    "policy.promote",
                    detail,
                )
                for r in self.runtimes.values()
                if r.model is m
            ]
            return snap, sets

    # ---- keys ---------------------------------------------------------------------------------
    def cached_scope(self, key: str) -> str | None:
        """The scope of a key verified within ``key_cache_s``, else None (no hashing)."""
        hit = self._key_cache.get(hashlib.sha256(key.encode()).hexdigest())
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def scope_of(self, key: str) -> str | None:
        """The scope of an API key, or None for a wrong one (see :func:`store.verify_secret`)."""
        from copyloop.serve.store import split_key, verify_secret

        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cache = self._key_cache
        hit = cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        parts = split_key(key)
        if parts is None:
            return None
        rec = self.store.key(parts[0])
        if rec is None or rec.revoked or not verify_secret(rec, parts[1]):
            return None
        cache[digest] = (rec.scope, now + self.config.key_cache_s)
        return rec.scope
