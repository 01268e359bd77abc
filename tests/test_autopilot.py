"""The autopilot's gate (issue 17): candidates on trial promoted or rejected from the service's
own log at fixed looks — its stated risk under the null, its power, looks that do not change
with later traffic, and the whole round through a running service's admin API."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")

from test_serve import Harness, h  # noqa: F401  (the fixture)

from copyloop.experiments.autopilot_gate import procedure, synthetic_log
from copyloop.serve.autopilot import GateSettings, Verdict, judge_rows, run_once

SETTINGS = GateSettings(alpha=0.05, min_impressions=200, max_impressions=1600)


def test_the_gate_keeps_its_stated_risk_and_finds_a_better_line() -> None:
    """40 seeded campaigns whose candidate is exactly as good as the incumbent (5 % vs the
    incumbent's 5 %): promoted in at most 6 (alpha = 5 %: 2 expected; P(Binom(40, .05) >= 7)
    = 0.003). 20 campaigns whose candidate doubles the CTR: promoted in at least 16."""
    null = [procedure(synthetic_log(seed, 0.05), SETTINGS) for seed in range(40)]
    assert null.count("promote") <= 6, null
    assert "wait" not in null  # the last look always decides
    better = [procedure(synthetic_log(1000 + seed, 0.10), SETTINGS) for seed in range(20)]
    assert better.count("promote") >= 16, better


def test_a_look_does_not_change_with_later_traffic() -> None:
    data = synthetic_log(7, 0.08)
    shown = np.flatnonzero(data.action == 4)
    first = judge_rows(data.take(np.arange(shown[250])), "c", "new", 4, SETTINGS)  # look 0 only
    more = judge_rows(data.take(np.arange(shown[390])), "c", "new", 4, SETTINGS)  # still look 0
    assert first.look == more.look == 0 and first.impressions < more.impressions
    assert first.candidate == more.candidate and first.incumbent == more.incumbent
    assert first.action == more.action
    early = judge_rows(data.take(np.arange(shown[150])), "c", "new", 4, SETTINGS)
    assert early.action == "wait" and early.look is None and "first look" in early.reason


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"min_impressions": 5}, "min_impressions"),
        ({"min_impressions": 500, "max_impressions": 100}, "max_impressions"),
    ],
)
def test_bad_gate_settings_are_refused(kw: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        GateSettings(**kw)


def test_one_round_through_the_service(h: Harness) -> None:  # noqa: F811
    """A good candidate (CTR 30 %) is promoted and a bad one (0 %) rejected against actives
    at 5–10 %, judged by the service's own agent with and without each (the judge endpoint);
    the verdicts reach the service through its admin API and their numbers are in the audit
    log; the next round has nothing left to judge."""
    h.campaign(control="v0")
    h.client.patch("/v1/admin/campaigns/c1", json={"explore_share": 0.4}, headers=h.admin)
    trial = {
        "variants": [
            {"text": "A winner", "variant_id": "good"},
            {"text": "A dud", "variant_id": "bad"},
        ]
    }
    r = h.client.post("/v1/admin/campaigns/c1/candidates", json=trial, headers=h.admin)
    assert r.status_code == 200, r.text
    ctr = {"v0": 0.05, "v1": 0.07, "v2": 0.1, "v3": 0.06, "good": 0.3, "bad": 0.0}
    rng = np.random.default_rng(3)
    for _ in range(1500):
        out = h.rank(context=rng.normal(size=3).tolist())
        h.reward(out["event_id"], float(rng.random() < ctr[out["variant_id"]]))
    h.svc.learner.step()

    def settle(cid: str, vid: str, promote: bool, evidence: dict) -> None:
        verdict = "promote" if promote else "reject"
        r = h.client.post(
            f"/v1/admin/campaigns/{cid}/candidates/{vid}/{verdict}",
            json={"evidence": evidence},
            headers=h.admin,
        )
        assert r.status_code == 200, r.text

    def judge(cid: str) -> list[Verdict]:
        body = {"min_impressions": 100, "max_impressions": 200}
        r = h.client.post(f"/v1/admin/campaigns/{cid}/judge", json=body, headers=h.admin)
        assert r.status_code == 200, r.text
        return [Verdict(campaign_id=cid, **v) for v in r.json()]

    verdicts = {v.variant_id: v for v in run_once(judge, settle, ["c1"])}
    assert verdicts["good"].action == "promote", verdicts["good"].reason
    assert verdicts["bad"].action == "reject", verdicts["bad"].reason
    rt = h.svc.runtimes["c1"]
    assert "good" in rt.active and "bad" not in rt.active and rt.cfg.candidates == []
    audit = {a["action"]: a["detail"] for a in h.svc.store.audit_log()}
    ev = audit["candidates.promote"]["evidence"]
    assert ev["candidate"]["lower"] > ev["incumbent"]["estimate"] and ev["look"] is not None
    assert run_once(judge, settle, ["c1"]) == []
