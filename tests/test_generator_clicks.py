"""The click-only recipe and the honest judge (issue 15, items 3–4): disjoint users, the
impression budget, clicks as the only signal, provenance, and refusals of a judge that could
have trained the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gen_helpers import OPEN

from copyloop.generator.clicks import (
    MAX_IMPRESSIONS_PER_ROUND,
    DishonestJudgeError,
    UserSplit,
    check_honest,
    click_pool,
    lineage,
    provenance,
    simulate_clicks,
)
from copyloop.generator.generate import SamplingConfig
from copyloop.generator.judge import JudgeConfig, judge_model, lift_report
from copyloop.generator.models import load_model, save_model, tiny_model
from copyloop.generator.preference import SamplePool, preference_pairs
from copyloop.generator.reward import WorldReward


@pytest.fixture(scope="module")
def market_v2(market):
    return market.with_world("v2")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)


# ---- users -----------------------------------------------------------------------------------
def test_user_split_halves_are_disjoint_and_cover_everyone(market) -> None:
    split = UserSplit(seed=3)
    tune, judge = split.mask(market, "tune"), split.mask(market, "judge")
    assert not (tune & judge).any() and (tune | judge).all()
    assert abs(judge.mean() - 0.5) < 1e-3
    np.testing.assert_array_equal(judge, UserSplit(seed=3).mask(market, "judge"))
    assert (judge != UserSplit(seed=4).mask(market, "judge")).any()
    seg = market.population.users.segment
    for s, users in enumerate(split.users(market, "judge")):
        assert judge[users].all() and (seg[users] == s).all()
    with pytest.raises(ValueError, match="judge_share"):
        UserSplit(judge_share=1.0)
    with pytest.raises(ValueError, match="part"):
        split.mask(market, "train")  # type: ignore[arg-type]


def test_judge_users_come_from_the_judge_half_without_replacement(market) -> None:
    split = UserSplit(seed=0)
    judge = WorldReward(
        market, users_per_segment=200, seed=1, pool=split.users(market, "judge"), replace=False
    )
    tune_mask = split.mask(market, "tune")
    for s in range(market.population.n_segments):
        u = judge.users(s)
        assert u.size == 200 and np.unique(u).size == 200
        assert not tune_mask[u].any()
    with pytest.raises(ValueError, match="too few users"):
        WorldReward(
            market, users_per_segment=10**6, pool=split.users(market, "judge"), replace=False
        )
    # the default draw is what it was before `pool` existed
    a = WorldReward(market, users_per_segment=64, seed=5)
    rng = np.random.default_rng([5, 4241])
    seg = market.population.users.segment
    np.testing.assert_array_equal(a.users(0), rng.choice(np.flatnonzero(seg == 0), size=64))


# ---- clicks ----------------------------------------------------------------------------------
def _lines(market_v2):
    p = market_v2.catalog.products
    texts = [
        f"{p[0].title}: built to last. Shop now.",
        "!!! FREE MONEY !!! CLICK NOW !!!",
        "rejected line",
        f"{p[1].title}. See the details.",
        "cheap sale deal discount buy online",
    ]
    group = np.array([0, 0, 0, 1, 1])
    valid = np.array([True, True, False, True, True])
    return texts, group, valid


def test_clicks_spend_the_budget_on_shippable_lines_and_estimate_the_ctr(market_v2) -> None:
    texts, group, valid = _lines(market_v2)
    camps, segs = np.array([0, 1]), np.array([0, 0])
    split = UserSplit(seed=0)
    c = simulate_clicks(
        market_v2, camps, segs, group, texts, valid, impressions=400_003, split=split, seed=1
    )
    assert c.impressions.sum() == 400_003 and c.impressions[2] == 0 and c.clicks[2] == 0
    assert (c.clicks <= c.impressions).all()
    # 100k impressions a line: the shrunk estimate is within 4 standard errors of the world's
    # expected CTR over the tune half (what the readers are drawn from)
    for i in np.flatnonzero(valid):
        g = int(group[i])
        users = split.users(market_v2, "tune")[int(segs[g])]
        truth = market_v2.world.ctr_of_texts([texts[i]], int(camps[g]), users)[:, 0].mean()
        assert abs(c.estimate[i] - truth) < 4 * c.stderr[i] + 1e-4, (i, c.estimate[i], truth)
    again = simulate_clicks(
        market_v2, camps, segs, group, texts, valid, impressions=400_003, split=split, seed=1
    )
    np.testing.assert_array_equal(c.clicks, again.clicks)


def test_click_readers_are_only_from_the_tune_half(market_v2, monkeypatch) -> None:
    texts, group, valid = _lines(market_v2)
    split = UserSplit(seed=2)
    seen: list[np.ndarray] = []
    real = market_v2.world.ctr_of_texts

    def spy(t, c, users, **kw):
        seen.append(np.asarray(users))
        return real(t, c, users, **kw)

    monkeypatch.setattr(market_v2.world, "ctr_of_texts", spy)
    simulate_clicks(
        market_v2,
        np.array([0, 1]),
        np.array([2, 3]),
        group,
        texts,
        valid,
        impressions=20_000,
        split=split,
    )
    users = np.concatenate(seen)
    assert users.size == 20_000 and split.mask(market_v2, "tune")[users].all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"impressions": MAX_IMPRESSIONS_PER_ROUND + 1}, "per round"),
        ({"impressions": 0}, "per round"),
        ({"round_": 4}, "at most 3 rounds"),
        ({"prior_strength": -1.0}, "prior_strength"),
    ],
)
def test_click_budget_is_enforced(market_v2, kwargs, match) -> None:
    texts, group, valid = _lines(market_v2)
    args = {"impressions": 1000, "split": UserSplit(), **kwargs}
    with pytest.raises(ValueError, match=match):
        simulate_clicks(market_v2, np.array([0, 1]), np.array([0, 0]), group, texts, valid, **args)


def test_click_pool_records_provenance_and_round_trips(tiny, market_v2, tmp_path) -> None:
    pool = click_pool(
        tiny,
        market_v2,
        campaigns=[0, 1],
        n=4,
        impressions=50_000,
        split=UserSplit(seed=0),
        sampling=SamplingConfig(max_new_tokens=4),
        filters=OPEN,
        seed=3,
    )
    prov = pool.meta["provenance"]
    assert prov["signal"] == "clicks" and not prov["upper_bound"] and prov["round"] == 1
    assert prov["impressions"] == 50_000 and prov["users"]["part"] == "tune"
    assert prov["campaigns"] == [0, 1] and prov["clicks"] == int(pool.clicks.sum())
    pool.save(tmp_path / "p.parquet")
    back = SamplePool.load(tmp_path / "p.parquet")
    np.testing.assert_array_equal(back.clicks, pool.clicks)
    np.testing.assert_allclose(back.stderr, pool.stderr)
    assert back.meta["provenance"] == prov
    again = click_pool(
        tiny,
        market_v2,
        campaigns=[0, 1],
        n=4,
        impressions=50_000,
        split=UserSplit(seed=0),
        seed=4,
        lines=back,
    )
    assert again.texts == pool.texts and not np.array_equal(again.clicks, pool.clicks)
    assert again.meta["provenance"]["lines_sampled_with_seed"] == 3


def test_min_z_keeps_only_pairs_the_clicks_tell_apart() -> None:
    pool = SamplePool(
        campaigns=np.array([0]),
        segments=np.array([0]),
        prompts=["p"],
        group=np.zeros(4, np.int64),
        texts=["a", "b", "c", "d"],
        reward=np.array([0.030, 0.020, 0.029, 0.010]),
        valid=np.ones(4, bool),
        meta={},
        impressions=np.full(4, 4000),
        clicks=np.array([120, 80, 116, 40]),
        stderr=np.array([0.0027, 0.0022, 0.0027, 0.0016]),
    )
    loose = preference_pairs(pool, pairing="all", pairs_per_prompt=10, min_ratio=1.1)
    tight = preference_pairs(pool, pairing="all", pairs_per_prompt=10, min_ratio=1.1, min_z=3.0)
    pairs = {(p.chosen, p.rejected) for p in tight}
    assert pairs == {("a", "d"), ("c", "d"), ("b", "d")} and len(loose) == 5
    no_clicks = SamplePool(**{**pool.__dict__, "stderr": None})
    with pytest.raises(ValueError, match="click pool"):
        preference_pairs(no_clicks, min_z=1.0)


# ---- the judge refuses -------------------------------------------------------------------------
SPLIT0 = UserSplit(seed=0)


def _prov(signal="clicks", campaigns=(0, 2), split=SPLIT0, **kw):
    return provenance(signal, reward=signal, campaigns=campaigns, split=split, **kw)


@pytest.mark.parametrize(
    ("chain", "kwargs", "match"),
    [
        ([], {}, "no training provenance"),
        ([_prov("oracle")], {}, "upper bound"),
        ([_prov(), _prov("oracle")], {}, "round 2 trained on 'oracle'"),
        ([_prov(split=None)], {}, "not from the tune half"),
        ([_prov(split=UserSplit(seed=1))], {}, "would overlap"),
        ([_prov(campaigns=(0, 1))], {}, r"campaigns \[1\]"),
        ([{"users": {}}], {}, "no recorded training signal"),
    ],
)
def test_check_honest_refuses(chain, kwargs, match) -> None:
    with pytest.raises(DishonestJudgeError, match=match):
        check_honest(chain, judge_campaigns=[1, 3], split=UserSplit(seed=0), **kwargs)


def test_check_honest_labels() -> None:
    split = UserSplit(seed=0)
    assert check_honest([_prov()], judge_campaigns=[1], split=split).startswith("headline")
    oracle = [_prov(), _prov("oracle")]
    assert check_honest(oracle, judge_campaigns=[1], split=split, upper_bound=True) == (
        "upper bound (oracle signal)"
    )
    assert check_honest([_prov("model:clicksim:x")], judge_campaigns=[1], split=split) == (
        "reward model (model:clicksim:x)"
    )


def test_judge_refuses_an_oracle_trained_model_and_labels_an_upper_bound(
    tiny, market_v2, market, tmp_path
) -> None:
    folder = save_model(
        tiny,
        tmp_path / "oracle",
        version="o1",
        made_by="test",
        extra={"lineage": [_prov("oracle")]},
    )
    lm = load_model(folder, device="cpu")
    assert lineage(lm)[0]["signal"] == "oracle"
    cfg = JudgeConfig(campaigns=(1, 3), n=2, users_per_segment=50, min_campaigns=1)
    with pytest.raises(DishonestJudgeError, match="upper bound"):
        judge_model(lm, market_v2, cfg)
    with pytest.raises(ValueError, match="world v2"):
        judge_model(lm, market, cfg)
    with pytest.raises(ValueError, match="at least 60"):
        JudgeConfig(campaigns=(1, 3))
    with pytest.raises(ValueError, match="categories"):
        judge_model(lm, market_v2, JudgeConfig(campaigns=tuple(range(1, 7)), min_campaigns=6))
    up = JudgeConfig(campaigns=(1, 3), n=2, users_per_segment=50, min_campaigns=1, upper_bound=True)
    out = judge_model(lm, market_v2, up, base=tiny)
    assert out["label"] == "upper bound (oracle signal)" and out["kl_to_base"] is not None
    assert len(out["requests"]) == 2 * market_v2.population.n_segments
    assert set(out["flags"]) >= {"unsupported_claims", "off_product", "any"}
    json.dumps(out)


# ---- the report --------------------------------------------------------------------------------
def _judged(name, ctrs, cfg=None):
    reqs = [
        {"campaign": c, "segment": s, "ctr": v, "texts": []}
        for (c, s), v in zip([(c, s) for c in range(10) for s in range(2)], ctrs, strict=True)
    ]
    return {
        "model": name,
        "label": "headline (click signal)",
        "config": cfg
        or {
            "campaigns": list(range(10)),
            "n": 4,
            "users_per_segment": 9,
            "user_seed": 1,
            "seed": 0,
            "split": {"seed": 0, "judge_share": 0.5},
        },
        "requests": reqs,
        "kept": 0.5,
        "distinct2": 0.9,
        "kl_to_base": 1.0,
        "flags": {"any": 0.1},
    }


def test_lift_report_intervals_over_seeds_and_campaigns() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.01, 0.03, 20)
    seeds = [
        _judged(f"s{i}", base * (1.2 + 0.02 * i) * rng.uniform(0.9, 1.1, 20)) for i in range(3)
    ]
    rep = lift_report(_judged("base", base), seeds, n_boot=500)
    lifts = [p["lift"] for p in rep["per_seed"]]
    assert rep["median_lift"] == pytest.approx(np.median(lifts))
    lo, hi = rep["mean_lift_ci95_seeds_campaigns"]
    assert lo < rep["mean_lift"] < hi and lo > 0.1 and hi < 0.35
    for p in rep["per_seed"]:
        assert p["lift_ci95_campaigns"][0] < p["lift"] < p["lift_ci95_campaigns"][1]
    other = _judged("x", base, cfg={**seeds[0]["config"], "seed": 9})
    with pytest.raises(ValueError, match="same settings"):
        lift_report(_judged("base", base), [other])


def test_loop_gain_says_what_the_loop_gained_and_spent() -> None:
    from copyloop.cli_generator import loop_gain
    from copyloop.generator.loop import RoundResult

    def rr(i, ctr, imp, clicks):
        return RoundResult(i, f"m@r{i}", ctr, ctr, ctr, clicks, imp, 0.5, 0.9, "log")

    rounds = [rr(0, 0.020, 100_000, 2_000), rr(1, 0.021, 100_000, 2_100), rr(2, 0.023, 99_990, 0)]
    line = loop_gain(rounds)
    assert "+15.0%" in line and "200,000 impressions" in line and "4,100 clicks" in line
    assert loop_gain(rounds[:1]) == ""
