"""The learner: joins rewards to decisions once settled, teaches its own copy of each campaign's
agent from those DecisionLog rows, and publishes versioned snapshots the serving path swaps in.

A decision is settled when its window closes (default reward if none came) or, with
``earliest`` aggregation, as soon as its first in-window reward is in. Rows the agent must not
learn from are joined but not taught: deferred impressions never activated, and ``logging``
mode. The joined marks and the snapshot row commit in one transaction after the snapshot file
is in place, so a crash re-learns a batch on the previous snapshot, never twice.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from copyloop.agents import Policy
from copyloop.contract import DecisionLog
from copyloop.serve.store import CampaignConfig, JoinedRow, SnapshotRecord, join_reward, to_log

if TYPE_CHECKING:
    from copyloop.serve.service import CampaignRuntime, Service


class Learner:
    """Runs :meth:`step` every ``learn_interval_s`` in a thread (see :meth:`start`).

    Args:
        service: the service whose campaigns it updates.
        batch: most decisions joined per campaign per step.
    """

    def __init__(self, service: Service, batch: int = 20_000) -> None:
        self.service = service
        self.batch = batch
        self._stop = threading.Event()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        interval = self.service.config.learn_interval_s
        if interval is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="learner", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.step()
                self.error = None
            except Exception as e:  # keep serving; /healthz reports the learner's error
                self.error = e

    def step(self) -> int:
        """Join every settled decision, learn, publish; returns the rows joined."""
        with self._step_lock:
            svc = self.service
            now = svc.clock()
            lag = 0.0
            total = 0
            for rt in list(svc.runtimes.values()):
                n, oldest = self._campaign(rt, now)
                total += n
                if oldest is not None:
                    lag = max(lag, now - oldest)
            svc.metrics.learner_lag.set(lag)
            return total

    def _campaign(self, rt: CampaignRuntime, now: float) -> tuple[int, float | None]:
        from copyloop.serve.service import new_policy

        svc = self.service
        cfg = rt.cfg
        pend = svc.store.pending(cfg.campaign_id, now, cfg.aggregation == "earliest", self.batch)
        if not pend:
            return 0, None
        oldest = min(min(d.closes_at, now) for d in pend)  # closed windows waiting
        got = svc.store.rewards_for([d.event_id for d in pend])
        joined, teach, values = [], [], []
        for d in pend:
            value, source = join_reward(got[d.event_id], cfg)
            learn = d.activated and d.mode != "logging"
            joined.append(JoinedRow(d.event_id, value, source, learn))
            if learn:
                teach.append(d)
                values.append(value)
        snapshot = None
        with rt.lock:
            before = rt.learner_policy.model_version
            if teach:
                log = to_log(teach, values, cfg.context_width, DecisionLog)
                rt.learner_policy.learn_log(log, rt.variants)
            if rt.learner_policy.model_version != before:
                version = rt.snapshot_version + 1
                path = svc.snapshot_dir / cfg.campaign_id / f"{version:08d}.npz"
                path.parent.mkdir(parents=True, exist_ok=True)
                rt.learner_policy.save(path, store=None)
                snapshot = SnapshotRecord(
                    cfg.campaign_id,
                    version,
                    rt.learner_policy.model_version,
                    now,
                    str(path),
                    len(teach),
                )
            try:
                svc.store.commit_join(joined, snapshot).result()
            except Exception:
                # The rows stay unjoined: forget what was learned from them, so the next step
                # teaches them once, on the last published snapshot.
                snaps = svc.store.snapshots(cfg.campaign_id)
                rt.learner_policy = _reload(snaps[-1].path, cfg) if snaps else new_policy(cfg)
                raise
            if snapshot is not None:
                rt.policy = _reload(snapshot.path, cfg)  # the serving path's reference swap
                rt.snapshot_version = snapshot.version
                svc.metrics.model_version.labels(cfg.campaign_id).set(snapshot.version)
        svc.metrics.joins.inc(len(joined))
        svc.metrics.default_rewards.inc(sum(j.source == "default" for j in joined))
        svc.metrics.learned.inc(len(teach))
        return len(joined), oldest


def _reload(path: str, cfg: CampaignConfig) -> Policy:
    pol = Policy.load(path)
    pol.exploration_floor = cfg.exploration_floor
    return pol
