"""The click recipe's pool from the service's own log (issue 17: the generator learns from the
clicks its proposals got live): lines grouped by the prompt that wrote them, scored only by
their impressions while on trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from test_serve import Harness, h  # noqa: F401  (the fixture)

from copyloop.agents.offline import read_log
from copyloop.contract import read_variants_for
from copyloop.generator.propose import proposal_id
from copyloop.generator.service_pool import pool_from_log

A, B, C = "Line that always clicks", "Line that never clicks", "A lone line"
IDS = {A: proposal_id("c1", A, 0), B: proposal_id("c1", B, 0), C: proposal_id("c1", C, 1)}


def _serve(h: Harness, n: int) -> dict[str, int]:  # noqa: F811
    served: dict[str, int] = {}
    for _ in range(n):
        d = h.rank(context=[1.0, 0.0, 0.5])
        v = d["variant_id"]
        served[v] = served.get(v, 0) + 1
        h.reward(d["event_id"], 1.0 if v == IDS[A] else 0.0)
    h.svc.learner.step()
    return served


def _pool(h: Harness, path: Path, **kw):  # noqa: F811
    h.svc.store.export_log(path)
    log = read_log(path, read_variants_for(path))
    return pool_from_log(log, {"c1": 7}, lambda c, s: f"prompt {c}/{s}", model="m@v", **kw)


def test_pool_scores_proposals_by_their_impressions_on_trial(h: Harness, tmp_path: Path) -> None:  # noqa: F811
    h.campaign(control="v0")
    r = h.client.patch("/v1/admin/campaigns/c1", json={"explore_share": 0.6}, headers=h.admin)
    assert r.status_code == 200, r.text
    body = {"variants": [{"variant_id": IDS[t], "text": t} for t in (A, B, C)]}
    r = h.client.post("/v1/admin/campaigns/c1/candidates", json=body, headers=h.admin)
    assert r.status_code == 200, r.text
    served = _serve(h, 600)
    pool = _pool(h, tmp_path / "a.parquet", min_impressions=20)
    # one prompt (campaign 7, segment 0) with two scored lines; the lone segment-1 line is out
    assert pool.prompts == ["prompt 7/0"] and list(pool.campaigns) == [7]
    got = dict(
        zip(pool.texts, zip(pool.impressions, pool.clicks, pool.reward, strict=True), strict=True)
    )
    assert set(got) == {A, B}
    assert got[A][0] == served[IDS[A]] and got[A][1] == served[IDS[A]] and got[A][2] == 1.0
    assert got[B][0] == served[IDS[B]] and got[B][1] == 0
    assert pool.meta["provenance"]["signal"] == "clicks" and pool.meta["model"] == "m@v"
    # once promoted, A is served by the agent: those rows are not A's trial and stay out
    r = h.client.post(
        f"/v1/admin/campaigns/c1/candidates/{IDS[A]}/promote", json={}, headers=h.admin
    )
    assert r.status_code == 200, r.text
    more = _serve(h, 400)
    assert more.get(IDS[A], 0) > 0
    pool2 = _pool(h, tmp_path / "b.parquet", min_impressions=20)
    got2 = dict(zip(pool2.texts, pool2.impressions, strict=True))
    assert got2[A] == got[A][0]  # unchanged
    assert got2[B] == got[B][0] + more.get(IDS[B], 0)
    # and the pool is one generator tune reads
    path = pool2.save(tmp_path / "pool.parquet")
    from copyloop.generator.preference import SamplePool

    back = SamplePool.load(path)
    assert back.texts == pool2.texts and np.array_equal(back.clicks, pool2.clicks)


def test_a_log_without_proposals_or_enough_impressions_is_refused(
    h: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    h.campaign()
    _serve(h, 50)
    with pytest.raises(ValueError, match="no generator proposals"):
        _pool(h, tmp_path / "a.parquet")
    r = h.client.patch("/v1/admin/campaigns/c1", json={"explore_share": 0.5}, headers=h.admin)
    assert r.status_code == 200, r.text
    body = {"variants": [{"variant_id": IDS[t], "text": t} for t in (A, B)]}
    r = h.client.post("/v1/admin/campaigns/c1/candidates", json=body, headers=h.admin)
    assert r.status_code == 200, r.text
    _serve(h, 60)
    with pytest.raises(ValueError, match="no prompt has two proposals"):
        _pool(h, tmp_path / "b.parquet", min_impressions=1000)
