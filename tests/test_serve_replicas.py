"""Several processes on one store (issue 16, part 1): a learner and API replicas.

Each "process" here is its own app + Service on the same store (in one test process, so the
follower and learner are stepped by hand): a decision taken on one replica is rewarded through
another and joined by the learner; a replica serves the learner's snapshot and decides exactly
as the learner does on it; admin changes made on any replica reach the others; the learner role
keeps a bounded set of snapshot files. The multi-process run under load is in
``tests/test_serve_crash.py`` and ``bench/serve_replicas.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from test_serve import Clock, Harness, _config

from copyloop.serve import create_app


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[tuple[Harness, Harness, Harness]]:
    """(learner, replica a, replica b) on one SQLite file, one clock; followers by hand."""
    clock = Clock()
    db = tmp_path / "s.db"
    with ExitStack() as stack:
        out = []
        for role in ("learner", "api", "api"):
            cfg = _config(db, clock, role=role, follow_interval_s=3600.0)
            client = stack.enter_context(TestClient(create_app(cfg)))
            out.append(Harness(client, db, clock))
        yield out[0], out[1], out[2]


def _follow(*hs: Harness) -> None:
    for h in hs:
        h.svc.follower.step()


def test_reward_joins_whichever_replica_took_it(trio: tuple[Harness, Harness, Harness]) -> None:
    learner, a, b = trio
    a.campaign()
    _follow(learner, b)  # the campaign made on replica a reaches the learner and replica b
    assert "c1" in learner.svc.runtimes and "c1" in b.svc.runtimes
    events = [(a if i % 2 else b).rank()["event_id"] for i in range(40)]
    assert len(set(events)) == 40
    assert {e.split("-")[0] for e in events} == {a.svc._eid_prefix, b.svc._eid_prefix}
    for i, e in enumerate(events):  # the reward goes through the other replica
        assert (b if i % 2 else a).reward(e, float(i % 3 == 0))["status"] == "accepted"
    assert a.svc.learner.step() == 0 == a.svc.learner.step()  # a replica never learns
    assert learner.svc.learner.step() == 40
    st = learner.stats()
    assert st["joined"] == 40 and st["learned"] == 40


def test_replica_serves_the_learners_snapshot(trio: tuple[Harness, Harness, Harness]) -> None:
    learner, a, b = trio
    learner.campaign()
    _follow(a, b)
    for _ in range(30):
        e = a.rank(context=[1.0, 0.0, 0.5])
        a.reward(e["event_id"], 1.0 if e["variant_id"] == "v2" else 0.0)
    learner.svc.learner.step()  # joins, publishes and (learner role) saves a snapshot
    version = learner.svc.models["c1"].snapshot_version
    assert version >= 1
    assert a.svc.models["c1"].snapshot_version < version
    assert a.svc.follower.step() == 1 and a.svc.follower.step() == 0
    assert a.svc.models["c1"].snapshot_version == version
    # the same event on the same snapshot: the same decision in both processes
    ctx = [0.2, 0.9, -0.4]
    mine = learner.svc.models["c1"].policy.decide(ctx, ["v0", "v1", "v2", "v3"], event_id="e-1")
    theirs = a.svc.models["c1"].policy.decide(ctx, ["v0", "v1", "v2", "v3"], event_id="e-1")
    assert mine.variant_id == theirs.variant_id
    assert mine.probs == pytest.approx(theirs.probs, abs=1e-12)
    assert mine.model_version == theirs.model_version
    # the replica measured how long the snapshot took to reach it (clock did not move: 0 s)
    assert a.svc.metrics.pickup._sum.get() == 0.0  # type: ignore[attr-defined]


def test_admin_changes_reach_every_process(trio: tuple[Harness, Harness, Harness]) -> None:
    learner, a, b = trio
    a.campaign()
    _follow(learner, b)
    r = b.client.post(
        "/v1/admin/campaigns/c1/variants",
        json={"variants": [{"text": "Brand new line", "variant_id": "v9"}]},
        headers=b.admin,
    )
    assert r.status_code == 200, r.text
    r = b.client.post("/v1/admin/campaigns/c1/variants/v0/retire", headers=b.admin)
    assert r.status_code == 200, r.text
    r = b.client.patch("/v1/admin/campaigns/c1", json={"exploration_floor": 0.05}, headers=b.admin)
    assert r.status_code == 200, r.text
    _follow(learner, a)
    for h in (learner, a):
        rt = h.svc.runtimes["c1"]
        assert rt.active == ["v1", "v2", "v3", "v9"]
        assert "v9" in rt.model.variants
        assert rt.cfg.exploration_floor == 0.05 == rt.model.policy.exploration_floor
    # a replica ranks the new line (features from the same featurizer) and never the retired
    seen = {a.rank()["variant_id"] for _ in range(60)}
    assert "v9" in seen and "v0" not in seen
    assert learner.svc.follower.step() == 0  # nothing new: no re-read


def test_learner_role_keeps_a_bounded_set_of_snapshot_files(tmp_path: Path) -> None:
    from copyloop.serve.learner import KEEP_HANDOVERS

    clock = Clock()
    db = tmp_path / "s.db"
    cfg = _config(db, clock, role="learner", publish_interval_s=0.0, snapshot_interval_s=0.0)
    with TestClient(create_app(cfg)) as client:
        h = Harness(client, db, clock)
        h.campaign()
        svc = h.svc
        # checkpoint every 3 hand-overs (snapshot 0.03 s / publish 0.01 s)
        svc.config.publish_interval_s, svc.config.snapshot_interval_s = 0.01, 0.03
        m = svc.models["c1"]
        saves = 14
        for _ in range(saves):
            e = h.rank()
            h.reward(e["event_id"], 1.0)
            m.saved_at = m.published_at = 0.0  # due now, whatever the monotonic clock says
            svc.learner.step()
        assert m.snapshot_version == saves
        files = sorted(int(p.stem) for p in (svc.snapshot_dir / "c1").glob("*.npz"))
        newest = list(range(saves - KEEP_HANDOVERS + 1, saves + 1))
        checkpoints = [v for v in range(1, saves - KEEP_HANDOVERS + 1) if v % 3 == 0]
        assert files == checkpoints + newest
        assert len(svc.store.snapshots("c1")) == saves  # every snapshot stays on record


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"role": "replica"}, "`role` must be one of all, api, learner"),
        ({"follow_interval_s": 0.0}, "`follow_interval_s` must be > 0"),
        ({"commit_linger_s": -0.001}, r"`commit_linger_s` must be in \[0, 0.1\]"),
        ({"commit_linger_s": 0.5}, r"`commit_linger_s` must be in \[0, 0.1\]"),
    ],
)
def test_bad_roles_are_refused(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _config(tmp_path / "s.db", **change)
