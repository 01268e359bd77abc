"""The market TOML loader and the envs' action checks: table-driven bad inputs, each with the
error class and a fragment of the message the user sees (file, table, key, what was expected)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from copyloop.config import ConfigError, config_from_dict, config_to_dict
from copyloop.envs import CopyMarketEnv, MarketConfig, SegmentTaste, WorldConfig
from copyloop.envs.market import config_from_dict as reexported
from copyloop.envs.vector import CopyMarketVectorEnv, SingleVectorEnv
from copyloop.envs.world import DEFAULT_TASTES

SEGMENTS = "bargain_hunter, premium_shopper, busy_parent, tech_enthusiast, wellness_seeker"

# (TOML text, exception, regex the message must match). `F` stands for the file's path.
BAD_TOML = [
    # wrong types, at every level
    (
        '[market]\nsession_length = "five"\n',
        ConfigError,
        r'F: \[market\] session_length: expected an integer, got "five" \(str\)',
    ),
    ("[market]\nsession_length = 2.5\n", ConfigError, r"session_length: expected an integer"),
    (
        "[market]\nsession_length = 5.0\n",
        ConfigError,
        r"expected an integer, got 5.0 \(float\) — write 5, without the decimal point",
    ),
    (
        "[market.population]\nn_users = 2.5\n",
        ConfigError,
        r"F: \[market.population\] n_users: expected an integer, got 2.5 \(float\)",
    ),
    (
        "[market.population]\nn_users = true\n",
        ConfigError,
        r"\[market.population\] n_users: expected an integer, got True \(bool\)",
    ),
    (
        "[market.catalog]\nn_campaigns = [1, 2]\n",
        ConfigError,
        r"\[market.catalog\] n_campaigns: expected an integer, got \[1, 2\] \(array\)",
    ),
    (
        '[market.world]\ndrift_period = "often"\n',
        ConfigError,
        r'F: \[market.world\] drift_period: expected an integer, got "often" \(str\)',
    ),
    (
        '[market.world]\nfatigue_same = "0.5"\n',
        ConfigError,
        r'\[market.world\] fatigue_same: expected a number, got "0.5" \(str\)',
    ),
    (
        "[market.world]\ntone_weight = nan\n",
        ConfigError,
        r"\[market.world\] tone_weight: expected a finite number, got nan",
    ),
    (
        "[market]\nclick_model = 3\n",
        ConfigError,
        r"\[market\] click_model: expected a string, got 3 \(int\)",
    ),
    ("[market]\nworld = 5\n", ConfigError, r"\[market\] world: expected a table, got 5 \(int\)"),
    (
        "[market.world]\ntastes = 3\n",
        ConfigError,
        r"\[market.world\] tastes: expected a table, got 3 \(int\)",
    ),
    (
        '[market.world.tastes.bargain_hunter]\nurgency = "high"\n',
        ConfigError,
        r'F: \[market.world.tastes.bargain_hunter\] urgency: expected a number, got "high"',
    ),
    (
        "[market.world.tastes]\nbargain_hunter = 0.5\n",
        ConfigError,
        r"\[market.world.tastes.bargain_hunter\] must be a table, got 0.5 \(float\)",
    ),
    # unknown keys, with the valid ones
    (
        "[market.world]\nfatigue = 0.5\n",
        ConfigError,
        r"F: unknown key\(s\) \['fatigue'\] in \[market.world\] \(did you mean "
        r"'fatigue_any' or 'fatigue_same'\?\); valid keys: seed, tastes, .*, fatigue_any$",
    ),
    ("[market]\nsesion_length = 5\n", ConfigError, r"did you mean 'session_length'"),
    (
        "[market.catalog]\nvariants = 8\n",
        ConfigError,
        r"unknown key\(s\) \['variants'\] in \[market.catalog\].*valid keys: n_campaigns, "
        r"min_variants, max_variants, pca_dim, seed",
    ),
    (
        "[market.population]\nsegments = []\n",
        ConfigError,
        r"\['segments'\] in \[market.population\] \(segments: set in code, not from a file\); "
        r"valid keys: n_users$",
    ),
    (
        "[market.world.tastes.bargain_hunter]\nurgncy = 0.9\n",
        ConfigError,
        r"unknown key\(s\) \['urgncy'\] in \[market.world.tastes.bargain_hunter\] \(did you "
        r"mean 'urgency'\?\); valid keys: target_ctr, urgency, cta, ideal_words",
    ),
    (
        "surprise = 1\n[market]\nseed = 1\n",
        ConfigError,
        r"F: key\(s\) \['surprise'\] outside \[market\]",
    ),
    # a taste for a segment that does not exist: refused with the valid names
    (
        "[market.world.tastes.bargain_hunters]\nurgency = 0.9\n",
        ConfigError,
        r"F: unknown segment\(s\) \['bargain_hunters'\] in \[market.world.tastes\] \(did you mean "
        rf"'bargain_hunter'\?\); valid segments: {SEGMENTS}$",
    ),
    (
        "[market.world.tastes.students]\ntarget_ctr = 0.02\nurgency = 0.1\ncta = 0.1\n"
        "ideal_words = 9\n",
        ConfigError,
        rf"unknown segment\(s\) \['students'\] in \[market.world.tastes\]; valid segments: "
        rf"{SEGMENTS}$",
    ),
    # range checks of __post_init__, with the file and table
    (
        "[market]\nsession_length = 0\n",
        ConfigError,
        r"F: \[market\] `session_length` must be in \[1, 1000\], got 0",
    ),
    (
        "[market.world]\ndrift_strength = 2\n",
        ConfigError,
        r"F: \[market.world\] `drift_strength` must be in \[0, 1\], got 2.0",
    ),
    (
        "[market.world.tastes.premium_shopper]\ntarget_ctr = 0.5\n",
        ConfigError,
        r"F: \[market.world.tastes.premium_shopper\] `target_ctr` must be in \[0.001, 0.2\]",
    ),
    (
        "[market]\npessimism = 1.0\n",
        ConfigError,
        r"\[market\] `pessimism` needs a `click_model`",
    ),
    # not TOML at all
    (
        "[market]\nsession_length = \n",
        ConfigError,
        r"F: not valid TOML: .*\(at line 2, column",
    ),
    ("[market]\nseed = 1\nseed = 2\n", ConfigError, r"F: not valid TOML: .*at line 3"),
    ("market = 3\n", ConfigError, r"F: \[market\] must be a table, got 3 \(int\)"),
]


@pytest.mark.parametrize(("text", "error", "match"), BAD_TOML)
def test_bad_market_toml(tmp_path: Path, text: str, error: type[Exception], match: str) -> None:
    p = tmp_path / "market.toml"
    p.write_text(text)
    with pytest.raises(error) as info:
        MarketConfig.from_toml(p)
    assert re.search(match.replace("F:", re.escape(f"{p}:")), str(info.value)), str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI maps ValueError to exit code 2


def test_bad_market_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"market config .*nope.toml does not exist"):
        MarketConfig.from_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"is not a file"):
        MarketConfig.from_toml(tmp_path)
    p = tmp_path / "binary.toml"
    p.write_bytes(b"\xff\xfe[market]\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))}: not a UTF-8 text file"):
        MarketConfig.from_toml(p)


def test_cli_reports_a_bad_market_toml_with_exit_code_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from copyloop.cli import app

    p = tmp_path / "market.toml"
    p.write_text('[market.world]\nsession_length = "five"\n[market]\nseed = 1\n')
    out = tmp_path / "l.parquet"
    res = CliRunner().invoke(app, ["simulate", "--out", str(out), "--config", str(p)])
    assert res.exit_code == 2, res.output
    assert "unknown key(s) ['session_length'] in [market.world]" in " ".join(res.output.split())
    p.write_text('[market]\nsession_length = "five"\n')
    res = CliRunner().invoke(app, ["simulate", "--out", str(out), "--config", str(p)])
    assert res.exit_code == 2, res.output
    assert 'session_length: expected an integer, got "five" (str)' in " ".join(res.output.split())
    assert not out.exists()


def test_partial_taste_is_merged_over_the_segments_default(tmp_path: Path) -> None:
    p = tmp_path / "market.toml"
    p.write_text("[market.world.tastes.bargain_hunter]\nurgency = 0.9\nideal_words = 10\n")
    cfg = MarketConfig.from_toml(p)
    tastes = dict(cfg.world.tastes)
    default = DEFAULT_TASTES["bargain_hunter"]
    assert tastes["bargain_hunter"] == SegmentTaste(default.target_ctr, 0.9, default.cta, 10.0)
    assert isinstance(tastes["bargain_hunter"].ideal_words, float)
    assert {k: v for k, v in tastes.items() if k != "bargain_hunter"} == {
        k: v for k, v in DEFAULT_TASTES.items() if k != "bargain_hunter"
    }
    assert [k for k, _ in cfg.world.tastes] == list(DEFAULT_TASTES)  # order kept


def test_file_without_market_table_and_defaults(tmp_path: Path) -> None:
    p = tmp_path / "market.toml"
    p.write_text("session_length = 5\nworld = { drift_period = 10_000 }\n")
    cfg = MarketConfig.from_toml(p)
    assert (cfg.session_length, cfg.world.drift_period) == (5, 10_000)
    p.write_text("")
    assert MarketConfig.from_toml(p) == MarketConfig()
    p.write_text("[market]\n[market.world]\ndrift_strength = 1\n")  # an int for a float
    cfg = MarketConfig.from_toml(p)
    assert cfg.world.drift_strength == 1.0 and isinstance(cfg.world.drift_strength, float)


def test_python_api_refuses_tastes_for_unknown_segments() -> None:
    taste = DEFAULT_TASTES["busy_parent"]
    with pytest.raises(ValueError, match=rf"\['students'\] .*; its segments: {SEGMENTS}$"):
        MarketConfig(world=WorldConfig(tastes=(("students", taste),)))


ROUND_TRIP = [
    MarketConfig(),
    MarketConfig.from_dict(
        {
            "session_length": 5,
            "seed": 3,
            "catalog": {"n_campaigns": 24, "seed": 3, "max_variants": 10},
            "population": {"n_users": 4000},
            "world": {
                "drift_period": 50_000,
                "drift_strength": 0.5,
                "tastes": {"wellness_seeker": {"cta": 0.7}},
            },
        }
    ),
    MarketConfig(click_model="some/dir", pessimism=1.5),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP)
def test_to_dict_round_trip_is_exact(cfg: MarketConfig) -> None:
    d = cfg.to_dict()
    assert MarketConfig.from_dict(d) == cfg
    assert MarketConfig.from_dict(json.loads(json.dumps(d))) == cfg  # as logs carry it
    assert "segments" not in d["population"]
    assert set(d["world"]["tastes"]) == set(DEFAULT_TASTES)
    assert MarketConfig.from_dict(d).to_dict() == d


def test_from_dict_without_a_file_names_the_table() -> None:
    with pytest.raises(ConfigError, match=r"^\[market.world\] seed: expected an integer"):
        MarketConfig.from_dict({"world": {"seed": "0"}})


# ---- the generic loader, on annotations the market does not use ------------------------------
@dataclass(frozen=True)
class _Inner:
    a: int
    b: float = 1.0


@dataclass(frozen=True)
class _Outer:
    pair: tuple[int, str] = (1, "x")
    many: tuple[float, ...] = ()
    names: list[str] = field(default_factory=list)
    mode: Literal["fast", "slow"] = "fast"
    flag: bool = False
    inner: _Inner | None = None


BAD_GENERIC = [
    ({"pair": [1]}, r"\[t\] pair: expected an array of 2 \(an integer, a string\), got \[1\]"),
    ({"pair": [1, 2]}, r"pair: expected an array of 2 .*, got \[1, 2\] \(array\)"),
    ({"many": [1, "2"]}, r"many: expected an array \(each a number\) \(item 1: a number\)"),
    ({"names": "abc"}, r'names: expected an array \(each a string\), got "abc" \(str\)'),
    ({"mode": "medium"}, r'mode: expected one of "fast", "slow", got "medium" \(str\)'),
    ({"flag": 1}, r"flag: expected true or false, got 1 \(int\)"),
    ({"inner": {"b": 2}}, r"\[t.inner\] missing key\(s\) \['a'\]"),
    ({"inner": {"a": True}}, r"\[t.inner\] a: expected an integer, got True \(bool\)"),
]


@pytest.mark.parametrize(("data", "match"), BAD_GENERIC)
def test_generic_loader_types(data: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(_Outer, data, "t")


def test_generic_loader_reads_and_writes_back() -> None:
    data = {
        "pair": [2, "y"],
        "many": [1, 2.5],
        "names": ["a"],
        "mode": "slow",
        "flag": True,
        "inner": {"a": np.int64(3)},
    }
    out = config_from_dict(_Outer, data, "t")
    assert out == _Outer((2, "y"), (1.0, 2.5), ["a"], "slow", True, _Inner(3, 1.0))
    assert type(out.inner.a) is int  # type: ignore[union-attr]
    assert config_from_dict(_Outer, config_to_dict(out), "t") == out
    assert reexported is config_from_dict


# ---- env actions -------------------------------------------------------------------------------
BAD_ACTIONS = [
    (1.7, r"`action` must be an integer slot in \[0, 8\), got 1.7 \(float\)"),
    (1.0, r"got 1.0 \(float\)"),
    ("1", r"`action` must be an integer slot in \[0, 8\), got '1' \(str\)"),
    (True, r"`action` must be an integer slot in \[0, 8\), got True \(bool\)"),
    (np.bool_(True), r"got (np\.)?True_? \(bool_?\)"),
    (np.float32(2), r"got .*2.0.* \(float32\)"),
    (np.array(2.0), r"got array\(2.0\) \(float64 array of shape \(\)\)"),
    (np.array([1]), r"got array\(\[1\]\) \(int64 array of shape \(1,\)\)"),
    (None, r"got None \(NoneType\)"),
    (8, r"`action` must be a slot in \[0, 8\), got 8"),
    (-1, r"`action` must be a slot in \[0, 8\), got -1"),
]


@pytest.mark.parametrize("make", [CopyMarketEnv, SingleVectorEnv], ids=["single", "vector1"])
@pytest.mark.parametrize(("action", "match"), BAD_ACTIONS)
def test_single_env_bad_actions(market, make, action: object, match: str) -> None:
    env = make(market=market)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)
    env.step(0)  # a refused action does not use up the step


@pytest.mark.parametrize("make", [CopyMarketEnv, SingleVectorEnv], ids=["single", "vector1"])
@pytest.mark.parametrize("action", [3, np.int64(3), np.uint8(3), np.int32(3), np.array(3)])
def test_single_env_integer_actions(market, make, action: object) -> None:
    env = make(market=market, session_length=2)
    env.reset(seed=0)
    _, _, term, _, _ = env.step(action)
    assert not term


@pytest.mark.parametrize(
    ("actions", "match"),
    [
        (np.full(4, 1.7), r"`actions` must be an integer array of shape \(4,\), got float64"),
        (np.full(4, "1"), r"integer array .* got <U1"),
        (np.full(4, True), r"integer array .* got bool"),
        ([1, 2, 3, 1.5], r"integer array .* got float64"),
        (np.int64(1), r"shape \(4,\), got int64 \(\)"),
    ],
)
def test_vector_env_refuses_the_same_actions(market, actions: object, match: str) -> None:
    env = CopyMarketVectorEnv(4, market=market)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(actions)  # type: ignore[arg-type]
