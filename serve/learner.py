"""The learner: joins rewards to decisions once settled, teaches the learner's copy of each
model from those DecisionLog rows, hands the serving path a fresh copy, and saves snapshots.

A decision is settled when its window closes (default reward if none came) or, decided under
``earliest`` aggregation, as soon as its first in-window reward is in. Rows the agent must not
learn from are joined but not taught: deferred impressions never activated, and ``logging``
mode.

Every join is one store transaction with a join sequence number. The learner's copy of a model
always holds exactly the taught rows up to some join number (``through_join``); a snapshot on
disk records the join number it holds. So publishing to the serving path (an in-memory copy,
at most every ``publish_interval_s``) and saving to disk (at most every
``snapshot_interval_s``) are decoupled from durability: a restart — or a failed join commit —
loads the last snapshot and re-learns the rows joined after it, in their order, once.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from copyloop.agents import Policy
from copyloop.contract import DecisionLog
from copyloop.serve.service import CATALOG_REV
from copyloop.serve.store import JoinedRow, SnapshotRecord, join_reward, to_log

if TYPE_CHECKING:
    from copyloop.serve.service import ModelRuntime, Service
    from copyloop.serve.store import CampaignConfig


def prepared(policy: Policy, m: ModelRuntime, svc: Service | None = None) -> Policy:
    """``policy`` after one throw-away decision, so the caches a decision needs (LinearTS's
    per-request posterior: a factorisation of a d×d matrix) are built here, in the learner's
    thread, and not by the first request that meets the new model; with ``svc``, also what
    it precomputes for the active list of every campaign on the model (LinearTS: the tables
    of :meth:`~copyloop.agents.LinearTSPolicy.project`, ~0.3 ms per campaign)."""
    if len(m.variants):
        ctx = np.zeros(m.cfg.context_width, np.float32)
        policy.decide(ctx, [m.variants.ids[0]], event_id="warm-up", store=m.variants)
        if svc is not None:
            policy.project(svc.candidate_lists(m), m.variants)
    return policy


JOIN_CHUNK = 200
"""Most decisions one join commits (a learner step joins ~1,000 under load)."""

KEEP_HANDOVERS = 8
"""Newest hand-over snapshots the learner role keeps on disk (replicas load the newest)."""


class _Ticker:
    """Runs :meth:`step` every ``interval`` seconds in a named daemon thread; an exception is
    kept in ``error`` (reported by /healthz) and the next tick tries again."""

    name = "ticker"

    def __init__(self, service: Service) -> None:
        self.service = service
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def step(self) -> int:
        raise NotImplementedError

    def _start(self, interval: float | None) -> None:
        if interval is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name=self.name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self, interval: float) -> None:
        from copyloop.serve.store import name_os_thread

        name_os_thread(self.name)
        while not self._stop.wait(interval):
            try:
                self.step()
                self.error = None
            except Exception as e:  # keep serving what it has; /healthz reports the error
                self.error = e


class Follower(_Ticker):
    """What other processes changed through the store, brought into this one every
    ``follow_interval_s``: admin changes (roles ``api`` and ``learner``) and, on a replica
    (``api``), the learner's newest snapshot of each model — loaded, warmed and swapped in
    whole, as the learner's own hand-over does."""

    name = "follower"

    def start(self) -> None:
        self._start(self.service.config.follow_interval_s)

    def step(self) -> int:
        """One look: re-read the catalog if it changed, load newer snapshots; returns the
        models swapped."""
        svc = self.service
        if svc.store.get_meta(CATALOG_REV) != svc.catalog_rev:
            svc.sync_catalog()
        if svc.config.role != "api":
            return 0
        swapped = 0
        for m in list(svc.models.values()):
            snap = svc.store.latest_snapshot(m.model_id)
            if snap is None or snap.version <= m.snapshot_version:
                continue
            try:
                pol = Policy.load(snap.path)
            except FileNotFoundError:  # pruned between the query and the read: a newer one is in
                continue
            pol.exploration_floor = m.cfg.exploration_floor
            pol = prepared(pol.attach(m.variants), m, svc)
            with m.lock:
                m.policy = m.learner_policy = pol  # the reference swap
                m.snapshot_version = snap.version
                m.through_join = m.saved_join = snap.through_join
            svc.metrics.pickup.observe(max(svc.clock() - snap.created, 0.0))
            svc.metrics.model_version.labels(m.model_id).set(snap.version)
            swapped += 1
        return swapped


class Learner(_Ticker):
    """Runs :meth:`step` every ``learn_interval_s`` in a thread (see :meth:`start`).

    Args:
        service: the service whose models it updates.
        batch: most decisions joined per model per step.
    """

    name = "learner"

    def __init__(self, service: Service, batch: int = 20_000) -> None:
        super().__init__(service)
        self.batch = batch
        self._step_lock = threading.Lock()

    def start(self) -> None:
        self._start(self.service.config.learn_interval_s)

    def step(self) -> int:
        """For each model whose hand-over is due (``publish_interval_s`` since the last one):
        join every settled decision, learn, publish, and save when due; returns the rows
        joined (none on an API replica: the learner process joins for every replica).

        Rows are joined and taught once per hand-over, in one batch, not every tick: the
        serving path would not see them sooner, and the fixed cost of a join (its queries,
        the DecisionLog, the agent's update call) is paid once for the batch — 213 → 92 µs
        of learner CPU per row from 25-row to 100-row joins, measured on the default market.
        """
        if self.service.config.role == "api":
            return 0
        with self._step_lock:
            svc = self.service
            now = svc.clock()
            mono = time.monotonic()
            lag: float | None = None
            total = 0
            for m in list(svc.models.values()):
                if mono - m.published_at < svc.config.publish_interval_s:
                    continue
                n, oldest = self._join(m, now)
                total += n
                lag = max(lag or 0.0, 0.0 if oldest is None else now - oldest)
                self._publish(m, mono)
            if lag is not None:  # the models joined now (the others' lag is unchanged)
                svc.metrics.learner_lag.set(lag)
            return total

    def _join(self, m: ModelRuntime, now: float) -> tuple[int, float | None]:
        svc = self.service
        pend = svc.store.pending(m.model_id, now, self.batch)
        if not pend:
            return 0, None
        oldest = min(min(d.closes_at, now) for d in pend)  # closed windows waiting
        got = svc.store.rewards_for([d.event_id for d in pend])
        joined, teach, values, received = [], [], [], []
        for d in pend:
            rt = svc.runtimes.get(d.campaign_id)
            value, source = join_reward(got[d.event_id], rt.cfg if rt is not None else m.cfg)
            learn = d.activated and d.mode != "logging"
            joined.append(JoinedRow(d.event_id, value, source, learn))
            if learn:
                teach.append(d)
                values.append(value)
                ts = got[d.event_id]
                received.append(min(ts)[0] if ts and source == "reward" else min(d.closes_at, now))
        with m.lock:
            if teach:
                log = to_log(teach, values, m.cfg.context_width, DecisionLog)
                m.learner_policy.learn_log(log, m.variants)
            try:
                # in chunks, each its own join (sequence number) and its own commit: the
                # store's one writer interleaves the service's writes between them instead
                # of holding them behind one ~1,000-row update (5–10 ms under load)
                for i in range(0, len(joined), JOIN_CHUNK):
                    seq = svc.store.commit_join(joined[i : i + JOIN_CHUNK]).result()
            except Exception:
                # Rows not yet joined stay so: forget what was learned, so the next step
                # teaches them once, on top of the rows joined (chunks committed included).
                self.rebuild(m)
                raise
            m.through_join = seq
            m.rows_since_save += len(teach)
            m.unpublished.extend(received)
        svc.metrics.joins.inc(len(joined))
        svc.metrics.default_rewards.inc(sum(j.source == "default" for j in joined))
        svc.metrics.learned.inc(len(teach))
        return len(joined), oldest

    def _publish(self, m: ModelRuntime, due: float) -> None:
        """Hand the serving path a copy of the learner's model (at most every
        ``publish_interval_s``) and save a snapshot (at most every ``snapshot_interval_s``).

        ``due`` is when this step found the hand-over due (``time.monotonic()``, before the
        join): the next one is due ``publish_interval_s`` after it, so the join's, the
        learning's and the hand-over's own work do not stretch the interval — a reward waits
        at most about one interval, one tick and one step's work to be served."""
        svc = self.service
        cfg = svc.config
        mono = time.monotonic()
        with m.lock:
            fresh = m.learner_policy.model_version != m.policy.model_version
            if fresh and mono - m.published_at >= cfg.publish_interval_s:
                m.policy = prepared(m.learner_policy.trained_copy(), m, svc)  # the reference swap
                m.published_at = due
                wall = svc.clock()
                for t in m.unpublished:
                    svc.metrics.freshness.observe(max(wall - t, 0.0))
                m.unpublished.clear()
                svc.metrics.publishes.labels(m.model_id).inc()
            # the learner role saves at every hand-over: that file is how replicas get it
            every = cfg.publish_interval_s if cfg.role == "learner" else cfg.snapshot_interval_s
            if m.through_join > m.saved_join and mono - m.saved_at >= every:
                self._save(m)
                m.saved_at = mono

    def _save(self, m: ModelRuntime) -> None:
        svc = self.service
        version = m.snapshot_version + 1
        path = svc.snapshot_dir / m.model_id / f"{version:08d}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        pol = m.learner_policy
        pol.save(path)
        snap = SnapshotRecord(
            m.model_id,
            version,
            pol.model_version,
            svc.clock(),
            str(path),
            m.rows_since_save,
            m.through_join,
        )
        svc.store.record_snapshot(snap).result()
        m.snapshot_version = version
        m.saved_join = m.through_join
        m.rows_since_save = 0
        svc.metrics.model_version.labels(m.model_id).set(version)
        if svc.config.role == "learner":
            self._prune(m, version)

    def _prune(self, m: ModelRuntime, version: int) -> None:
        """The learner role saves a snapshot every hand-over (about twice a second): keep the
        newest ``KEEP_HANDOVERS`` files and one checkpoint per ``snapshot_interval_s``; the
        files between are deleted (their rows stay in the store's snapshot table)."""
        cfg = self.service.config
        old = version - KEEP_HANDOVERS
        checkpoint = max(1, round(cfg.snapshot_interval_s / max(cfg.publish_interval_s, 1e-3)))
        if old >= 1 and old % checkpoint:
            (self.service.snapshot_dir / m.model_id / f"{old:08d}.npz").unlink(missing_ok=True)

    def save_all(self) -> None:
        """Save every model with rows newer than its last snapshot (a clean shutdown)."""
        with self._step_lock:
            for m in list(self.service.models.values()):
                with m.lock:
                    if m.through_join > m.saved_join:
                        self._save(m)

    def rollback(self, m: ModelRuntime, version: int) -> int:
        """Serve and learn on from snapshot ``version`` of ``m`` again: its learned state becomes
        the learner's and the serving copy's, and is saved as a new snapshot (the rows joined
        since stay in the log, not in the model). Its model version continues after the one it
        replaces, so model versions stay unique and increasing in the log. Returns the new
        snapshot version."""
        from copyloop.serve.service import ServiceError

        with self._step_lock:
            snaps = {s.version: s for s in self.service.store.snapshots(m.model_id)}
            if version not in snaps:
                raise ServiceError(404, f"model {m.model_id!r} has no snapshot {version}")
            try:
                pol = Policy.load(snaps[version].path)
            except FileNotFoundError:
                raise ServiceError(
                    409,
                    f"snapshot {version} of {m.model_id!r} was a hand-over between checkpoints "
                    "and its file is pruned — roll back to a checkpoint (a version whose file "
                    "exists)",
                ) from None
            pol.exploration_floor = m.cfg.exploration_floor
            pol.attach(m.variants)
            return self._install(m, pol)

    def _install(self, m: ModelRuntime, pol: Policy, cfg: CampaignConfig | None = None) -> int:
        """Make ``pol`` the learner's copy and the serving copy of ``m`` (and ``cfg`` its
        settings), with a model version after the one it replaces (versions stay unique and
        increasing in the log), saved as a new snapshot; returns its version. The caller holds
        the step lock."""
        with m.lock:
            pol._updates = max(pol._updates, m.learner_policy._updates) + 1
            if cfg is not None:
                m.cfg = cfg
            m.learner_policy = pol
            m.policy = prepared(pol.trained_copy(), m, self.service)
            m.published_at = time.monotonic()
            m.unpublished.clear()
            m.rows_since_save = 0
            self._save(m)
            m.saved_at = time.monotonic()
        return m.snapshot_version

    def adopt(self, m: ModelRuntime, policy: Policy, cfg: CampaignConfig) -> int:
        """Serve and learn with ``policy`` (a fresh agent of new settings ``cfg``) from now on:
        it first learns every row the model has learned, in the order they were taught (the
        catch-up path), then becomes the learner's and the serving copy and is saved as a new
        snapshot. Its model version continues after the one it replaces. Returns the new
        snapshot version."""
        with self._step_lock:
            policy.attach(m.variants)
            shadow = replace(m, learner_policy=policy, through_join=0, rows_since_save=0)
            self.catch_up(shadow)  # joins are paused (step lock): it ends at m.through_join
            return self._install(m, policy, cfg)

    # ---- recovery ------------------------------------------------------------------------------
    def catch_up(self, m: ModelRuntime) -> int:
        """Teach ``m.learner_policy`` the rows joined after ``m.through_join``, in the order
        they were first taught; returns the rows."""
        store = self.service.store
        limit = self.batch + 1  # one join holds at most ``batch`` rows: a page ends mid-join
        n = 0
        while True:
            rows = store.learned_since(m.model_id, m.through_join, limit)
            if not rows:
                return n
            if len(rows) == limit:  # drop the last, possibly partial, join
                last = rows[-1].join_seq
                rows = [r for r in rows if r.join_seq != last]
            # one learn_log per join, as the rows were first taught: the same state, bit for
            # bit, and the same model version
            for _, group in itertools.groupby(rows, key=lambda r: r.join_seq):
                g = list(group)
                log = to_log(
                    [r.decision for r in g], [r.reward for r in g], m.cfg.context_width, DecisionLog
                )
                m.learner_policy.learn_log(log, m.variants)
            m.through_join = rows[-1].join_seq
            m.rows_since_save += len(rows)
            n += len(rows)

    def rebuild(self, m: ModelRuntime) -> None:
        """The learner's copy from the last snapshot plus the rows joined after it."""
        from copyloop.serve.service import new_policy

        snaps = self.service.store.snapshots(m.model_id)
        if snaps:
            pol = Policy.load(snaps[-1].path)
            pol.exploration_floor = m.cfg.exploration_floor
            m.through_join = snaps[-1].through_join
        else:
            pol = new_policy(m.cfg)
            m.through_join = 0
        m.learner_policy = pol.attach(m.variants)
        m.rows_since_save = 0
        m.unpublished.clear()
        self.catch_up(m)
