from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from copyloop.envs import ClickWorld, ReadingWeights, SegmentTaste, WorldConfig
from copyloop.envs.text import FEATURE_NAMES, text_features, tone_of
from copyloop.envs.users import TONES, PopulationConfig, UserPopulation


def test_calibrated_base_rates_per_segment(market) -> None:
    """Mean first-impression CTR under uniform copy hits each segment's target within 10 %
    (relative) — the calibration solves for it on its own sample, this checks a fresh one."""
    world, pop = market.world, market.population
    rng = np.random.default_rng(123)
    for s, taste in enumerate(world.tastes):
        members = np.flatnonzero(pop.users.segment == s)
        users = rng.choice(members, 20_000)
        camps = rng.integers(0, market.catalog.n_campaigns, users.size)
        ctr = world.first_ctr(users, camps)
        mask = market.catalog.slots[camps] >= 0
        mean = ctr[mask].mean()
        assert 0.005 <= mean <= 0.05
        assert mean == pytest.approx(taste.target_ctr, rel=0.10)


def test_best_variant_differs_by_segment(market) -> None:
    world, pop, cat = market.world, market.population, market.catalog
    best = []
    for s in range(pop.n_segments):
        members = np.flatnonzero(pop.users.segment == s)[:300]
        rows = []
        for c in range(cat.n_campaigns):
            ctr = world.first_ctr(members, np.full(members.size, c)).mean(0)
            rows.append(int(np.argmax(np.where(cat.slots[c] >= 0, ctr, -1))))
        best.append(rows)
    best_arr = np.array(best)
    differs = np.mean([len(set(best_arr[:, c])) > 1 for c in range(cat.n_campaigns)])
    assert differs >= 0.5


def test_unused_slots_have_zero_ctr(market) -> None:
    cat = market.catalog
    c = int(np.argmin(cat.n_candidates))
    ctr = market.world.first_ctr(np.arange(10), np.full(10, c))
    assert (ctr[:, cat.n_candidates[c] :] == 0).all()
    assert (ctr[:, : cat.n_candidates[c]] > 0).all()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ctr_of_texts_agrees_with_catalog(market, version) -> None:
    """The judge of new lines and the env read the catalog's own lines identically."""
    cat, world = market.catalog, market.with_world(version).world
    for c in (3, 7):
        vids = cat.slots[c][cat.slots[c] >= 0]
        texts = [cat.variants.texts[v] for v in vids]
        users = np.arange(40)
        a = world.ctr_of_texts(texts, c, users, embeddings=cat.embeddings[vids])
        b = world.first_ctr(users, np.full(40, c))[:, : len(vids)]
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_drift_moves_preferences(market) -> None:
    drifting = ClickWorld(
        market.catalog, market.population, replace(market.world.config, drift_period=1000)
    )
    users = np.arange(200)
    camps = np.arange(200) % market.catalog.n_campaigns
    start = drifting.first_ctr(users, camps, t=0.0)
    np.testing.assert_allclose(start, market.world.first_ctr(users, camps), rtol=1e-5)  # float32
    half = drifting.first_ctr(users, camps, t=500.0)
    assert np.abs(half - start).mean() > 0.1 * start.mean()
    np.testing.assert_allclose(drifting.first_ctr(users, camps, t=1000.0), start, rtol=1e-6)


def test_world_is_seeded(market) -> None:
    a = ClickWorld(market.catalog, market.population, WorldConfig(seed=4))
    b = ClickWorld(market.catalog, market.population, WorldConfig(seed=4))
    c = ClickWorld(market.catalog, market.population, WorldConfig(seed=5))
    u, k = np.arange(50), np.arange(50) % market.catalog.n_campaigns
    np.testing.assert_array_equal(a.first_ctr(u, k), b.first_ctr(u, k))
    assert not np.allclose(a.first_ctr(u, k), c.first_ctr(u, k))


BAD_WORLD = [
    (WorldConfig, {"drift_period": 1}, "drift_period"),
    (WorldConfig, {"drift_strength": 1.5}, "drift_strength"),
    (WorldConfig, {"fatigue_same": 0.0}, "fatigue_same"),
    (WorldConfig, {"length_penalty": -1.0}, "length_penalty"),
    (WorldConfig, {"version": "v3"}, "`version` must be 'v1' or 'v2'"),
    (ReadingWeights, {"claims": -1.0}, "reading.claims"),
    (ReadingWeights, {"relevance_scale": 0.0}, "relevance_scale"),
    (ReadingWeights, {"gate_low": 0.7, "gate_high": 0.6}, "gate_low"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD_WORLD)
def test_bad_world_config(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bad_taste() -> None:
    with pytest.raises(ValueError, match="target_ctr"):
        SegmentTaste(0.9, 0.0, 0.0, 10.0)


def test_text_features_read_cues() -> None:
    f = text_features(
        [
            "Hurry, limited stock: shop now!",
            "Crafted, timeless and refined.",
            "Save on all-day comfort with an easy slip-on fit.",
        ]
    )
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert f[0, col["cta"]] == 1.0 and f[0, col["urgency"]] == 1.0
    assert f[1, col["tone=premium"]] == 1.0 and f[1, col["cta"]] == 0.0
    assert f[2, col["value"]] > 0 and f[2, col["benefit_slip_on_footwear"]] > 0
    assert TONES[tone_of("Plain product name 42 inch")] == "informative"


def test_population_is_seeded_and_configurable() -> None:
    a = UserPopulation(PopulationConfig(n_users=500), seed=2)
    b = UserPopulation(PopulationConfig(n_users=500), seed=2)
    np.testing.assert_array_equal(a.all_features, b.all_features)
    assert a.feature_dim == len(a.feature_names)
    np.testing.assert_allclose(a.users.interests.sum(1), 1.0)
    with pytest.raises(ValueError, match="n_users"):
        PopulationConfig(n_users=0)


def test_population_from_table() -> None:
    import pandas as pd

    from copyloop.envs.users import CATEGORIES

    df = pd.DataFrame(
        {
            "segment": ["busy_parent", "premium_shopper"],
            "price_sensitivity": [0.3, 0.9],
            "preferred_tone": ["friendly", "premium"],
            "device": ["mobile", "desktop"],
            "hour": [20.0, 9.5],
            **{f"interest_{c}": [1.0, 2.0] for c in CATEGORIES},
        }
    )
    pop = UserPopulation.from_table(df)
    assert len(pop.users) == 2 and pop.users.segment.tolist() == [2, 1]
    bad = df.assign(device=["mobile", "fridge"])
    with pytest.raises(ValueError, match="`device`: rows \\[1\\] have \\['fridge'\\]"):
        UserPopulation.from_table(bad)
