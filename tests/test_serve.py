"""The live rank/reward service (issue 14): rank → reward → learn, reward semantics (idempotent,
late, default, activation), strict models, auth, durability, restart, export → ope.

Each test builds its own app on a temporary SQLite file with a tiny featurizer and a hashing
text encoder (no MiniLM); the learner runs by hand (``learner.step()``) on a movable clock,
except in the freshness test, which runs the real learner thread."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from copyloop.envs.featurize import CopyFeaturizer
from copyloop.serve import ServiceConfig, create_app

WIDTH = 3
TEXTS = ["Shop the sale now", "Free shipping today", "New arrivals are in", "Save 20% this week"]


class HashEncoder:
    """A deterministic 16-d 'embedding' of a text (a stand-in for MiniLM in tests)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=16)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


PG_URL = (
    os.environ.get("COPYLOOP_TEST_PG_URL", "") if os.environ.get("COPYLOOP_SERVE_ON_PG") else ""
)
"""With ``COPYLOOP_SERVE_ON_PG=1`` and a server in ``COPYLOOP_TEST_PG_URL`` (``scripts/test.sh``
sets both for its second pass, on the cluster of ``scripts/pg.sh``): the serve suites run on
PostgreSQL, a fresh database per store, instead of SQLite files."""

sqlite_only = pytest.mark.skipif(bool(PG_URL), reason="reads or writes the SQLite file itself")


def store_url(db: Path) -> str:
    """The store of a test: the SQLite file ``db``, or (PostgreSQL run) a database named after
    it, created on first use (the same ``db`` reopens the same database, as after a restart)."""
    if not PG_URL:
        return f"sqlite:///{db}"
    import psycopg

    name = "t_" + hashlib.sha1(str(db).encode()).hexdigest()[:24]
    with psycopg.connect(PG_URL, autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname=%s", (name,)).fetchone() is None:
            c.execute(f'CREATE DATABASE "{name}"')
    PG_DATABASES.add(name)
    return f"{PG_URL.rsplit('/', 1)[0]}/{name}"


PG_DATABASES: set[str] = set()
"""Databases the running test created (tests/conftest.py drops them after it)."""


def raw_sql(url: str, query: str) -> list[tuple]:
    """Run ``query`` on a store's database directly (SQLite file or PostgreSQL)."""
    if url.startswith("postgres"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as c:
            cur = c.execute(query)
            return cur.fetchall() if cur.description else []
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as c:
        out = c.execute(query).fetchall()
        c.commit()
        return out


FEATURIZER = CopyFeaturizer.fit(HashEncoder().encode([f"line {i}" for i in range(40)]), pca_dim=4)


class Harness:
    def __init__(self, client: TestClient, db: Path, clock: Clock) -> None:
        self.client, self.db, self.clock = client, db, clock
        svc = client.app.state.service  # type: ignore[attr-defined]
        self.svc = svc
        self.url = svc.config.store
        self.admin = {"X-API-Key": svc.store.create_key("admin", "test").result()}
        self.key = {"X-API-Key": svc.store.create_key("client", "test").result()}

    def campaign(self, cid: str = "c1", **kw: object) -> dict:
        body = {
            "campaign_id": cid,
            "context_width": WIDTH,
            "agent_params": {"seed": 7},
            "reward_wait_s": 10.0,
            "variants": [{"text": t, "variant_id": f"v{i}"} for i, t in enumerate(TEXTS)],
            **kw,
        }
        r = self.client.post("/v1/admin/campaigns", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()

    def rank(self, **kw: object) -> dict:
        body = {"campaign_id": "c1", "context": [1.0, 0.0, 0.5], **kw}
        r = self.client.post("/v1/rank", json=body, headers=self.key)
        assert r.status_code == 200, r.text
        return r.json()

    def reward(self, event_id: str, value: float, **kw: object) -> dict:
        r = self.client.post(
            f"/v1/events/{event_id}/reward", json={"value": value, **kw}, headers=self.key
        )
        assert r.status_code == 200, r.text
        return r.json()

    def sql(self, query: str) -> list[tuple]:
        return raw_sql(self.url, query)

    def stats(self, cid: str = "c1") -> dict:
        return self.client.get(f"/v1/admin/campaigns/{cid}/stats", headers=self.admin).json()


def _config(db: Path, clock: Clock | None = None, **kw: object) -> ServiceConfig:
    return ServiceConfig(
        store=store_url(db),
        snapshot_dir=db.with_name(db.name + ".snapshots"),
        featurizer=FEATURIZER,
        encoder=HashEncoder(),
        clock=clock or Clock(),
        # publish and save on every learner step: the tests step the learner by hand
        **{"learn_interval_s": None, "publish_interval_s": 0, "snapshot_interval_s": 0, **kw},  # type: ignore[arg-type]
    )


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    clock = Clock()
    db = tmp_path / "s.db"
    with TestClient(create_app(_config(db, clock))) as client:
        yield Harness(client, db, clock)


def test_rank_reward_learn_changes_probabilities(h: Harness) -> None:
    """v2 always clicks, the others never: after one learner step its probability rises, the
    model version moves and a snapshot is listed."""
    h.campaign()
    first = h.rank(event_id="probe-0")
    p0 = first["probabilities"]["v2"]
    assert sum(first["probabilities"].values()) == pytest.approx(1.0)
    assert first["mode"] == "online" and first["model_version"] == "0"
    for _ in range(60):
        d = h.rank(candidate_ids=["v0", "v1", "v2", "v3"])
        h.reward(d["event_id"], 1.0 if d["variant_id"] == "v2" else 0.0)
    assert h.svc.learner.step() == 60  # earliest: final at once; the probe's window is open
    after = h.rank(event_id="probe-1")
    assert after["model_version"] != "0"
    assert after["probabilities"]["v2"] > max(p0, 0.5)
    models = h.client.get("/v1/admin/campaigns/c1/models", headers=h.admin).json()
    assert [m["version"] for m in models] == [1] and models[0]["rows_learned"] >= 60


def test_duplicate_reward_is_idempotent(h: Harness) -> None:
    h.campaign()
    e = h.rank()["event_id"]
    assert h.reward(e, 1.0)["status"] == "accepted"
    assert h.reward(e, 1.0)["status"] == "duplicate"
    assert h.reward(e, 1.0, reward_id="r2")["status"] == "accepted"
    r = h.client.post(f"/v1/events/{e}/reward", json={"value": 0.0}, headers=h.key)
    assert r.status_code == 409 and "reward_id" in r.json()["detail"]
    assert h.stats()["rewards"] == 2
    r = h.client.post("/v1/events/nope/reward", json={"value": 1.0}, headers=h.key)
    assert r.status_code == 404


def test_late_reward_is_counted_not_learned(h: Harness) -> None:
    h.campaign(aggregation="sum", default_reward=0.0)
    e = h.rank()["event_id"]
    h.clock.now += 11  # past the 10 s window
    assert h.reward(e, 1.0)["late"] is True
    h.svc.learner.step()
    s = h.stats()
    assert (s["late_rewards"], s["rewards"], s["default_rewards"]) == (1, 1, 1)
    assert s["mean_joined_reward"] == 0.0  # the late click did not count
    assert h.reward(e, 1.0, reward_id="again")["late"] is True


def test_default_reward_on_expiry_and_aggregation(h: Harness) -> None:
    h.campaign(aggregation="sum", default_reward=-0.5)
    quiet = h.rank()["event_id"]
    busy = h.rank()["event_id"]
    h.reward(busy, 1.0, reward_id="a")
    h.reward(busy, 2.0, reward_id="b")
    assert h.svc.learner.step() == 0  # sum waits for the window
    h.clock.now += 10.5
    assert h.svc.learner.step() == 2
    rows = dict(h.sql("SELECT event_id, reward FROM decisions"))
    assert rows == {quiet: -0.5, busy: 3.0}
    assert h.stats()["default_rewards"] == 1


def test_activation_semantics(h: Harness) -> None:
    """Deferred and never activated → joined but not learned; activated → learned; activation
    after the join → 409."""
    h.campaign(aggregation="max")
    never = h.rank(defer_activation=True)["event_id"]
    later = h.rank(defer_activation=True)["event_id"]
    r = h.client.post(f"/v1/events/{later}/activate", headers=h.key)
    assert r.status_code == 200
    for e in (never, later):
        h.reward(e, 1.0)
    h.clock.now += 11
    h.svc.learner.step()
    learned = dict(h.sql("SELECT event_id, learned FROM decisions"))
    assert learned == {never: 0, later: 1}
    r = h.client.post(f"/v1/events/{never}/activate", headers=h.key)
    assert r.status_code == 409
    assert h.client.post("/v1/events/x/activate", headers=h.key).status_code == 404


BAD_RANK = [
    ({"candidate_ids": []}, "candidate_ids"),
    ({"candidate_ids": ["v0", "v0"]}, "repeats"),
    ({"context": [1.0, 2.0]}, "declares 3"),
    ({"context": [True, 1.0, 1.0]}, "context"),
    ({"context": "1,2,3"}, "context"),
    ({"surprise": 1}, "surprise"),
    ({"candidate_ids": ["v0", "nope"]}, "not active"),
    ({"excluded_ids": ["v0", "v1", "v2", "v3"]}, "no candidates"),
    ({"campaign_id": ""}, "campaign_id"),
]


@pytest.mark.parametrize(("change", "match"), BAD_RANK)
def test_rank_refuses_bad_input(h: Harness, change: dict, match: str) -> None:
    h.campaign()
    body = {"campaign_id": "c1", "context": [1.0, 0.0, 0.5], **change}
    r = h.client.post("/v1/rank", json=body, headers=h.key)
    assert r.status_code == 422, r.text
    assert match in r.text


@pytest.mark.parametrize(
    "body", [{"value": True}, {"value": "1"}, {"value": 1.0, "extra": 1}, {}, {"value": None}]
)
def test_reward_refuses_bad_input(h: Harness, body: dict) -> None:
    h.campaign()
    e = h.rank()["event_id"]
    r = h.client.post(f"/v1/events/{e}/reward", json=body, headers=h.key)
    assert r.status_code == 422, r.text


def test_nan_and_oversized_bodies_are_refused(h: Harness) -> None:
    h.campaign()
    raw = '{"campaign_id": "c1", "context": [NaN, 0.0, 0.5]}'
    hdr = {**h.key, "content-type": "application/json"}
    assert h.client.post("/v1/rank", content=raw, headers=hdr).status_code == 422
    big = json.dumps({"campaign_id": "c1", "context": [0.0] * 20_000})
    assert h.client.post("/v1/rank", content=big, headers=hdr).status_code == 413


def test_auth_table_and_keys_hashed_at_rest(h: Harness) -> None:
    h.campaign()
    cases = [
        ("post", "/v1/rank", None, 401),
        ("post", "/v1/rank", {"X-API-Key": "cl_nothere_secret"}, 401),
        ("post", "/v1/rank", {"X-API-Key": h.key["X-API-Key"] + "x"}, 401),
        ("post", "/v1/rank", {"X-API-Key": "garbage"}, 401),
        ("post", "/v1/rank", h.key, 200),
        ("post", "/v1/rank", h.admin, 200),
        ("get", "/v1/admin/campaigns", None, 401),
        ("get", "/v1/admin/campaigns", h.key, 403),
        ("get", "/v1/admin/campaigns", h.admin, 200),
    ]
    body = {"campaign_id": "c1", "context": [1.0, 0.0, 0.5]}
    for method, path, headers, status in cases:
        kw = {"json": body} if method == "post" else {}
        r = getattr(h.client, method)(path, headers=headers or {}, **kw)
        assert r.status_code == status, (path, headers, r.text)
    secret = h.key["X-API-Key"].split("_", 2)[2]
    if not PG_URL:  # the file itself holds no secret
        raw = h.db.read_bytes() + (h.db.with_name(h.db.name + "-wal").read_bytes())
        assert secret.encode() not in raw
    assert not [r for r in h.sql("SELECT key_id FROM keys") if secret in r[0]]
    rows = h.sql("SELECT salt, hash FROM keys")
    assert len(rows) == 2 and all(len(s) == 16 and len(d) == 32 for s, d in rows)
    assert rows[0][0] != rows[1][0]  # one salt per key


def test_decision_is_durable_before_the_response(h: Harness) -> None:
    h.campaign()
    d = h.rank(event_id="durable-1", user_id="u9")
    (row,) = h.sql(
        "SELECT action, propensity, action_probs, user_id FROM decisions WHERE event_id='durable-1'"
    )
    assert row[0] == d["variant_id"] and row[3] == "u9"
    assert row[1] == pytest.approx(d["probabilities"][d["variant_id"]])
    assert json.loads(row[2]) == pytest.approx(list(d["probabilities"].values()))
    r = h.client.post(
        "/v1/rank",
        json={"campaign_id": "c1", "context": [0.0, 0, 0], "event_id": "durable-1"},
        headers=h.key,
    )
    assert r.status_code == 409


def test_shadow_and_logging_modes(h: Harness) -> None:
    h.campaign()
    h.client.patch("/v1/admin/campaigns/c1", json={"mode": "shadow"}, headers=h.admin)
    d = h.rank()
    h.reward(d["event_id"], 1.0)
    assert d["variant_id"] == "v0" and d["probabilities"]["v0"] == 1.0
    assert d["agent"]["variant_id"] in {"v0", "v1", "v2", "v3"}
    assert sum(d["agent"]["probabilities"]) == pytest.approx(1.0)
    r = h.client.patch("/v1/admin/campaigns/c1", json={"mode": "logging"}, headers=h.admin)
    assert r.json()["mode"] == "logging"
    served = {h.rank()["variant_id"] for _ in range(40)}
    assert len(served) >= 3
    d = h.rank()
    assert d["probabilities"] == {f"v{i}": 0.25 for i in range(4)}
    h.reward(d["event_id"], 1.0)
    h.svc.learner.step()
    assert h.stats()["learned"] == 1  # the shadow row taught; the logging rows did not
    audit = [a["action"] for a in h.svc.store.audit_log()]
    assert audit.count("campaign.update") == 2
    with pytest.raises(Exception, match="append-only"):
        h.sql("DELETE FROM audit")


def test_admin_variants_add_and_retire(h: Harness) -> None:
    h.campaign()
    r = h.client.post(
        "/v1/admin/campaigns/c1/variants",
        json={"variants": [{"text": "Last chance!"}]},
        headers=h.admin,
    )
    new = r.json()["variant_ids"][0]
    assert new in h.rank()["probabilities"]
    r = h.client.post(f"/v1/admin/campaigns/c1/variants/{new}/retire", headers=h.admin)
    assert r.status_code == 200
    assert new not in h.rank()["probabilities"]
    r = h.client.post(
        "/v1/admin/campaigns",
        headers=h.admin,
        json={"campaign_id": "c2", "context_width": 3, "agent": "nope"},
    )
    assert r.status_code == 422 and "agent" in r.text
    assert h.client.get("/healthz").json()["status"] == "ok"
    m = h.client.get("/metrics").text
    assert "copyloop_decisions_total" in m and "copyloop_request_seconds_bucket" in m


def test_restart_restores_snapshot_and_catches_up(tmp_path: Path) -> None:
    clock = Clock()
    db = tmp_path / "s.db"
    with TestClient(create_app(_config(db, clock))) as client:
        h = Harness(client, db, clock)
        h.campaign()
        for _ in range(20):
            d = h.rank()
            h.reward(d["event_id"], 1.0 if d["variant_id"] == "v1" else 0.0)
        h.svc.learner.step()
        before = h.rank(event_id="same")
        pending = h.rank()["event_id"]
        h.reward(pending, 1.0)  # settled, not joined when the service stops
        key = h.key
    with TestClient(create_app(_config(db, clock))) as client:
        svc = client.app.state.service  # type: ignore[attr-defined]
        assert svc.runtimes["c1"].policy.model_version == before["model_version"]
        body = {"campaign_id": "c1", "context": [1.0, 0.0, 0.5], "event_id": "same2"}
        again = client.post("/v1/rank", json=body, headers=key).json()
        assert again["probabilities"] == before["probabilities"]  # the key survives a restart
        assert svc.learner.step() == 1  # the settled one the old process had not joined
        assert svc.runtimes["c1"].snapshot_version == 2


def test_fresh_reward_visible_within_one_second(tmp_path: Path) -> None:
    """With the learner thread on, a reward (earliest aggregation) changes rank probabilities
    within 1 s."""
    cfg = _config(tmp_path / "s.db", learn_interval_s=0.02)
    cfg.clock = time.time
    with TestClient(create_app(cfg)) as client:
        h = Harness(client, tmp_path / "s.db", Clock())
        h.campaign()
        probe = h.rank(event_id="p0")["probabilities"]
        d = h.rank(candidate_ids=["v3"])
        t0 = time.perf_counter()
        h.reward(d["event_id"], 1.0)
        while time.perf_counter() - t0 < 1.0:
            now = h.rank()["probabilities"]
            if now != probe and h.svc.runtimes["c1"].snapshot_version >= 1:
                break
            time.sleep(0.01)
        waited = time.perf_counter() - t0
        assert waited < 1.0, f"the reward took {waited:.2f} s to show"


def test_export_is_a_decision_log_ope_reads(h: Harness, tmp_path: Path) -> None:
    from copyloop.cli import app
    from copyloop.contract import DecisionLog, read_variants_for

    h.campaign(aggregation="earliest", default_reward=0.0)
    for i in range(80):
        d = h.rank(user_id=f"u{i}")
        if d["variant_id"] in ("v1", "v2"):
            h.reward(d["event_id"], 1.0)
    h.rank(defer_activation=True)  # never activated: left out
    h.clock.now += 11
    h.rank()  # window still open: left out
    out = tmp_path / "logs.parquet"
    s = h.svc.store.export_log(out, now=h.clock.now)
    assert (s.rows, s.excluded_open, s.excluded_not_activated) == (80, 1, 1)
    log = DecisionLog.read(out)
    vt = read_variants_for(out)
    assert log.n_rows == 80 and vt is not None and vt.n_variants == 4
    np.save(tmp_path / "uniform.npy", np.full((80, 4), 0.25))
    r = CliRunner().invoke(
        app,
        [
            "ope",
            "--logs",
            str(out),
            "--target-probs",
            str(tmp_path / "uniform.npy"),
            "--estimators",
            "ipw,snipw",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    est = json.loads(r.output)
    assert est["rows"] == 80


def test_cli_keys_create_and_export(h: Harness, tmp_path: Path) -> None:
    """`copyloop keys create` prints a working key once; `copyloop serve export` writes the log
    (mounted here on a local typer app: the root CLI registers them in copyloop/cli.py)."""
    import typer

    from copyloop.cli_common import CopyloopGroup
    from copyloop.cli_serve import keys_app, serve_app

    cli = typer.Typer(cls=CopyloopGroup)
    cli.add_typer(serve_app, name="serve")
    cli.add_typer(keys_app, name="keys")
    url = h.url
    r = CliRunner().invoke(cli, ["keys", "create", "--scope", "client", "--store", url])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    h.campaign()
    body = {"campaign_id": "c1", "context": [1.0, 0.0, 0.5]}
    d = h.client.post("/v1/rank", json=body, headers={"X-API-Key": key}).json()
    h.reward(d["event_id"], 1.0)
    out = tmp_path / "x.parquet"
    r = CliRunner().invoke(cli, ["serve", "export", "--store", url, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == 1 and out.is_file()
    r = CliRunner().invoke(cli, ["keys", "create", "--scope", "root", "--store", url])
    assert r.exit_code == 2 and "scope" in r.output
    r = CliRunner().invoke(cli, ["serve", "export", "--store", "postgresql://x", "--out", "y"])
    assert r.exit_code == 2


# ---- shared models, snapshots with a join watermark ---------------------------------------------
def test_campaigns_sharing_a_model_learn_together_and_must_agree(h: Harness) -> None:
    """Rewards of campaign c1 move campaign c2's probabilities when they share a model; a
    campaign that names the model with other agent settings is refused (422)."""
    texts2 = ["Shop the sale now!", "Free shipping today!"]
    h.campaign("c1", model_id="m")
    body = {
        "campaign_id": "c2",
        "context_width": WIDTH,
        "model_id": "m",
        "reward_wait_s": 10.0,
        "variants": [{"text": t, "variant_id": f"w{i}"} for i, t in enumerate(texts2)],
    }
    r = h.client.post("/v1/admin/campaigns", json=body, headers=h.admin)
    assert r.status_code == 201, r.text
    assert r.json()["model_id"] == "m" and h.svc.runtimes["c2"].model is h.svc.runtimes["c1"].model
    bad = {**body, "campaign_id": "c3", "agent": "linucb", "variants": []}
    r = h.client.post("/v1/admin/campaigns", json=bad, headers=h.admin)
    assert r.status_code == 422 and "shared" in r.json()["detail"][0]["msg"]
    probe = {"campaign_id": "c2", "context": [1.0, 0.0, 0.5], "event_id": "p"}
    before = h.client.post("/v1/rank", json=probe, headers=h.key).json()
    for _ in range(40):
        d = h.rank(candidate_ids=["v0", "v1"])
        h.reward(d["event_id"], 1.0 if d["variant_id"] == "v1" else 0.0)
    assert h.svc.learner.step() == 40
    after = h.client.post("/v1/rank", json={**probe, "event_id": "p2"}, headers=h.key).json()
    assert after["model_version"] != before["model_version"]  # c2 serves the shared model
    models = h.client.get("/v1/admin/campaigns/c2/models", headers=h.admin).json()
    assert models and models[-1]["rows_learned"] == 40


def test_restart_relearns_the_rows_joined_after_the_last_snapshot(tmp_path: Path) -> None:
    """With snapshots far apart, a process that stops without saving (a crash) loses no
    learning: the next one loads the last snapshot and re-learns the rows joined after it,
    in order, so it decides exactly as the old learner's model did."""
    clock = Clock()
    db = tmp_path / "s.db"
    app = create_app(_config(db, clock, snapshot_interval_s=3600))
    with TestClient(app) as client:
        h = Harness(client, db, clock)
        h.campaign()
        for i in range(30):
            d = h.rank()
            h.reward(d["event_id"], 1.0 if d["variant_id"] in ("v1", "v3") else 0.0)
            if i % 10 == 9:
                h.svc.learner.step()  # three joins
                if i == 9:
                    h.svc.learner.save_all()  # one snapshot, after the first
        m = h.svc.models["c1"]
        assert m.snapshot_version == 1 and m.through_join == 3 and m.saved_join == 1
        want = h.rank(event_id="replay")
        key = h.key
        h.svc.learner.save_all = lambda: None  # type: ignore[method-assign]  # die unsaved
    with TestClient(create_app(_config(db, clock))) as client:
        svc = client.app.state.service  # type: ignore[attr-defined]
        m = svc.models["c1"]
        assert m.snapshot_version == 1 and m.through_join == 3
        body = {"campaign_id": "c1", "context": [1.0, 0.0, 0.5], "event_id": "replay2"}
        got = client.post("/v1/rank", json=body, headers=key).json()
        assert got["model_version"] == want["model_version"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-12)


def test_traffic_replays_users_against_a_running_service(market, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`copyloop traffic`'s engine against a real uvicorn server on 127.0.0.1 (the small
    market's campaigns sharing one model): every decision gets its reward, the store holds
    them all, the report's CTRs are the world's (served between uniform's floor and the oracle
    on the same users, on average), and the server's freshness histogram is read back."""
    import socket
    import threading

    import uvicorn

    from copyloop.cli_serve import register_market
    from copyloop.serve.store import open_store
    from copyloop.serve.traffic import TrafficConfig, run_traffic

    db = tmp_path / "t.db"
    url = store_url(db)
    st = open_store(url)
    n_camps = register_market(st, market)
    key = st.create_key("client", "test").result()
    st.close()
    cfg = ServiceConfig(
        store=url,
        snapshot_dir=tmp_path / "snapshots",
        featurizer=market.catalog.featurizer,
        encoder=HashEncoder(),
        learn_interval_s=0.05,
        publish_interval_s=0.1,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        t0 = time.time()
        while not server.started and time.time() - t0 < 30:
            time.sleep(0.05)
        assert server.started
        rep = run_traffic(
            TrafficConfig(
                url=f"http://127.0.0.1:{port}", key=key, requests=400, concurrency=4, window=100
            ),
            market,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert rep.errors == {} and rep.requests == 400 and rep.rewards == 400
    assert len(rep.curve) == 4 and rep.pairs_per_s > 0
    assert rep.uniform_ctr < rep.oracle_ctr and 0 < rep.served_ctr <= rep.oracle_ctr
    assert rep.server["freshness_count"] > 0  # the learner published what it learned
    st = open_store(url)
    try:
        n = sum(st.stats(c.campaign_id)["decisions"] for c in st.campaigns())
        assert n == 400 + 0 and len(st.campaigns()) == n_camps
    finally:
        st.close()


# (name, path, body: JSON or raw bytes, headers: "key" | "none" | "bad" | "text", status)
HOT_CASES: list[tuple[str, str, object, str, int]] = [
    ("rank", "/v1/rank", {"campaign_id": "c1", "context": [1.0, 0.0, 0.5]}, "key", 200),
    ("rank without key", "/v1/rank", {"campaign_id": "c1", "context": [1, 0, 0]}, "none", 401),
    ("rank, unknown key", "/v1/rank", {"campaign_id": "c1", "context": [1, 0, 0]}, "bad", 401),
    ("bool in context", "/v1/rank", {"campaign_id": "c1", "context": [True, 0, 0]}, "key", 422),
    (
        "empty candidates",
        "/v1/rank",
        {"campaign_id": "c1", "context": [1, 0, 0], "candidate_ids": []},
        "key",
        422,
    ),
    ("unknown campaign", "/v1/rank", {"campaign_id": "zz", "context": [1, 0, 0]}, "key", 404),
    ("context width", "/v1/rank", {"campaign_id": "c1", "context": [1.0]}, "key", 422),
    ("unknown field", "/v1/rank", {"campaign_id": "c1", "context": [1, 0, 0], "x": 1}, "key", 422),
    ("not JSON", "/v1/rank", b'{"campaign_id": "c1", "context": [1, 0', "key", 422),
    ("text content type", "/v1/rank", b'{"campaign_id":"c1","context":[1,0,0]}', "text", 422),
    ("empty body", "/v1/rank", b"", "key", 422),
    ("too large", "/v1/rank", b"[" + b"0," * 40_000 + b"0]", "key", 413),
    ("reward", "/v1/events/{e}/reward", {"value": 1.0}, "key", 200),
    ("duplicate reward", "/v1/events/{e}/reward", {"value": 1.0}, "key", 200),
    ("conflicting reward", "/v1/events/{e}/reward", {"value": 0.5}, "key", 409),
    ("bool reward", "/v1/events/{e}/reward", {"value": True}, "key", 422),
    ("NaN reward", "/v1/events/{e}/reward", b'{"value": NaN}', "key", 422),
    ("unknown event", "/v1/events/nope/reward", {"value": 1.0}, "key", 404),
    ("reward without key", "/v1/events/{e}/reward", {"value": 1.0}, "none", 401),
]


def test_hot_paths_answer_as_the_routes(h: Harness) -> None:
    """rank and reward on the app's fast path (ServiceApp.hot_paths) and through FastAPI's
    routes: the same status and body for every case of the table (successes: the same fields;
    their ids differ), and the same latency histogram counts."""
    h.campaign()
    app = h.client.app

    def run(hot: bool) -> list[tuple[int, object]]:
        app.hot_paths = hot  # type: ignore[attr-defined]
        event = h.rank()["event_id"]
        out = []
        for name, path, body, who, status in HOT_CASES:
            headers = {"none": {}, "bad": {"X-API-Key": "cl_nope_x"}, "key": h.key}.get(who, h.key)
            if who == "text":
                headers = {**h.key, "Content-Type": "text/plain"}
            elif isinstance(body, bytes):
                headers = {**headers, "Content-Type": "application/json"}
            kw = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = h.client.post(path.format(e=event), headers=headers, **kw)
            assert r.status_code == status, (hot, name, r.text)
            got = r.json()
            if status == 200:  # ids and draws differ between the passes: the fields and kinds
                got = {k: sorted(v) if k == "probabilities" else type(v).__name__
                       for k, v in got.items()} | {"status": got.get("status")}  # fmt: skip
            assert r.headers["content-type"] == "application/json", name
            out.append((status, json.loads(json.dumps(got).replace(event, "<event>"))))
        return out

    count = h.svc.metrics.latency.labels("reward", "POST")._sum.get
    fast, after_fast = run(True), count()
    routed = run(False)
    assert fast == routed
    assert 0 < after_fast < count()  # both paths time their requests


def test_hot_paths_skip_fastapi(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fast path on, rank and reward never enter FastAPI's stack; anything else does
    (and a trailing slash or another method is FastAPI's to answer)."""
    import fastapi

    h.campaign()
    calls: list[str] = []
    real = fastapi.FastAPI.__call__

    async def spy(self: fastapi.FastAPI, scope: dict, receive: object, send: object) -> None:
        calls.append(scope["path"])
        await real(self, scope, receive, send)  # type: ignore[arg-type]

    monkeypatch.setattr(fastapi.FastAPI, "__call__", spy)
    e = h.rank()["event_id"]
    h.reward(e, 1.0)
    assert calls == []
    assert h.client.get("/v1/rank", headers=h.key).status_code == 405
    assert h.client.get("/healthz").status_code == 200
    assert calls == ["/v1/rank", "/healthz"]


def test_hand_over_projects_every_campaign(h: Harness) -> None:
    """Each hand-over builds LinearTS's per-list tables for every campaign's active list
    (LinearTSPolicy.project), so a request without candidate_ids never reads the d×d
    posterior; a request with its own candidate list is still served (from the posterior)."""
    h.campaign()
    other = [{"text": f"{t}!", "variant_id": f"w{i}"} for i, t in enumerate(TEXTS)]
    h.campaign("c2", model_id=h.svc.runtimes["c1"].model.model_id, variants=other)
    for i in range(6):
        d = h.rank(campaign_id="c1" if i % 2 else "c2")
        h.reward(d["event_id"], 1.0)
    h.svc.learner.step()
    m = h.svc.runtimes["c1"].model
    srv = m.policy._srv  # type: ignore[attr-defined]
    lists = {tuple(rt.active) for rt in h.svc.runtimes.values()}
    assert len(srv.projected) == len(lists) == 2
    assert h.rank(candidate_ids=["v0", "v2"])["variant_id"] in ("v0", "v2")


def test_a_join_commits_in_chunks_and_a_failed_chunk_is_learned_once(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A learner step joins in chunks of JOIN_CHUNK rows, each its own join number and commit
    (the store's writer serves requests in between). If a chunk fails, the rows joined so far
    stay joined, the learner's copy is rebuilt from the store, and the next step joins and
    teaches the rest: every row is learned exactly once (the model matches one that never
    failed)."""
    from copyloop.serve import learner as learner_mod

    monkeypatch.setattr(learner_mod, "JOIN_CHUNK", 4)
    h.campaign()
    for _ in range(10):
        d = h.rank()
        h.reward(d["event_id"], 1.0 if d["variant_id"] == "v2" else 0.0)
    store = h.svc.store
    real, calls = store.commit_join, []

    def flaky(joined):  # type: ignore[no-untyped-def]
        calls.append(len(joined))
        if len(calls) == 2:
            raise RuntimeError("the database went away (test)")
        return real(joined)

    monkeypatch.setattr(store, "commit_join", flaky)
    with pytest.raises(RuntimeError, match="went away"):
        h.svc.learner.step()
    assert calls == [4, 4]
    assert h.sql("SELECT count(*) FROM decisions WHERE joined=1") == [(4,)]
    assert h.svc.learner.step() == 6  # the rest: chunks of 4 and 2
    assert calls == [4, 4, 4, 2]
    assert h.sql("SELECT count(DISTINCT join_seq) FROM decisions WHERE joined=1") == [(3,)]
    m = h.svc.models["c1"]
    assert m.through_join == h.sql("SELECT max(join_seq) FROM decisions")[0][0]
    # the same rows, taught once each in one batch, make the same posterior
    from copyloop.contract import DecisionLog
    from copyloop.serve.service import new_policy
    from copyloop.serve.store import to_log

    got = h.sql("SELECT event_id, reward FROM decisions ORDER BY seq")
    rows = [store.decision(e) for e, _ in got]
    twin = new_policy(m.cfg).attach(m.variants)
    log = to_log(rows, [v for _, v in got], m.cfg.context_width, DecisionLog)
    twin.learn_log(log, m.variants)
    np.testing.assert_allclose(m.learner_policy._A, twin._A)  # type: ignore[attr-defined]
