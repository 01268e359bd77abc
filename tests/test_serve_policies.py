"""New learning settings (issue 17's "new policies"): candidate agent settings judged on the
service's own log by progressive validation, adopted only when their lower bound beats the
online policy, recorded in the audit log, and undone by a rollback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from test_agent_cli import import_clicks, write_clicks
from test_serve import Harness, h  # noqa: F401  (the fixture)

from copyloop.agents.offline import read_log, store_for
from copyloop.contract import read_variants_for
from copyloop.serve.policies import PolicyCandidate, PolicySettings, judge_policies

# True CTR of v0..v3 per segment (context = the segment's one-hot): the best differs by segment.
CTR = np.array([[0.40, 0.05, 0.05, 0.05], [0.05, 0.40, 0.05, 0.05], [0.05, 0.05, 0.05, 0.40]])


def _log(tmp: Path, n: int, seed: int, flat: bool = False):
    import test_agent_cli as t

    old = t.CTR
    if flat:
        t.CTR = np.full_like(old, 0.05)
    try:
        p = import_clicks(write_clicks(tmp / f"c{seed}.csv", n, seed=seed), tmp / f"c{seed}.pq")
    finally:
        t.CTR = old
    log = read_log(p, read_variants_for(p))
    return log, store_for(log.variants)


def test_a_contextual_setting_beats_uniform_logging(tmp_path: Path) -> None:
    """On a uniform log where the best headline differs by segment, LinearTS is promoted, the
    logging policy itself is held (gain exactly 0), and the verdict is the same twice."""
    log, store = _log(tmp_path, 8000, seed=0)
    cands = [PolicyCandidate.parse("linear_ts"), PolicyCandidate.parse("uniform")]
    first = judge_policies(log, store, cands, PolicySettings())
    lin, uni = first
    assert lin.action == "promote" and lin.lower is not None and lin.lower > 0
    assert lin.rows == 4000 and lin.alpha == pytest.approx(0.025)
    assert uni.action == "hold" and uni.difference == pytest.approx(0.0)
    assert lin.online_estimate == pytest.approx(float(np.nanmean(log.reward[4000:])), abs=0.02)
    again = judge_policies(log, store, cands, PolicySettings())
    assert [v.evidence() for v in again] == [v.evidence() for v in first]


def test_no_gain_is_promoted_at_most_at_the_stated_risk(tmp_path: Path) -> None:
    """Every headline has the same CTR: any setting is exactly as good as the logger. Over 20
    seeded logs LinearTS is promoted in at most 3 (alpha = 5 %: expected 1; P(>= 4) = 1.6 %)."""
    promoted = 0
    for seed in range(20):
        log, store = _log(tmp_path, 4000, seed=seed, flat=True)
        (v,) = judge_policies(
            log, store, [PolicyCandidate.parse("linear_ts")], PolicySettings(min_rows=1000)
        )
        promoted += v.action == "promote"
    assert promoted <= 3


def test_too_few_rows_hold_without_judging(tmp_path: Path) -> None:
    log, store = _log(tmp_path, 500, seed=1)
    (v,) = judge_policies(log, store, [PolicyCandidate.parse("linear_ts")], PolicySettings())
    assert v.action == "hold" and v.lower is None and "2,000 joined rows needed" in v.reason


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("ppo", "cannot learn from log rows"),
        ("nope", "must be one of"),
        ("linear_ts:bogus=1", "no such parameter"),
        ("linear_ts:noise=abc", "expected a number"),
        (":noise=1", "give an agent kind"),
        ("linear_ts:exploration_floor=0.1", "the model's serving setting"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        PolicyCandidate.parse(spec)


def test_settings_parse_typed_and_labelled() -> None:
    c = PolicyCandidate.parse("bernoulli_ts:segment_columns=0,5,seed=3")
    assert c.params == {"segment_columns": (0, 5), "seed": 3}
    assert c.label == "bernoulli_ts:segment_columns=0,5,seed=3"
    with pytest.raises(ValueError, match="warm"):
        PolicySettings(warm=1.0)


def _traffic(h: Harness, n: int, seed: int) -> None:  # noqa: F811
    rng = np.random.default_rng(seed)
    for _ in range(n):
        s = int(rng.integers(0, 3))
        ctx = [0.0, 0.0, 0.0]
        ctx[s] = 1.0
        d = h.rank(context=ctx)
        v = int(d["variant_id"][1:])
        h.reward(d["event_id"], float(rng.random() < CTR[s, v]))
    h.svc.learner.step()


@pytest.mark.parametrize("to", [1, 2])
def test_adopt_a_promoted_setting_then_roll_it_back(h: Harness, to: int) -> None:  # noqa: F811
    """A uniform campaign's log promotes LinearTS; adopting it re-learns every row, serves the
    contextual best, is recorded with its evidence, and a rollback brings the uniform agent
    back: to set 2, its snapshot; to set 1 (recorded before any snapshot), a fresh uniform
    agent that re-learns the rows."""
    h.campaign(agent="uniform", agent_params={})
    _traffic(h, 2400, seed=0)
    r = h.client.patch("/v1/admin/campaigns/c1", json={"reward_wait_s": 20.0}, headers=h.admin)
    assert r.status_code == 200, r.text  # set 2, recorded with the uniform agent's snapshot
    body = {"policies": [{"agent": "linear_ts", "params": {"seed": 7}}], "min_rows": 1000}
    r = h.client.post("/v1/admin/campaigns/c1/policies/judge", json=body, headers=h.admin)
    assert r.status_code == 200, r.text
    (verdict,) = r.json()
    assert verdict["action"] == "promote", verdict["reason"]
    m = h.svc.runtime("c1").model
    before = int(m.learner_policy.model_version)
    r = h.client.post(
        "/v1/admin/campaigns/c1/policy",
        json={"agent": "linear_ts", "params": {"seed": 7}, "evidence": verdict},
        headers=h.admin,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert type(m.learner_policy).__name__ == "LinearTSPolicy"
    assert m.cfg.agent == "linear_ts" and h.svc.runtime("c1").cfg.agent == "linear_ts"
    adopted = int(m.learner_policy.model_version)
    assert adopted > before
    assert out["snapshot_version"] == m.snapshot_version
    p = h.rank(context=[0.0, 0.0, 1.0])["probabilities"]
    assert p["v3"] > 0.5, p  # segment 2's best, learned from the uniform log
    sets = h.client.get("/v1/admin/campaigns/c1/variant-sets", headers=h.admin).json()
    assert sets[-1]["action"] == "policy.promote" and sets[-1]["version"] == out["variant_sets"][0]
    assert sets[-1]["detail"]["evidence"]["lower"] == pytest.approx(verdict["lower"])
    assert sets[-1]["detail"]["from"]["agent"] == "uniform"
    r = h.client.post("/v1/admin/campaigns/c1/rollback", json={"variant_set": to}, headers=h.admin)
    assert r.status_code == 200, r.text
    assert r.json()["detail"]["new_snapshot"] == m.snapshot_version
    assert m.cfg.agent == "uniform" and type(m.learner_policy).__name__ == "UniformPolicy"
    assert h.svc.runtime("c1").cfg.agent == "uniform"
    assert int(m.learner_policy.model_version) > adopted  # versions stay unique, increasing
    p = h.rank(context=[0.0, 0.0, 1.0])["probabilities"]
    assert max(p.values()) == pytest.approx(0.25)
    sets = h.client.get("/v1/admin/campaigns/c1/variant-sets", headers=h.admin).json()
    assert [s["action"] for s in sets[-2:]] == ["policy.promote", "rollback"]
    assert sets[-1]["detail"]["to_variant_set"] == to


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"policies": [{"agent": "ppo"}]}, "cannot learn from log rows"),
        ({"policies": [{"agent": "linear_ts", "params": {"bogus": 1}}]}, "bogus"),
        ({"policies": []}, "policies"),
        ({"policies": [{"agent": "uniform"}], "warm": 1.5}, "warm"),
    ],
)
def test_bad_policy_requests_are_422(h: Harness, body: dict, word: str) -> None:  # noqa: F811
    h.campaign()
    r = h.client.post("/v1/admin/campaigns/c1/policies/judge", json=body, headers=h.admin)
    assert r.status_code == 422 and word in r.text, r.text
