"""The service's storage: a small :class:`Store` protocol and its SQLite (WAL) implementation.

Tables are shaped like the DecisionLog contract plus rewards, campaigns, variants, keys,
snapshots and an append-only audit log. Every write goes through one writer thread that drains
a queue and commits a batch per transaction (group commit, ``synchronous=FULL``): a caller's
future resolves only after its batch is durable, so a response released on it never
acknowledges a write a crash could lose, and one fsync (~3.5 ms here) is shared by the batch.

Example:
    >>> store = SQLiteStore("service.db")  # doctest: +SKIP
    >>> store.record_decision(rec).result()  # durable when this returns
    >>> store.export_log("logs.parquet")
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import queue
import random
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

_T = TypeVar("_T")

Mode = Literal["online", "shadow", "logging"]
Aggregation = Literal["earliest", "sum", "max"]
Scope = Literal["client", "admin"]
MODES: tuple[str, ...] = ("online", "shadow", "logging")
AGGREGATIONS: tuple[str, ...] = ("earliest", "sum", "max")
SCOPES: tuple[str, ...] = ("client", "admin")
KEY_PREFIX = "cl"
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
"""scrypt cost of a stored key hash (~16 MiB, tens of ms; verified keys are cached by the app)."""


# ---- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CampaignConfig:
    """A campaign: its agent, mode and reward join.

    Args:
        campaign_id: the campaign's id.
        context_width: features in every request's context.
        agent: agent kind, a key of :data:`copyloop.agents.POLICIES` (``linear_ts``, ...).
        agent_params: constructor arguments of the agent (``seed`` is filled at creation).
        mode: ``online`` (the agent serves), ``shadow`` (the first candidate is served, the
            agent's choice logged), ``logging`` (uniform random, nothing learned).
        exploration_floor: minimum probability of every candidate in online mode.
        reward_wait_s: the join window after a decision; rewards after it are late.
        default_reward: the reward of a decision whose window closes without one.
        aggregation: how several rewards of one event combine (``earliest``: the first one
            is final at once, so it is learned without waiting for the window).
        model_id: the agent this campaign's decisions come from and teach (default: its own).
            Campaigns that name the same model share one agent — it learns from all of them,
            as the env's agents learn across a market's campaigns — and must agree on
            ``agent``, ``agent_params``, ``context_width`` and ``exploration_floor``.
        explore_share: share of requests served from the exploration slice: uniformly among
            ``candidates`` (new copy on trial), so every candidate gets at least
            ``explore_share / len(candidates)`` of the traffic; the rest is the agent's
            choice among the active variants. Logged propensities are the mixture's.
        candidates: variant ids on trial (not active): served only through the slice until
            promoted into the active set or rejected.
        control: a protected variant id: it stays active (it cannot be retired or rejected),
            the baseline a campaign always keeps.
    """

    campaign_id: str
    context_width: int
    agent: str = "linear_ts"
    agent_params: dict[str, Any] = field(default_factory=dict)
    mode: Mode = "online"
    exploration_floor: float = 0.0
    reward_wait_s: float = 60.0
    default_reward: float = 0.0
    aggregation: Aggregation = "earliest"
    model_id: str = ""
    explore_share: float = 0.0
    candidates: list[str] = field(default_factory=list)
    control: str = ""

    @property
    def model(self) -> str:
        """The model (agent) id this campaign uses."""
        return self.model_id or self.campaign_id

    def __post_init__(self) -> None:
        if not self.campaign_id:
            raise ValueError("`campaign_id` must be a non-empty string")
        if self.context_width < 1:
            raise ValueError(f"`context_width` must be >= 1, got {self.context_width}")
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"`aggregation` must be one of {AGGREGATIONS}, got {self.aggregation!r}"
            )
        if not 0.0 <= self.exploration_floor < 1.0:
            raise ValueError(f"`exploration_floor` must be in [0, 1), got {self.exploration_floor}")
        if not self.reward_wait_s > 0 or not np.isfinite(self.reward_wait_s):
            raise ValueError(f"`reward_wait_s` must be > 0 and finite, got {self.reward_wait_s}")
        if not np.isfinite(self.default_reward):
            raise ValueError(f"`default_reward` must be finite, got {self.default_reward}")
        if not 0.0 <= self.explore_share < 1.0:
            raise ValueError(f"`explore_share` must be in [0, 1), got {self.explore_share}")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError("`candidates` repeat a variant id — list each once")
        if self.control and self.control in self.candidates:
            raise ValueError(f"the control {self.control!r} cannot also be a candidate")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CampaignConfig:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class VariantRecord:
    """A line of copy of a campaign; ``embedding`` is its MiniLM embedding (featurized later)."""

    variant_id: str
    campaign_id: str
    text: str
    embedding: npt.NDArray[np.float32] | None = None
    active: bool = True


@dataclass(frozen=True)
class DecisionRecord:
    """One decision row (the DecisionLog contract's columns, plus the service's own).

    ``agent_action`` / ``agent_probs`` hold the agent's choice in shadow mode (the served
    action is the baseline there). ``closes_at`` is when the reward window ends.
    """

    event_id: str
    ts: float
    campaign_id: str
    context: npt.NDArray[np.float32]
    candidates: list[str]
    action: str
    action_index: int
    propensity: float
    action_probs: list[float]
    model_version: str
    policy_id: str
    mode: str
    deferred: bool
    closes_at: float
    user_id: str | None = None
    agent_action: str | None = None
    agent_probs: list[float] | None = None
    activated: bool = True
    model_id: str = ""
    early: bool = False
    """Settled by its first reward (the campaign's ``earliest`` aggregation when decided)."""


@dataclass(frozen=True)
class RewardOutcome:
    """What a posted reward did: stored (or a duplicate of a stored one), and whether late."""

    status: Literal["accepted", "duplicate", "conflict", "unknown_event"]
    late: bool = False


@dataclass(frozen=True)
class JoinedRow:
    """A decision whose reward is settled: the value, where it came from, and if it taught."""

    event_id: str
    reward: float
    source: Literal["reward", "default", "none"]
    learned: bool


@dataclass(frozen=True)
class SnapshotRecord:
    """A persisted snapshot of a model: it holds every learned row joined up to ``through_join``
    (the store's join sequence), so a restart loads it and re-learns only the rows after."""

    model_id: str
    version: int
    model_version: str
    created: float
    path: str
    rows_learned: int
    through_join: int = 0


@dataclass(frozen=True)
class VariantSetRecord:
    """One version of a campaign's variant set: the active variants and the config (with its
    candidates and control) after a change, who made it and why, and the model's snapshot
    version at that moment (what a rollback to this version restores)."""

    campaign_id: str
    version: int
    ts: float
    actor: str
    action: str
    active: list[str]
    config: CampaignConfig
    snapshot_version: int | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TimelineRow:
    """Decisions of one served variant in one time bucket: how many, how many joined, and the
    sum of their joined rewards (joined / reward_sum: the served CTR for clicks)."""

    bucket: float
    variant_id: str
    decisions: int
    joined: int
    reward_sum: float


@dataclass(frozen=True)
class LearnedRow:
    """A decision the learner already taught, with its joined reward (for catch-up)."""

    decision: DecisionRecord
    reward: float
    join_seq: int


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    salt: bytes
    hash: bytes
    scope: str
    revoked: bool


@dataclass
class GroupCommitStats:
    """The writer's counters: transactions, operations, how many operations each
    transaction carried (``batch_sizes[n]`` = transactions of ``n`` operations), and batches
    rerun after a transient failure (a PostgreSQL deadlock or serialisation failure), and
    writer connections replaced after the connection itself failed."""

    commits: int = 0
    ops: int = 0
    retries: int = 0
    reconnects: int = 0
    commit_seconds: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch(self) -> float:
        return self.ops / self.commits if self.commits else 0.0


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    rows: int
    default_rewards: int
    excluded_open: int
    excluded_not_activated: int


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS too (Linux ``prctl``; no-op elsewhere), so
    ``top -H`` and ``/proc/<pid>/task/*/comm`` tell the service's threads apart."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # no libc symbol: a name is not worth failing for
        pass


# ---- keys ---------------------------------------------------------------------------------------
def hash_secret(secret: str, salt: bytes) -> bytes:
    """The salted scrypt hash of a key's secret (what is stored)."""
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def split_key(key: str) -> tuple[str, str] | None:
    """``cl_<id>_<secret>`` -> (id, secret); None if it is not shaped like a key."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def verify_secret(record: KeyRecord, secret: str) -> bool:
    """Constant-time comparison of ``secret``'s hash with the stored one."""
    return hmac.compare_digest(hash_secret(secret, record.salt), record.hash)


# ---- the interface ------------------------------------------------------------------------------
class Store(Protocol):
    """What the service needs from storage. Writes return futures that resolve once durable
    (the ``a``-prefixed twins: coroutines, for callers on an event loop)."""

    linger_s: float

    def close(self) -> None: ...

    def record_decision(self, rec: DecisionRecord) -> Future[None]: ...

    async def arecord_decision(self, rec: DecisionRecord) -> None: ...

    def record_reward(
        self, event_id: str, reward_id: str, value: float, received: float
    ) -> Future[RewardOutcome]: ...

    async def arecord_reward(
        self, event_id: str, reward_id: str, value: float, received: float
    ) -> RewardOutcome: ...

    def activate(self, event_id: str) -> Future[Literal["ok", "unknown_event", "joined"]]: ...

    def create_campaign(
        self, cfg: CampaignConfig, variants: Sequence[VariantRecord], actor: str
    ) -> Future[None]: ...

    def update_campaign(self, cfg: CampaignConfig, actor: str) -> Future[None]: ...

    def add_variants(self, variants: Sequence[VariantRecord], actor: str) -> Future[None]: ...

    def retire_variant(self, campaign_id: str, variant_id: str, actor: str) -> Future[bool]: ...

    def set_variant_set(
        self,
        cfg: CampaignConfig,
        active: Sequence[str],
        actor: str,
        action: str,
        detail: Mapping[str, Any],
        *,
        new_variants: Sequence[VariantRecord] = (),
        snapshot_version: int | None = None,
    ) -> Future[int]: ...

    def variant_sets(self, campaign_id: str) -> list[VariantSetRecord]: ...

    def timeline(self, campaign_id: str, since: float, bucket_s: float) -> list[TimelineRow]: ...

    def create_key(self, scope: str, actor: str) -> Future[str]: ...

    def get_meta(self, key: str) -> bytes | None: ...

    def set_meta(self, key: str, value: bytes) -> Future[None]: ...

    def commit_join(self, joined: Sequence[JoinedRow]) -> Future[int]: ...

    def record_snapshot(self, snapshot: SnapshotRecord) -> Future[None]: ...

    def campaigns(self) -> list[CampaignConfig]: ...

    def variants(self, campaign_id: str | None = None) -> list[VariantRecord]: ...

    def key(self, key_id: str) -> KeyRecord | None: ...

    def snapshots(self, model_id: str) -> list[SnapshotRecord]: ...

    def latest_snapshot(self, model_id: str) -> SnapshotRecord | None: ...

    def decision(self, event_id: str) -> DecisionRecord | None: ...

    def pending(self, model_id: str, now: float, limit: int) -> list[DecisionRecord]: ...

    def learned_since(self, model_id: str, through_join: int, limit: int) -> list[LearnedRow]: ...

    def rewards_for(self, event_ids: Sequence[str]) -> dict[str, list[tuple[float, float]]]: ...

    def stats(self, campaign_id: str) -> dict[str, Any]: ...

    def audit_log(self) -> list[dict[str, Any]]: ...

    def export_log(
        self,
        path: str | os.PathLike[str],
        *,
        campaign_id: str | None = None,
        now: float | None = None,
        campaign_ids: Sequence[str] | None = None,
    ) -> ExportSummary: ...

    @property
    def commit_stats(self) -> GroupCommitStats: ...


def join_reward(
    rewards: Sequence[tuple[float, float]], cfg: CampaignConfig
) -> tuple[float, Literal["reward", "default"]]:
    """One decision's reward from its in-window rewards ``(ts, value)``: the campaign's
    aggregation, or its default reward when none came. Used by the learner and the export."""
    if not rewards:
        return cfg.default_reward, "default"
    if cfg.aggregation == "earliest":
        return min(rewards)[1], "reward"
    values = [v for _, v in rewards]
    return (sum(values) if cfg.aggregation == "sum" else max(values)), "reward"


# ---- SQLite -------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS variants (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, variant_id TEXT NOT NULL UNIQUE,
    campaign_id TEXT NOT NULL REFERENCES campaigns(campaign_id), text TEXT NOT NULL,
    embedding BLOB, active INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, ts REAL NOT NULL,
    campaign_id TEXT NOT NULL, user_id TEXT, context BLOB NOT NULL, candidates TEXT NOT NULL,
    action TEXT NOT NULL, action_index INTEGER NOT NULL, propensity REAL NOT NULL,
    action_probs TEXT NOT NULL, agent_action TEXT, agent_probs TEXT,
    model_version TEXT NOT NULL, policy_id TEXT NOT NULL, mode TEXT NOT NULL,
    activated INTEGER NOT NULL, deferred INTEGER NOT NULL, closes_at REAL NOT NULL,
    has_reward INTEGER NOT NULL DEFAULT 0, joined INTEGER NOT NULL DEFAULT 0, reward REAL,
    reward_source TEXT, learned INTEGER NOT NULL DEFAULT 0, model_id TEXT NOT NULL,
    early INTEGER NOT NULL, join_seq INTEGER);
CREATE INDEX IF NOT EXISTS decisions_open ON decisions(model_id, seq) WHERE joined=0;
CREATE INDEX IF NOT EXISTS decisions_join ON decisions(model_id, join_seq) WHERE learned=1;
CREATE INDEX IF NOT EXISTS decisions_campaign ON decisions(campaign_id, seq);
CREATE TABLE IF NOT EXISTS rewards (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, reward_id TEXT NOT NULL,
    value REAL NOT NULL, ts REAL NOT NULL, late INTEGER NOT NULL,
    UNIQUE(event_id, reward_id));
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, scope TEXT NOT NULL,
    created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS snapshots (
    model_id TEXT NOT NULL, version INTEGER NOT NULL, model_version TEXT NOT NULL,
    created REAL NOT NULL, path TEXT NOT NULL, rows_learned INTEGER NOT NULL,
    through_join INTEGER NOT NULL, PRIMARY KEY (model_id, version));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS variant_sets (
    campaign_id TEXT NOT NULL, version INTEGER NOT NULL, ts REAL NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, active TEXT NOT NULL, config TEXT NOT NULL, snapshot_version INTEGER,
    detail TEXT NOT NULL, PRIMARY KEY (campaign_id, version));
CREATE TRIGGER IF NOT EXISTS variant_sets_no_update BEFORE UPDATE ON variant_sets
    BEGIN SELECT RAISE(ABORT, 'variant sets are append-only'); END;
CREATE TRIGGER IF NOT EXISTS variant_sets_no_delete BEFORE DELETE ON variant_sets
    BEGIN SELECT RAISE(ABORT, 'variant sets are append-only'); END;
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

_DECISION_COLS = (
    "event_id, ts, campaign_id, user_id, context, candidates, action, action_index, propensity, "
    "action_probs, agent_action, agent_probs, model_version, policy_id, mode, activated, "
    "deferred, closes_at, model_id, early"
)

_INSERT_DECISION = f"INSERT INTO decisions ({_DECISION_COLS}) VALUES ({','.join('?' * 20)})"

_Op = Callable[[sqlite3.Connection], Any]
_Item = tuple[_Op, "Future[Any]", tuple[str, ...]]
"""A queued write: the operation, its future, and the decision event ids it writes or locks
(empty for writes that touch no decision row)."""
_STOP = object()


class _LoopWaiter:
    """A queued write's waiter for a caller on an event loop (:meth:`SQLiteStore._asubmit`).

    The writer thread only records the outcome; after the batch, :func:`_wake` resolves every
    such waiter of one loop in a single ``call_soon_threadsafe`` hop. A
    ``concurrent.futures.Future`` wrapped by ``asyncio.wrap_future`` costs a lock and a
    condition per write and one loop wake-up per write — on the service's request path, two
    of each per rank+reward pair.
    """

    __slots__ = ("fut", "outcome")

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut
        self.outcome: tuple[bool, Any] | None = None

    def done(self) -> bool:
        return self.outcome is not None

    def set_result(self, value: Any) -> None:
        self.outcome = (True, value)

    def set_exception(self, exc: BaseException) -> None:
        self.outcome = (False, exc)


def _resolve(waiters: list[_LoopWaiter]) -> None:
    """On the waiters' loop: hand each its outcome (a cancelled caller has gone)."""
    for w in waiters:
        if w.fut.cancelled() or w.outcome is None:
            continue
        ok, value = w.outcome
        if ok:
            w.fut.set_result(value)
        else:
            w.fut.set_exception(value)


def _wake(batch: Sequence[tuple[Any, Any, Any]]) -> None:
    """Resolve the batch's :class:`_LoopWaiter` s that have an outcome, one hop per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_LoopWaiter]] = {}
    for _, w, _ in batch:
        if type(w) is _LoopWaiter and w.outcome is not None:
            by_loop.setdefault(w.fut.get_loop(), []).append(w)
    for loop, ws in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, ws)


def parse_store_url(url: str) -> Path:
    """``sqlite:///path.db`` (or a bare path) -> the database path.

    Raises:
        ValueError: another scheme (``postgresql://`` is the scale-out issue's).
    """
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
    elif "://" in url:
        raise ValueError(
            f"`store` {url!r}: only sqlite:///path.db is supported so far — give a SQLite URL"
        )
    else:
        path = url
    if not path:
        raise ValueError("`store` names no file — give sqlite:///path.db")
    return Path(path)


def open_store(url: str, *, synchronous: str = "FULL") -> Store:
    """The store at ``url``: ``sqlite:///path.db`` (or a bare path) or ``postgresql://…``.

    Raises:
        ValueError: an unknown scheme or an empty path (the message lists the valid forms).
    """
    if url.startswith(("postgresql://", "postgres://")):
        from copyloop.serve.store_pg import PostgresStore

        return PostgresStore(url)
    return SQLiteStore(parse_store_url(url), synchronous=synchronous)


class SQLiteStore:
    """The :class:`Store` on one SQLite file in WAL mode, with group commit.

    Args:
        path: the database file (created with its tables if absent).
        max_batch: most operations one transaction carries.
        synchronous: ``FULL`` (durable on power loss: the acknowledgement's promise) or
            ``NORMAL`` (survives a process crash only; for benchmarks of the difference).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_batch: int = 512, synchronous: str = "FULL"
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"`synchronous` must be FULL or NORMAL, got {synchronous!r}")
        if max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1, got {max_batch}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._start(max_batch)

    _BEGIN = "BEGIN IMMEDIATE"
    """How a write transaction starts (SQLite takes the write lock at once)."""
    _LOCK = ""
    """Appended to a read of the decision a write depends on (row lock where there are rows
    locks: PostgreSQL's ``FOR UPDATE``; SQLite's single writer serialises anyway)."""
    _BUCKET = "CAST(ts / ? AS INTEGER)"
    """A time bucket's index (truncation toward zero; ts > 0)."""
    _RETRIES = 5
    """Times a batch is rerun after a transient failure (:meth:`_transient`)."""

    def _transient(self, e: BaseException) -> bool:
        """Whether rerunning the whole batch may succeed (a deadlock between the row locks of
        two processes' batches; SQLite has one writer, so never)."""
        return False

    linger_s: float = 0.0
    """How long the writer waits for more writes after a batch's first before it commits
    (0: commit what is queued at once). Each commit costs ~100 µs of CPU here (BEGIN, COMMIT,
    the WAL's fsync) whatever it carries; a short linger packs more writes into it, for that
    much added latency. Only after a batch of two or more: a lone writer (one request at a
    time) is never kept waiting."""

    def _start(self, max_batch: int) -> None:
        """The state every backend shares: tables, join watermark, the writer thread."""
        self.max_batch = max_batch
        self._last_batch = 0  # lingering pays only when writes come together
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._stats = GroupCommitStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        conn = self._connect()
        self._create_tables(conn)
        (self._join_seq,) = conn.execute(
            "SELECT coalesce(max(join_seq), 0) FROM decisions"
        ).fetchone()
        self._writer_conn = conn
        self._thread = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._thread.start()

    def _create_tables(self, conn: Any) -> None:
        conn.executescript(_SCHEMA)

    # ---- connections ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("the store is closed")
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Finish the queued writes, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):  # a connection that already failed may not close
            self._writer_conn.close()
        with self._readers_lock:
            for c in self._readers:
                c.close()
            self._readers.clear()

    # ---- group commit ---------------------------------------------------------------------------
    def _submit(self, op: _Op, keys: Sequence[str] = ()) -> Future[Any]:
        fut: Future[Any] = Future()
        if self._closed:
            fut.set_exception(RuntimeError("the store is closed"))
            return fut
        self._queue.put((op, fut, tuple(keys)))
        return fut

    async def _asubmit(self, op: _Op, keys: Sequence[str] = ()) -> Any:
        """:meth:`_submit` for a caller on an event loop: the write's result, once durable."""
        if self._closed:
            raise RuntimeError("the store is closed")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put((op, _LoopWaiter(fut), tuple(keys)))
        return await fut

    def _prelock(self, conn: Any, batch: list[_Item]) -> None:
        """Lock the batch's existing decision rows up front, in one sorted order (SQLite: its
        single writer already serialises, so nothing; PostgreSQL overrides)."""

    @staticmethod
    def _order(batch: list[_Item]) -> list[int]:
        """The order a batch's writes run in: by decision event id within each run of keyed
        writes, so that two processes' batches take row and insert locks in one global order
        (the usual cure for lock-order deadlocks); any other write (campaign, keys, a join of
        many rows, whose rows :meth:`_prelock` has locked) stays where it was and bounds the
        runs. Writes to the same event keep their submission order (the sort is stable)."""
        order: list[int] = []
        run: list[int] = []
        for i, (_, _, keys) in enumerate(batch):
            if len(keys) == 1:
                run.append(i)
                continue
            order.extend(sorted(run, key=lambda j: batch[j][2][0]))
            run.clear()
            order.append(i)
        order.extend(sorted(run, key=lambda j: batch[j][2][0]))
        return order

    def _write_loop(self) -> None:
        name_os_thread("store-writer")
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            lingered = self.linger_s <= 0 or self._last_batch < 2  # a lone writer never waits
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    if lingered:
                        break
                    # one sleep, not a wait per write: each wake-up of this thread costs
                    # the event loop's thread a context switch on a busy box
                    lingered = True
                    time.sleep(self.linger_s)
                    continue
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._last_batch = len(batch)
            try:
                self._run_batch(self._writer_conn, batch)
            except Exception as e:
                # the connection itself failed (the database restarted, the network dropped)
                # and even ROLLBACK raised: fail what is still waiting, never end the writer,
                # and reconnect for the next batch
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(e)
                self._reopen_writer()
            finally:
                _wake(batch)

    def _reopen_writer(self) -> None:
        """Replace a failed writer connection; if the database cannot be reached yet, keep the
        old one, so the next batch fails fast and tries again."""
        try:
            conn = self._connect()
        except Exception:
            return
        with contextlib.suppress(Exception):
            self._writer_conn.close()
        self._writer_conn = conn
        self._stats.reconnects += 1

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        t0 = time.perf_counter()
        results: list[tuple[bool, Any]] = []
        for attempt in range(self._RETRIES + 1):
            try:
                applied = self._apply(conn, batch, isolate=False)
                if applied is None:  # a write failed: redo the batch, each write in a savepoint
                    applied = self._apply(conn, batch, isolate=True)
                assert applied is not None
                conn.execute("COMMIT")
                results = applied
                break
            except Exception as e:  # the commit failed: nothing of the batch is durable
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if attempt < self._RETRIES and self._transient(e):
                    self._stats.retries += 1
                    time.sleep(random.uniform(0.0, 0.01 * 2**attempt))
                    continue
                for _, fut, _ in batch:
                    fut.set_exception(e)
                return
        st = self._stats
        st.commits += 1
        st.ops += len(batch)
        st.commit_seconds += time.perf_counter() - t0
        st.batch_sizes[len(batch)] = st.batch_sizes.get(len(batch), 0) + 1
        for (_, fut, _), (ok, value) in zip(batch, results, strict=True):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _apply(
        self, conn: sqlite3.Connection, batch: list[_Item], *, isolate: bool
    ) -> list[tuple[bool, Any]] | None:
        """Run the batch's writes in one open transaction, in :meth:`_order`, after locking the
        decision rows they touch (:meth:`_prelock`); results come back in submission order.
        Without ``isolate`` (the common case: no write fails) there is no per-write savepoint;
        the first failure rolls the transaction back and returns None. With it, a savepoint per
        write keeps one failing write from undoing its batch-mates."""
        results: list[tuple[bool, Any]] = [(False, None)] * len(batch)
        conn.execute(self._BEGIN)
        try:
            self._prelock(conn, batch)
        except Exception:
            conn.execute("ROLLBACK")
            raise
        for i in self._order(batch):
            op = batch[i][0]
            if not isolate:
                try:
                    results[i] = (True, op(conn))
                except Exception as e:
                    conn.execute("ROLLBACK")
                    if self._transient(e):
                        raise
                    return None
                continue
            conn.execute("SAVEPOINT op")
            try:
                results[i] = (True, op(conn))
                conn.execute("RELEASE op")
            except Exception as e:
                if self._transient(e):  # the locks the batch holds are the problem: retry it
                    raise
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                results[i] = (False, e)
        return results

    @property
    def commit_stats(self) -> GroupCommitStats:
        return self._stats

    # ---- writes ---------------------------------------------------------------------------------
    def record_decision(self, rec: DecisionRecord) -> Future[None]:
        """Store ``rec``; the future is done once it is durable (an IntegrityError: the event
        id was used)."""
        return self._submit(*self._decision_write(rec))

    async def arecord_decision(self, rec: DecisionRecord) -> None:
        """:meth:`record_decision` for a caller on an event loop (returns once durable)."""
        await self._asubmit(*self._decision_write(rec))

    def _decision_write(self, rec: DecisionRecord) -> tuple[_Op, tuple[str]]:
        row = (
            rec.event_id,
            rec.ts,
            rec.campaign_id,
            rec.user_id,
            np.asarray(rec.context, np.float32).tobytes(),
            json.dumps(rec.candidates),
            rec.action,
            rec.action_index,
            rec.propensity,
            json.dumps(rec.action_probs),
            rec.agent_action,
            None if rec.agent_probs is None else json.dumps(rec.agent_probs),
            rec.model_version,
            rec.policy_id,
            rec.mode,
            int(rec.activated),
            int(rec.deferred),
            rec.closes_at,
            rec.model_id or rec.campaign_id,
            int(rec.early),
        )

        def op(c: sqlite3.Connection) -> None:
            c.execute(_INSERT_DECISION, row)

        return op, (rec.event_id,)

    def record_reward(
        self, event_id: str, reward_id: str, value: float, received: float
    ) -> Future[RewardOutcome]:
        """Store a reward of ``event_id`` (idempotent per reward id); done once durable."""
        return self._submit(*self._reward_write(event_id, reward_id, value, received))

    async def arecord_reward(
        self, event_id: str, reward_id: str, value: float, received: float
    ) -> RewardOutcome:
        """:meth:`record_reward` for a caller on an event loop (returns once durable)."""
        out: RewardOutcome = await self._asubmit(
            *self._reward_write(event_id, reward_id, value, received)
        )
        return out

    def _reward_write(
        self, event_id: str, reward_id: str, value: float, received: float
    ) -> tuple[_Op, tuple[str]]:
        def op(c: sqlite3.Connection) -> RewardOutcome:
            d = c.execute(
                "SELECT closes_at, joined FROM decisions WHERE event_id=?" + self._LOCK,
                (event_id,),
            ).fetchone()
            if d is None:
                return RewardOutcome("unknown_event")
            late = received > d[0] or (bool(d[1]) and not _joined_by_first(c, event_id))
            cur = c.execute(
                "INSERT INTO rewards (event_id, reward_id, value, ts, late) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (event_id, reward_id, value, received, int(late)),
            )
            if cur.rowcount == 0:
                old = c.execute(
                    "SELECT value, late FROM rewards WHERE event_id=? AND reward_id=?",
                    (event_id, reward_id),
                ).fetchone()
                same = old[0] == value
                return RewardOutcome("duplicate" if same else "conflict", bool(old[1]))
            if not late:
                c.execute("UPDATE decisions SET has_reward=1 WHERE event_id=?", (event_id,))
            return RewardOutcome("accepted", late)

        return op, (event_id,)

    def activate(self, event_id: str) -> Future[Literal["ok", "unknown_event", "joined"]]:
        def op(c: sqlite3.Connection) -> Literal["ok", "unknown_event", "joined"]:
            d = c.execute(
                "SELECT joined FROM decisions WHERE event_id=?" + self._LOCK, (event_id,)
            ).fetchone()
            if d is None:
                return "unknown_event"
            if d[0]:
                return "joined"
            c.execute("UPDATE decisions SET activated=1 WHERE event_id=?", (event_id,))
            return "ok"

        return self._submit(op, (event_id,))

    def create_campaign(
        self, cfg: CampaignConfig, variants: Sequence[VariantRecord], actor: str
    ) -> Future[None]:
        def op(c: sqlite3.Connection) -> None:
            now = time.time()
            c.execute(
                "INSERT INTO campaigns (campaign_id, config, created, updated) VALUES (?,?,?,?)",
                (cfg.campaign_id, cfg.to_json(), now, now),
            )
            _insert_variants(c, variants, now)
            detail = {"campaign": asdict(cfg), "variants": len(variants)}
            _audit(c, actor, "campaign.create", detail)

        return self._submit(op)

    def update_campaign(self, cfg: CampaignConfig, actor: str) -> Future[None]:
        def op(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE campaigns SET config=?, updated=? WHERE campaign_id=?",
                (cfg.to_json(), time.time(), cfg.campaign_id),
            )
            if cur.rowcount == 0:
                raise KeyError(cfg.campaign_id)
            _audit(c, actor, "campaign.update", asdict(cfg))

        return self._submit(op)

    def add_variants(self, variants: Sequence[VariantRecord], actor: str) -> Future[None]:
        def op(c: sqlite3.Connection) -> None:
            _insert_variants(c, variants, time.time())
            _audit(c, actor, "variants.add", {"variant_ids": [v.variant_id for v in variants]})

        return self._submit(op)

    def retire_variant(self, campaign_id: str, variant_id: str, actor: str) -> Future[bool]:
        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE variants SET active=0 WHERE campaign_id=? AND variant_id=?",
                (campaign_id, variant_id),
            )
            if cur.rowcount:
                detail = {"campaign": campaign_id, "variant": variant_id}
                _audit(c, actor, "variants.retire", detail)
            return bool(cur.rowcount)

        return self._submit(op)

    def set_variant_set(
        self,
        cfg: CampaignConfig,
        active: Sequence[str],
        actor: str,
        action: str,
        detail: Mapping[str, Any],
        *,
        new_variants: Sequence[VariantRecord] = (),
        snapshot_version: int | None = None,
    ) -> Future[int]:
        """One transaction: insert ``new_variants``, make exactly ``active`` the campaign's
        active variants, store ``cfg`` (candidates, control, share), append the new variant-set
        version and an audit entry; the future holds the version."""
        keep = list(active)

        def op(c: sqlite3.Connection) -> int:
            now = time.time()
            if new_variants:
                _insert_variants(c, new_variants, now)
            c.execute(
                "UPDATE variants SET active=0 WHERE campaign_id=? AND active=1",
                (cfg.campaign_id,),
            )
            c.executemany(
                "UPDATE variants SET active=1 WHERE campaign_id=? AND variant_id=?",
                [(cfg.campaign_id, v) for v in keep],
            )
            cur = c.execute(
                "UPDATE campaigns SET config=?, updated=? WHERE campaign_id=?",
                (cfg.to_json(), now, cfg.campaign_id),
            )
            if cur.rowcount == 0:
                raise KeyError(cfg.campaign_id)
            (version,) = c.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM variant_sets WHERE campaign_id=?",
                (cfg.campaign_id,),
            ).fetchone()
            c.execute(
                "INSERT INTO variant_sets (campaign_id, version, ts, actor, action, active, "
                "config, snapshot_version, detail) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    cfg.campaign_id,
                    version,
                    now,
                    actor,
                    action,
                    json.dumps(keep),
                    cfg.to_json(),
                    snapshot_version,
                    json.dumps(dict(detail), sort_keys=True, default=str),
                ),
            )
            full = {**detail, "campaign": cfg.campaign_id, "variant_set": version}
            _audit(c, actor, action, full)
            return int(version)

        return self._submit(op)

    def create_key(self, scope: str, actor: str) -> Future[str]:
        """A new API key of ``scope``; the future holds the plaintext, which is not stored."""
        if scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        digest = hash_secret(secret, salt)

        def op(c: sqlite3.Connection) -> str:
            c.execute(
                "INSERT INTO keys (key_id, salt, hash, scope, created) VALUES (?,?,?,?,?)",
                (key_id, salt, digest, scope, time.time()),
            )
            _audit(c, actor, "key.create", {"key_id": key_id, "scope": scope})
            return f"{KEY_PREFIX}_{key_id}_{secret}"

        return self._submit(op)

    def commit_join(self, joined: Sequence[JoinedRow]) -> Future[int]:
        """Mark decisions joined (reward, source, learned) under one new join sequence number,
        which the future returns: a snapshot taken after it holds these rows."""
        rows = [(j.reward, j.source, int(j.learned), j.event_id) for j in joined]

        def op(c: sqlite3.Connection) -> int:
            seq = self._next_join_seq(c)
            c.executemany(
                f"UPDATE decisions SET joined=1, reward=?, reward_source=?, learned=?, "
                f"join_seq={seq} WHERE event_id=? AND joined=0",
                rows,
            )
            return seq

        return self._submit(op, [j.event_id for j in joined])

    def _next_join_seq(self, c: Any) -> int:
        """The next join sequence number (SQLite: this process is the file's only writer)."""
        self._join_seq += 1
        return int(self._join_seq)

    def record_snapshot(self, snapshot: SnapshotRecord) -> Future[None]:
        def op(c: sqlite3.Connection) -> None:
            s = snapshot
            c.execute(
                "INSERT INTO snapshots (model_id, version, model_version, created, path, "
                "rows_learned, through_join) VALUES (?,?,?,?,?,?,?)",
                (
                    s.model_id,
                    s.version,
                    s.model_version,
                    s.created,
                    s.path,
                    s.rows_learned,
                    s.through_join,
                ),
            )
            _audit(c, "learner", "snapshot.publish", asdict(s))

        return self._submit(op)

    def set_meta(self, key: str, value: bytes) -> Future[None]:
        """Store a service-wide value (the featurizer the copy is featurized with)."""

        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, value),
            )
            _audit(c, "service", "meta.set", {"key": key, "bytes": len(value)})

        return self._submit(op)

    # ---- reads ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> bytes | None:
        r = self._reader().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if r is None else bytes(r[0])

    def campaigns(self) -> list[CampaignConfig]:
        rows = self._reader().execute("SELECT config FROM campaigns ORDER BY created").fetchall()
        return [CampaignConfig.from_json(r[0]) for r in rows]

    def variants(self, campaign_id: str | None = None) -> list[VariantRecord]:
        sql = "SELECT variant_id, campaign_id, text, embedding, active FROM variants"
        args: tuple[Any, ...] = ()
        if campaign_id is not None:
            sql += " WHERE campaign_id=?"
            args = (campaign_id,)
        rows = self._reader().execute(sql + " ORDER BY campaign_id, seq", args).fetchall()
        return [
            VariantRecord(
                r[0],
                r[1],
                r[2],
                None if r[3] is None else np.frombuffer(r[3], np.float32),
                bool(r[4]),
            )
            for r in rows
        ]

    def key(self, key_id: str) -> KeyRecord | None:
        r = (
            self._reader()
            .execute(
                "SELECT key_id, salt, hash, scope, revoked FROM keys WHERE key_id=?", (key_id,)
            )
            .fetchone()
        )
        return None if r is None else KeyRecord(r[0], bytes(r[1]), bytes(r[2]), r[3], bool(r[4]))

    def snapshots(self, model_id: str) -> list[SnapshotRecord]:
        rows = (
            self._reader()
            .execute(
                "SELECT model_id, version, model_version, created, path, rows_learned, "
                "through_join FROM snapshots WHERE model_id=? ORDER BY version",
                (model_id,),
            )
            .fetchall()
        )
        return [SnapshotRecord(*r) for r in rows]

    def latest_snapshot(self, model_id: str) -> SnapshotRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT model_id, version, model_version, created, path, rows_learned, "
                "through_join FROM snapshots WHERE model_id=? ORDER BY version DESC LIMIT 1",
                (model_id,),
            )
            .fetchone()
        )
        return None if row is None else SnapshotRecord(*row)

    def variant_sets(self, campaign_id: str) -> list[VariantSetRecord]:
        rows = (
            self._reader()
            .execute(
                "SELECT campaign_id, version, ts, actor, action, active, config, "
                "snapshot_version, detail FROM variant_sets WHERE campaign_id=? ORDER BY version",
                (campaign_id,),
            )
            .fetchall()
        )
        return [variant_set_record(r) for r in rows]

    def timeline(self, campaign_id: str, since: float, bucket_s: float) -> list[TimelineRow]:
        if not bucket_s > 0:
            raise ValueError(f"`bucket_s` must be > 0, got {bucket_s}")
        rows = (
            self._reader()
            .execute(
                f"SELECT {self._BUCKET} AS b, action, count(*), coalesce(sum(joined), 0),"
                " coalesce(sum(CASE WHEN joined=1 THEN reward END), 0.0) FROM decisions "
                "WHERE campaign_id=? AND ts>=? GROUP BY b, action ORDER BY b, action",
                (bucket_s, campaign_id, since),
            )
            .fetchall()
        )
        return [TimelineRow(b * bucket_s, a, int(n), int(j), float(r)) for b, a, n, j, r in rows]

    def decision(self, event_id: str) -> DecisionRecord | None:
        r = (
            self._reader()
            .execute(f"SELECT {_DECISION_COLS} FROM decisions WHERE event_id=?", (event_id,))
            .fetchone()
        )
        return None if r is None else _decision(r)

    def pending(self, model_id: str, now: float, limit: int) -> list[DecisionRecord]:
        """Unjoined decisions of a model whose reward is settled: window closed, or (decided
        under ``earliest`` aggregation) a reward in and the impression activated (a deferred
        one waits for its activation or its window). Oldest first."""
        rows = (
            self._reader()
            .execute(
                f"SELECT {_DECISION_COLS} FROM decisions WHERE model_id=? AND joined=0 AND "
                "(closes_at<=? OR (early=1 AND has_reward=1 AND activated=1)) ORDER BY seq LIMIT ?",
                (model_id, now, limit),
            )
            .fetchall()
        )
        return [_decision(r) for r in rows]

    def learned_since(self, model_id: str, through_join: int, limit: int) -> list[LearnedRow]:
        """Rows of a model taught after join ``through_join``, in the order they were taught
        (at most ``limit``; call again from the last one's ``join_seq`` for more)."""
        rows = (
            self._reader()
            .execute(
                f"SELECT {_DECISION_COLS}, reward, join_seq FROM decisions WHERE model_id=? "
                "AND learned=1 AND join_seq>? ORDER BY join_seq, seq LIMIT ?",
                (model_id, through_join, limit),
            )
            .fetchall()
        )
        return [LearnedRow(_decision(r[:-2]), r[-2], r[-1]) for r in rows]

    def rewards_for(self, event_ids: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
        """In-window rewards ``(ts, value)`` of each event (late ones excluded)."""
        out: dict[str, list[tuple[float, float]]] = {e: [] for e in event_ids}
        conn = self._reader()
        ids = list(event_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for e, ts, v in conn.execute(
                f"SELECT event_id, ts, value FROM rewards WHERE late=0 AND event_id IN "
                f"({_qs(len(chunk))})",
                chunk,
            ):
                out[e].append((ts, v))
        return out

    def stats(self, campaign_id: str) -> dict[str, Any]:
        conn = self._reader()
        d = conn.execute(
            "SELECT count(*), coalesce(sum(joined),0), coalesce(sum(learned),0), "
            "coalesce(sum(CASE WHEN reward_source='default' THEN 1 ELSE 0 END),0), "
            "avg(CASE WHEN joined=1 THEN reward END), "
            "min(CASE WHEN joined=0 THEN ts END) FROM decisions WHERE campaign_id=?",
            (campaign_id,),
        ).fetchone()
        r = conn.execute(
            "SELECT count(*), coalesce(sum(r.late),0) FROM rewards r JOIN decisions d "
            "ON d.event_id=r.event_id WHERE d.campaign_id=?",
            (campaign_id,),
        ).fetchone()
        served = conn.execute(
            "SELECT action, count(*) FROM decisions WHERE campaign_id=? GROUP BY action",
            (campaign_id,),
        ).fetchall()
        return {
            "decisions": d[0],
            "joined": d[1],
            "learned": d[2],
            "default_rewards": d[3],
            "mean_joined_reward": d[4],
            "oldest_unjoined_ts": d[5],
            "rewards": r[0],
            "late_rewards": r[1],
            "served": {a: n for a, n in served},
        }

    def audit_log(self) -> list[dict[str, Any]]:
        rows = self._reader().execute("SELECT ts, actor, action, detail FROM audit ORDER BY seq")
        return [{"ts": t, "actor": a, "action": x, "detail": json.loads(d)} for t, a, x, d in rows]

    # ---- export ---------------------------------------------------------------------------------
    def export_log(
        self,
        path: str | os.PathLike[str],
        *,
        campaign_id: str | None = None,
        now: float | None = None,
        campaign_ids: Sequence[str] | None = None,
    ) -> ExportSummary:
        """Write the joined decisions as a DecisionLog (and its variants table, alongside):
        every campaign's, ``campaign_id``'s, or those of ``campaign_ids`` (a model's).

        A decision is exported when its reward is settled (window closed, or with ``earliest``
        aggregation a reward in) and it was activated; its reward is the campaign's aggregation
        of its in-window rewards, or the default reward. Open windows and never-activated
        (deferred) impressions are left out and counted.

        Raises:
            ValueError: no campaigns; campaigns of different context widths in one file
                (export one with ``campaign_id``); an unknown ``campaign_id``.
        """
        from copyloop.contract import DecisionLog, DecisionLogWriter, VariantsTable

        cfgs = {c.campaign_id: c for c in self.campaigns()}
        wanted = [campaign_id] if campaign_id is not None else campaign_ids
        if wanted is not None:
            unknown = [c for c in wanted if c not in cfgs]
            if unknown:
                raise ValueError(f"`campaign_id` {unknown[0]!r} is not a campaign of the store")
            cfgs = {c: cfgs[c] for c in wanted}
        if not cfgs:
            raise ValueError("the store has no campaigns — nothing to export")
        widths = {c.context_width for c in cfgs.values()}
        if len(widths) > 1:
            raise ValueError(
                f"campaigns have context widths {sorted(widths)}; a DecisionLog has one — "
                "export one campaign at a time (`campaign_id`)"
            )
        width = widths.pop()
        records = [
            {
                "variant_id": v.variant_id,
                "campaign_id": v.campaign_id,
                "text": v.text,
                "embedding": v.embedding,
                "attributes": {"active": v.active},
                "origin": "serve",
            }
            for cid in cfgs
            for v in self.variants(cid)
        ]
        vt = VariantsTable.from_records(records)
        now = time.time() if now is None else now
        n = defaults = open_ = inactive = 0
        with DecisionLogWriter(path, width, variants=vt, source="serve export") as w:
            for cid, cfg in cfgs.items():
                (o,) = (
                    self._reader()
                    .execute(
                        "SELECT count(*) FROM decisions WHERE campaign_id=? AND NOT "
                        "(closes_at<=? OR (early=1 AND has_reward=1 AND activated=1))",
                        (cid, now),
                    )
                    .fetchone()
                )
                open_ += o
                for batch in self._settled(cid, now):
                    keep = [d for d in batch if d.activated]
                    inactive += len(batch) - len(keep)
                    if not keep:
                        continue
                    got = self.rewards_for([d.event_id for d in keep])
                    joined = [join_reward(got[d.event_id], cfg) for d in keep]
                    defaults += sum(s == "default" for _, s in joined)
                    w.write(to_log(keep, [r for r, _ in joined], width, DecisionLog))
                    n += len(keep)
        return ExportSummary(Path(path), n, defaults, open_, inactive)

    def _settled(
        self, campaign_id: str, now: float, batch: int = 20_000
    ) -> Iterator[list[DecisionRecord]]:
        last = 0
        conn = self._reader()
        while True:
            rows = conn.execute(
                f"SELECT seq, {_DECISION_COLS} FROM decisions WHERE campaign_id=? AND seq>? AND "
                "(closes_at<=? OR (early=1 AND has_reward=1 AND activated=1)) ORDER BY seq LIMIT ?",
                (campaign_id, last, now, batch),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [_decision(r[1:]) for r in rows]


def to_log(
    decisions: Sequence[DecisionRecord], rewards: Sequence[float], width: int, log_cls: Any
) -> Any:
    """DecisionLog rows from decision records and their joined rewards (learner and export)."""
    return log_cls.from_arrays(
        event_id=[d.event_id for d in decisions],
        ts=np.array([int(d.ts * 1e6) for d in decisions], dtype="datetime64[us]"),
        campaign_id=[d.campaign_id for d in decisions],
        user_id=[d.user_id for d in decisions],
        context=np.stack([d.context for d in decisions]).reshape(len(decisions), width),
        candidates=[d.candidates for d in decisions],
        action=[d.action for d in decisions],
        action_index=[d.action_index for d in decisions],
        propensity=[d.propensity for d in decisions],
        action_probs=[d.action_probs for d in decisions],
        reward=np.asarray(rewards, np.float64),
        policy_id=[d.policy_id for d in decisions],
        model_version=[d.model_version for d in decisions],
    )


def featurizer_bytes(featurizer: Any) -> bytes:
    """A featurizer as ``.npz`` bytes (its plain arrays; no pickle) for :meth:`set_meta`."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **featurizer.to_arrays())
    return buf.getvalue()


def featurizer_from_bytes(blob: bytes) -> Any:
    import io

    from copyloop.envs.featurize import CopyFeaturizer

    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return CopyFeaturizer.from_arrays({k: z[k] for k in z.files})


def _qs(n: int) -> str:
    return ",".join("?" * n)


def _joined_by_first(c: sqlite3.Connection, event_id: str) -> bool:
    """An event already joined on its first reward (``earliest``): a later in-window reward is
    stored as a non-late duplicate-in-effect; anything else joined is settled, so late."""
    r = c.execute("SELECT reward_source FROM decisions WHERE event_id=?", (event_id,)).fetchone()
    return r is not None and r[0] == "reward"


def _insert_variants(c: sqlite3.Connection, variants: Sequence[VariantRecord], now: float) -> None:
    c.executemany(
        "INSERT INTO variants (variant_id, campaign_id, text, embedding, active, created) "
        "VALUES (?,?,?,?,?,?)",
        [
            (
                v.variant_id,
                v.campaign_id,
                v.text,
                None if v.embedding is None else np.asarray(v.embedding, np.float32).tobytes(),
                int(v.active),
                now,
            )
            for v in variants
        ],
    )


def variant_set_record(r: Sequence[Any]) -> VariantSetRecord:
    """A ``variant_sets`` row (either store's) as its record."""
    return VariantSetRecord(
        campaign_id=r[0],
        version=int(r[1]),
        ts=float(r[2]),
        actor=r[3],
        action=r[4],
        active=list(json.loads(r[5])),
        config=CampaignConfig.from_json(r[6]),
        snapshot_version=None if r[7] is None else int(r[7]),
        detail=dict(json.loads(r[8])),
    )


def _audit(c: sqlite3.Connection, actor: str, action: str, detail: Mapping[str, Any]) -> None:
    c.execute(
        "INSERT INTO audit (ts, actor, action, detail) VALUES (?,?,?,?)",
        (time.time(), actor, action, json.dumps(detail, sort_keys=True, default=str)),
    )


def _decision(r: Sequence[Any]) -> DecisionRecord:
    return DecisionRecord(
        event_id=r[0],
        ts=r[1],
        campaign_id=r[2],
        user_id=r[3],
        context=np.frombuffer(r[4], np.float32),
        candidates=json.loads(r[5]),
        action=r[6],
        action_index=r[7],
        propensity=r[8],
        action_probs=json.loads(r[9]),
        agent_action=r[10],
        agent_probs=None if r[11] is None else json.loads(r[11]),
        model_version=r[12],
        policy_id=r[13],
        mode=r[14],
        activated=bool(r[15]),
        deferred=bool(r[16]),
        closes_at=r[17],
        model_id=r[18],
        early=bool(r[19]),
    )
