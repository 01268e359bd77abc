"""Prometheus metrics of one service (its own registry: no process-global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Request latency, decisions, rewards (late, duplicate, default), joins, learner lag,
    model versions and the store's group commit."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "copyloop_request_seconds",
            "HTTP request latency by endpoint",
            ["endpoint", "method"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.decisions = Counter(
            "copyloop_decisions", "Decisions made (durable)", ["campaign", "mode"], registry=r
        )
        self.rewards = Counter("copyloop_rewards", "Rewards accepted (incl. late)", registry=r)
        self.late_rewards = Counter(
            "copyloop_late_rewards",
            "Rewards after their join window (stored, not learned)",
            registry=r,
        )
        self.duplicate_rewards = Counter(
            "copyloop_duplicate_rewards", "Repeated rewards (same event and reward id)", registry=r
        )
        self.joins = Counter("copyloop_joins", "Decisions joined by the learner", registry=r)
        self.default_rewards = Counter(
            "copyloop_default_rewards",
            "Joins that took the default reward (window expired)",
            registry=r,
        )
        self.learned = Counter("copyloop_learned_rows", "Rows the learner taught", registry=r)
        self.learner_lag = Gauge(
            "copyloop_learner_lag_seconds",
            "Age of the oldest settled decision the learner has not joined",
            registry=r,
        )
        self.model_version = Gauge(
            "copyloop_model_version", "Last saved snapshot version", ["model"], registry=r
        )
        self.publishes = Counter(
            "copyloop_publishes", "Models handed to the serving path", ["model"], registry=r
        )
        self.freshness = Histogram(
            "copyloop_reward_to_serving_seconds",
            "From a reward's arrival (or its window's close) to the serving model holding it",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0),
        )
        self.pickup = Histogram(
            "copyloop_snapshot_pickup_seconds",
            "A replica: from the learner recording a snapshot to this process serving it",
            registry=r,
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
        )
        self.commits = Gauge("copyloop_store_commits", "Group-commit transactions", registry=r)
        self.commit_ops = Gauge(
            "copyloop_store_commit_ops", "Writes carried by group commits", registry=r
        )
        self.commit_retries = Gauge(
            "copyloop_store_commit_retries",
            "Group commits rerun after a transient failure (a deadlock between processes)",
            registry=r,
        )
        self.store_reconnects = Gauge(
            "copyloop_store_reconnects",
            "Store writer connections replaced after the connection itself failed",
            registry=r,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def latency_child(self, endpoint: str, method: str) -> Any:
        """``latency.labels(endpoint, method)``, looked up once: prometheus-client's
        ``labels()`` takes a lock and validates the labels on every call, a cost the request
        path pays twice per rank+reward pair."""
        return self._child(self.latency, "latency", endpoint, method)

    def decision_child(self, campaign: str, mode: str) -> Any:
        """``decisions.labels(campaign, mode)``, looked up once (see :meth:`latency_child`)."""
        return self._child(self.decisions, "decisions", campaign, mode)

    def _child(self, metric: Any, name: str, *labels: str) -> Any:
        key = (name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child
