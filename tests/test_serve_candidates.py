"""New copy on trial in the live service (issue 17): the exploration slice and its logged
propensities, promotion and rejection, the protected control, variant-set versions, and the
one-step rollback of a variant set and its model snapshot, all on the audit log."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from test_serve import Harness, h  # noqa: F401  (the fixture)

TRIAL = [
    {"text": "Brand new line one", "variant_id": "n1"},
    {"text": "Fresh angle", "variant_id": "n2"},
]


def _candidates(h: Harness, share: float = 0.3) -> None:  # noqa: F811
    h.campaign(control="v0")
    r = h.client.patch("/v1/admin/campaigns/c1", json={"explore_share": share}, headers=h.admin)
    assert r.status_code == 200, r.text
    r = h.client.post(
        "/v1/admin/campaigns/c1/candidates", json={"variants": TRIAL}, headers=h.admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["variant_ids"] == ["n1", "n2"]


def _settle(h: Harness, vid: str, verdict: str, evidence: dict | None = None) -> dict:  # noqa: F811
    r = h.client.post(
        f"/v1/admin/campaigns/c1/candidates/{vid}/{verdict}",
        json={"evidence": evidence or {}},
        headers=h.admin,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_the_slice_serves_candidates_at_their_logged_probability(h: Harness) -> None:  # noqa: F811
    """Each candidate gets share / 2 of the requests; the logged probabilities are the
    mixture's: the candidates' ``share / 2`` each, the active variants' summing to
    ``1 - share``. 3,000 requests: the served share of each candidate is within 4 standard
    errors of 0.15 (sd of the share 0.0065)."""
    _candidates(h, share=0.3)
    rng = np.random.default_rng(0)
    served: Counter[str] = Counter()
    n = 3000
    for _ in range(n):
        out = h.rank(context=rng.normal(size=3).tolist())
        p = out["probabilities"]
        assert set(p) == {"v0", "v1", "v2", "v3", "n1", "n2"}
        assert p["n1"] == pytest.approx(0.15) and p["n2"] == pytest.approx(0.15)
        assert sum(p[v] for v in ("v0", "v1", "v2", "v3")) == pytest.approx(0.7)
        served[out["variant_id"]] += 1
    se = (0.15 * 0.85 / n) ** 0.5
    for c in ("n1", "n2"):
        assert abs(served[c] / n - 0.15) < 4 * se, (c, served[c] / n)
    # a request that names its candidates is not widened by the slice
    r = h.rank(candidate_ids=["v1", "v2"])
    assert set(r["probabilities"]) == {"v1", "v2"}
    # excluded candidates leave the slice
    r = h.rank(excluded_ids=["n1"])
    assert "n1" not in r["probabilities"] and r["probabilities"]["n2"] == pytest.approx(0.3)


def test_promote_reject_and_the_protected_control(h: Harness) -> None:  # noqa: F811
    _candidates(h)
    out = _settle(h, "n1", "promote", {"lower": 0.031, "incumbent": 0.025})
    assert out["action"] == "candidates.promote" and "n1" in out["active"]
    assert out["candidates"] == ["n2"]
    out = _settle(h, "n2", "reject")
    assert out["candidates"] == [] and "n2" not in out["active"]
    seen = {h.rank()["variant_id"] for _ in range(200)}
    assert "n2" not in seen
    r = h.client.post("/v1/admin/campaigns/c1/candidates/n2/promote", json={}, headers=h.admin)
    assert r.status_code == 404 and "not a candidate" in r.text
    r = h.client.post("/v1/admin/campaigns/c1/variants/v0/retire", headers=h.admin)
    assert r.status_code == 409 and "protected control" in r.text
    r = h.client.patch("/v1/admin/campaigns/c1", json={"control": "n2"}, headers=h.admin)
    assert r.status_code == 422 and "not an active variant" in r.text
    audit = [a for a in h.svc.store.audit_log() if a["action"].startswith("candidates.")]
    assert [a["action"] for a in audit] == [
        "candidates.add",
        "candidates.promote",
        "candidates.reject",
    ]
    assert audit[1]["detail"]["evidence"] == {"lower": 0.031, "incumbent": 0.025}


@pytest.mark.parametrize(
    ("body", "status", "word"),
    [
        ({"control": "nope"}, 422, "control"),
        ({"explore_share": 1.0}, 422, "explore_share"),
        ({"candidates": ["v1"]}, 422, "candidates"),
    ],
)
def test_bad_trial_settings_are_refused(h: Harness, body: dict, status: int, word: str) -> None:  # noqa: F811
    r = h.client.post(
        "/v1/admin/campaigns",
        json={
            "campaign_id": "c9",
            "context_width": 3,
            "variants": [{"text": "a", "variant_id": "a"}],
            **body,
        },
        headers=h.admin,
    )
    assert r.status_code == status and word in r.text, r.text


def _state(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith("state/")}


def test_rollback_restores_the_variant_set_and_its_snapshot(h: Harness, tmp_path: Path) -> None:  # noqa: F811
    _candidates(h)
    rng = np.random.default_rng(1)

    def traffic(n: int) -> None:
        for _ in range(n):
            out = h.rank(context=rng.normal(size=3).tolist())
            h.reward(out["event_id"], float(out["variant_id"] in ("v2", "n1")))
        h.svc.learner.step()

    traffic(80)  # snapshot 1
    sets = h.client.get("/v1/admin/campaigns/c1/variant-sets", headers=h.admin).json()
    r = h.client.patch("/v1/admin/campaigns/c1", json={"exploration_floor": 0.01}, headers=h.admin)
    assert r.status_code == 200
    marked = h.client.get("/v1/admin/campaigns/c1/variant-sets", headers=h.admin).json()[-1]
    assert marked["snapshot_version"] == h.svc.models["c1"].snapshot_version >= 1
    snap_then = {s.version: s for s in h.svc.store.snapshots("c1")}[marked["snapshot_version"]]
    traffic(80)
    _settle(h, "n1", "promote")
    _settle(h, "n2", "reject")
    h.client.post("/v1/admin/campaigns/c1/variants/v3/retire", headers=h.admin)
    traffic(80)
    before = h.svc.models["c1"].learner_policy.model_version
    n_sets, n_snaps = len(sets), len(h.svc.store.snapshots("c1"))

    r = h.client.post(
        "/v1/admin/campaigns/c1/rollback", json={"variant_set": marked["version"]}, headers=h.admin
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["action"] == "rollback" and out["active"] == marked["active"]
    assert out["candidates"] == marked["candidates"] == ["n1", "n2"]
    rt = h.svc.runtimes["c1"]
    assert rt.active == marked["active"] and rt.cfg.candidates == ["n1", "n2"]
    # the model: the snapshot's learned state exactly, saved as a new snapshot, new version
    snaps = h.svc.store.snapshots("c1")
    assert len(snaps) == n_snaps + 1 and out["detail"]["new_snapshot"] == snaps[-1].version
    then, now = _state(snap_then.path), _state(snaps[-1].path)
    assert then.keys() == now.keys()
    for k in then:
        np.testing.assert_array_equal(then[k], now[k])
    assert int(h.svc.models["c1"].policy.model_version) > int(before)
    # nothing deleted: every earlier set and snapshot is still on record
    after = h.client.get("/v1/admin/campaigns/c1/variant-sets", headers=h.admin).json()
    assert [s["version"] for s in after] == list(range(1, len(after) + 1))
    assert len(after) > n_sets and after[-1]["action"] == "rollback"
    # unknown versions
    r = h.client.post("/v1/admin/campaigns/c1/rollback", json={"variant_set": 99}, headers=h.admin)
    assert r.status_code == 404 and "no variant set 99" in r.text


def test_traffic_scores_copy_outside_the_catalog_as_the_world_does(market) -> None:  # type: ignore[no-untyped-def]
    """``extra_copy``: lines the service may serve that the catalog lacks are scored by the
    world's ``ctr_of_texts`` for each request's user — for the catalog's own texts, exactly
    the catalog's CTRs."""
    from copyloop.serve.traffic import TrafficConfig, _World

    cat = market.catalog
    c = 2
    vids = [cat.variant_ids[v] for v in cat.slots[c] if v >= 0]
    texts = [cat.variants.texts[v] for v in cat.slots[c] if v >= 0]
    cid = cat.campaign_ids[c]
    extra = {f"x{k}": (cid, t) for k, t in enumerate(texts)}
    cfg = TrafficConfig(url="http://127.0.0.1:1", key="k", requests=400, seed=3, extra_copy=extra)
    w = _World(market, cfg)
    rows = [i for i in range(400) if w.campaign_ids[i] == cid]
    assert rows
    for i in rows:
        for k, v in enumerate(vids):
            assert w.true_ctr(i, f"x{k}") == pytest.approx(w.true_ctr(i, v), abs=1e-7)
    other = next(i for i in range(400) if w.campaign_ids[i] != cid)
    assert w.true_ctr(other, "x0") is None  # another campaign's request: not its copy
    assert w.true_ctr(rows[0], "nope") is None
    with pytest.raises(ValueError, match="not in the market"):
        _World(market, TrafficConfig(url="http://x", key="k", extra_copy={"y": ("zz", "t")}))
