"""Click world v2 (``copyloop/CopyMarket-v1``), its red team, and world v1 kept as it was."""

from __future__ import annotations

import json
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import typer
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from typer.testing import CliRunner

from copyloop.cli_common import CopyloopGroup
from copyloop.cli_world import world_audit as world_audit_cmd
from copyloop.envs import (
    ENV_ID,
    ENV_ID_V1,
    ClickWorld,
    CopyMarketEnv,
    CopyMarketVectorEnv,
)
from copyloop.envs.audit import ADVERSARIAL_MAX, GOOD_MIN, KINDS, audit_lines, world_audit
from copyloop.envs.text import READ, ProductFacts, read_copy
from copyloop.envs.vector import SingleVectorEnv


@pytest.fixture(scope="module")
def market_v2(market):
    """The tests' small market (24 campaigns, 4,000 users) judged by world v2."""
    return market.with_world("v2")


@pytest.fixture(scope="module")
def audits(market, market_v2):
    """The audit of both worlds over all 24 campaigns, 100 users per segment."""
    return {
        "v1": world_audit(market, campaigns=24, users_per_segment=100),
        "v2": world_audit(market_v2, campaigns=24, users_per_segment=100),
    }


# ---- world v1 is unchanged ----------------------------------------------------------------------
def test_v1_reproduces_its_numbers(market) -> None:
    """Fixed-seed regression: the numbers world v1 gave before v2 existed (commit e5563b9)."""
    assert market.world.config.version == "v1"
    u, c = np.arange(200), np.arange(200) % market.catalog.n_campaigns
    ctr = market.world.first_ctr(u, c)
    assert float(ctr.astype(np.float64).sum()) == pytest.approx(31.623887956142426, rel=1e-6)
    assert float(ctr[7, 2]) == pytest.approx(0.009121894836425781, rel=1e-6)
    judged = market.world.ctr_of_texts(
        ["Hurry, save on comfy slip-on shoes today. Shop now!"], 5, np.arange(100)
    )
    assert float(judged.astype(np.float64).mean()) == pytest.approx(0.052028880417346955, rel=1e-6)


# ---- world v2: calibration and segment tastes ---------------------------------------------------
def test_v2_calibrated_base_rates(market_v2) -> None:
    """Each segment's mean first-impression CTR under uniform catalog copy lands within 10 %
    (relative) of its target on a fresh sample, inside 0.5–5 %."""
    world, pop = market_v2.world, market_v2.population
    rng = np.random.default_rng(321)
    for s, taste in enumerate(world.tastes):
        users = rng.choice(np.flatnonzero(pop.users.segment == s), 20_000)
        camps = rng.integers(0, market_v2.catalog.n_campaigns, users.size)
        ctr = world.first_ctr(users, camps)
        mean = ctr[market_v2.catalog.slots[camps] >= 0].mean()
        assert 0.005 <= mean <= 0.05
        assert mean == pytest.approx(taste.target_ctr, rel=0.10)


def test_v2_best_variant_differs_by_segment(market_v2) -> None:
    world, pop, cat = market_v2.world, market_v2.population, market_v2.catalog
    best = np.zeros((pop.n_segments, cat.n_campaigns), int)
    for s in range(pop.n_segments):
        members = np.flatnonzero(pop.users.segment == s)[:300]
        for c in range(cat.n_campaigns):
            ctr = world.first_ctr(members, np.full(members.size, c)).mean(0)
            best[s, c] = int(np.argmax(np.where(cat.slots[c] >= 0, ctr, -1)))
    differs = np.mean([len(set(best[:, c])) > 1 for c in range(cat.n_campaigns)])
    assert differs >= 0.5


def test_v2_drifts_and_is_seeded(market, market_v2) -> None:
    cfg = market_v2.world.config
    drifting = ClickWorld(market.catalog, market.population, replace(cfg, drift_period=1000))
    users, camps = np.arange(200), np.arange(200) % market.catalog.n_campaigns
    start = drifting.first_ctr(users, camps, t=0.0)
    np.testing.assert_allclose(start, market_v2.world.first_ctr(users, camps), rtol=1e-5)
    assert np.abs(drifting.first_ctr(users, camps, t=500.0) - start).mean() > 0.1 * start.mean()
    other = ClickWorld(market.catalog, market.population, replace(cfg, seed=5))
    assert not np.allclose(other.first_ctr(users, camps), start)


def _judge(market_v2, texts: list[str], c: int) -> np.ndarray:
    """Mean CTR of each text per segment, (S, n)."""
    pop = market_v2.population
    out = []
    for s in range(pop.n_segments):
        users = np.flatnonzero(pop.users.segment == s)[:300]
        out.append(market_v2.world.ctr_of_texts(texts, c, users).mean(0))
    return np.array(out)


def test_v2_cues_saturate(market_v2) -> None:
    """Piling more urgency, value and call-to-action words onto a line never pays."""
    from copyloop.envs.catalog import short_title

    c = 4
    short = short_title(market_v2.catalog.products[c].title)
    ctr = _judge(
        market_v2,
        [
            f"{short}: limited stock, order today.",
            f"{short}: hurry, limited stock, order today, shop now, save now, last chance!",
        ],
        c,
    )
    assert (ctr[:, 1] < ctr[:, 0]).all()


def test_v2_grounded_detail_beats_generic_and_false_claims_cost(market_v2) -> None:
    """A benefit from the product's own description beats a generic line in at least 80 % of
    (campaign, segment) pairs (short-copy segments may prefer the shorter line), and adding
    claims the product does not make costs at least 30 % of the clicks in every pair."""
    from copyloop.envs.audit import product_fact
    from copyloop.envs.catalog import short_title

    fact_wins, claims_cost = [], []
    for c, p in enumerate(market_v2.catalog.products):
        short, fact = short_title(p.title), product_fact(p)
        ctr = _judge(
            market_v2,
            [
                f"{short}: {fact}. Shop now.",
                f"{short}: great quality you will love. Shop now.",
                f"{short}: {fact}. Clinically proven, guaranteed results. Shop now.",
            ],
            c,
        )
        fact_wins += (ctr[:, 0] > ctr[:, 1]).tolist()
        claims_cost += (ctr[:, 2] < 0.7 * ctr[:, 0]).tolist()
    assert np.mean(fact_wins) >= 0.8
    assert all(claims_cost)


# ---- reading copy -------------------------------------------------------------------------------
SHOE = ProductFacts.of(
    "Trail Runner Shoe", "Cushioned sole for all-day comfort. Clinically tested grip.", "Acme"
)

READINGS = [
    # (text, reading, expected)
    ("Trail Runner Shoe: cures anxiety, guaranteed!", "unsupported_claims", 3),
    ("Trail Runner Shoe, clinically tested grip.", "unsupported_claims", 0),  # its page says so
    ("For premium shoppers who value quality.", "audience", 4),
    ("Trail Runner Shoe with a cushioned sole.", "audience", 0),
    ("PPE, premium, sustainable, high end, eco-friendly, exceptional.", "list_run", 6),
    ("Cushioned sole, soft and light.", "list_run", 3),
    ("sale deal discount cheap buy online shipping", "keyword_run", 7),
    ("TRAIL RUNNER SHOE FOR ALL-DAY COMFORT", "caps", 1),
    ("Acme ACME Trail Runner", "caps", 0.25),
    ("Trail Runner Shoe: cushioned sole for all-day comfort.", "detail_hits", 4),
    ("Trail Runner Shoe", "title_hits", 3),
    ("xqzvt blorpk Trail", "unknown", 2 / 3),
    ("Shoe. Shoe. Shoe. Shoe.", "repetition", 0.75),
    ("Click here, act now!!!", "spam", 3),
    ("Hurry, save today: limited deal. Shop now.", "hype", 7),
]


@pytest.mark.parametrize(("text", "column", "expected"), READINGS)
def test_read_copy(text: str, column: str, expected: float) -> None:
    assert read_copy([text], SHOE)[0, READ[column]] == pytest.approx(expected)


def test_read_copy_needs_one_product_per_text() -> None:
    with pytest.raises(ValueError, match="`facts` must be one ProductFacts or one per text"):
        read_copy(["a", "b"], [SHOE])


def test_world_version_from_config() -> None:
    from copyloop.envs import MarketConfig

    cfg = MarketConfig.from_dict({"world": {"version": "v2", "reading": {"claims": 2.0}}})
    assert cfg.world.version == "v2" and cfg.world.reading.claims == 2.0
    assert MarketConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="version: expected one of"):
        MarketConfig.from_dict({"world": {"version": "v9"}})


# ---- the red team -------------------------------------------------------------------------------
def test_audit_v2_adversarial_kinds_lose_good_lines_win(audits) -> None:
    """The issue's targets on the small market (24 campaigns × 5 segments, 100 users per
    segment; the docs run 120 campaigns): every adversarial kind beats the median catalog
    variant in at most 5 % of (campaign, segment, line) triples, the good lines in at least
    60 %."""
    rep = audits["v2"]
    assert {k.kind for k in rep.kinds} == {k.name for k in KINDS}
    assert len([k for k in KINDS if k.expect == "lose"]) >= 10
    for k in rep.kinds:
        if k.expect == "lose":
            assert k.share <= ADVERSARIAL_MAX, (k.kind, k.share, k.example)
        else:
            assert k.share >= GOOD_MIN, (k.kind, k.share)
    assert rep.passed
    assert sum(rep.categories.values()) == 24 and len(rep.categories) == 6


def test_audit_shows_v1_gamed(audits) -> None:
    """The audit has teeth: world v1 lets most adversarial kinds beat the median often."""
    gamed = [k for k in audits["v1"].kinds if k.expect == "lose" and k.share > 0.2]
    assert len(gamed) >= 8
    assert not audits["v1"].passed


def test_audit_lines_fill_every_template(market) -> None:
    camps = np.arange(6)
    lines = audit_lines(market.catalog.products, camps, seed=3)
    for k in KINDS:
        assert len(lines[k.name]) == 6
        for per in lines[k.name]:
            assert len(per) == len(k.templates) and all(t.strip() for t in per)
            assert not any("{" in t for t in per)
    assert all(t == t.upper() for t in lines["all_caps"][0])
    again = audit_lines(market.catalog.products, camps, seed=3)
    assert again == lines


# ---- the env on world v2 ------------------------------------------------------------------------
@pytest.mark.parametrize("session_length", [1, 4])
def test_copy_market_v1_passes_both_checkers(market_v2, session_length: int) -> None:
    env = CopyMarketEnv(market=market_v2, session_length=session_length)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(CopyMarketEnv(market=market_v2, session_length=session_length), warn=True)
    kernel = SingleVectorEnv(market=market_v2, session_length=session_length)
    gym_check_env(kernel, skip_render_check=True)
    sb3_check_env(SingleVectorEnv(market=market_v2, session_length=session_length), warn=True)


def test_registered_ids_pick_their_world(small_config) -> None:
    env = gym.make(ENV_ID_V1, config=small_config)
    assert isinstance(env.unwrapped, CopyMarketEnv)
    assert env.unwrapped.market.world.config.version == "v2"
    venv = gym.make_vec(ENV_ID_V1, num_envs=8, config=small_config)
    assert isinstance(venv, CopyMarketVectorEnv)
    assert venv.market.world.config.version == "v2"
    obs, info = venv.reset(seed=0)
    assert obs in venv.observation_space and (info["true_ctr"] >= 0).all()
    old = gym.make(ENV_ID, config=small_config)
    assert old.unwrapped.market.world.config.version == "v1"
    # the same users and catalog, another world
    assert env.unwrapped.market.catalog is old.unwrapped.market.catalog


def test_env_world_argument_is_checked(market) -> None:
    with pytest.raises(ValueError, match="`world` must be 'v1', 'v2' or None"):
        CopyMarketEnv(market=market, world="v3")  # type: ignore[arg-type]


# ---- the command --------------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer(cls=CopyloopGroup)
    world = typer.Typer()
    app.add_typer(world, name="world")
    world.command("audit")(world_audit_cmd)
    world.command("noop")(lambda: None)  # keeps "audit" a subcommand
    return app


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--world", "v3"], "--world must be v1 or v2"),
        (["--campaigns", "3"], "--campaigns must be >= 6"),
        (["--users-per-segment", "0"], "--users-per-segment must be >= 1"),
    ],
)
def test_audit_command_bad_flags_exit_2(args: list[str], match: str) -> None:
    r = CliRunner().invoke(_app(), ["world", "audit", *args])
    assert r.exit_code == 2, r.output
    assert match in r.output


def test_audit_command_json_and_out(tmp_path, small_config, audits) -> None:
    import tomli_w

    from copyloop.config import config_to_dict

    cfg = tmp_path / "market.toml"
    cfg.write_text(tomli_w.dumps({"market": config_to_dict(small_config)}))
    out = tmp_path / "audit.json"
    args = ["world", "audit", "--config", str(cfg), "--world", "v2", "--campaigns", "24"]
    args += ["--users-per-segment", "100", "--json", "--out", str(out)]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0, r.output
    printed, written = json.loads(r.stdout), json.loads(out.read_text())
    assert printed == written
    assert written["world"] == "v2" and written["passed"] is True
    shares = {k["kind"]: k["share"] for k in written["kinds"]}
    assert shares == {k.kind: k.share for k in audits["v2"].kinds}
    assert written["command"].startswith("copyloop world audit --world v2 --campaigns 24")
