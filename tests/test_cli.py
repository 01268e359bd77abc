from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from copyloop import DecisionLog, VariantsTable
from copyloop.cli import app

runner = CliRunner()


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "market.toml"
    p.write_text(
        "[market]\nseed = 1\n[market.catalog]\nn_campaigns = 24\nseed = 3\n"
        "[market.population]\nn_users = 4000\n"
    )
    return p


def test_simulate_writes_true_propensities(tmp_path: Path, config_file: Path) -> None:
    out = tmp_path / "logs.parquet"
    res = runner.invoke(
        app,
        [
            "simulate",
            "--policy",
            "uniform",
            "--rounds",
            "3000",
            "--seed",
            "7",
            "--out",
            str(out),
            "--config",
            str(config_file),
        ],
    )
    assert res.exit_code == 0, res.output
    v = VariantsTable.read(tmp_path / "logs.variants.parquet")
    log = DecisionLog.read(out, variants=v)  # validated against the variants table
    assert log.n_rows == 3000
    n_cand = np.array([len(p) for p in log.column("action_probs")])
    np.testing.assert_allclose(log.propensity, 1.0 / n_cand)
    again = tmp_path / "again.parquet"
    runner.invoke(
        app,
        [
            "simulate",
            "--rounds",
            "3000",
            "--seed",
            "7",
            "--out",
            str(again),
            "--config",
            str(config_file),
        ],
    )
    assert DecisionLog.read(again).table.equals(log.table)  # same seed, same log


BAD_SIM = [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--policy", "oracle"], "--policy must be one of"),
    (["--session-length", "0"], "--session-length"),
]


@pytest.mark.parametrize(("args", "match"), BAD_SIM)
def test_simulate_bad_input(tmp_path: Path, config_file: Path, args, match) -> None:
    out = tmp_path / "logs.parquet"
    res = runner.invoke(app, ["simulate", "--out", str(out), "--config", str(config_file), *args])
    assert res.exit_code == 2, res.output
    assert match in " ".join(res.output.split())
    assert not out.exists() and not (tmp_path / "logs.variants.parquet").exists()


BAD_DEMO = [
    (["--world", "v3"], "--world must be v1 or v2"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--compare-rounds", "10"], "--compare-rounds must be >= 500"),
    (["--generator-rounds", "-1"], "--generator-rounds must be >= 0"),
]


@pytest.mark.parametrize(("args", "match"), BAD_DEMO)
def test_demo_bad_input(tmp_path: Path, args: list[str], match: str) -> None:
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out-dir", str(out), *args])
    assert res.exit_code == 2, res.output
    assert match in " ".join(res.output.split())
    assert not out.exists()  # refused before anything was written


def test_simulate_missing_folder(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "nope" / "l.parquet")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_bad_config_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[market.world]\nfatigue = 0.5\n")
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "l.parquet"), "--config", str(p)])
    assert res.exit_code == 2
    assert "unknown key(s) ['fatigue'] in [market.world]" in " ".join(res.output.split())


def test_logs_info(tmp_path: Path, config_file: Path) -> None:
    out = tmp_path / "logs.parquet"
    runner.invoke(
        app, ["simulate", "--rounds", "2000", "--out", str(out), "--config", str(config_file)]
    )
    res = runner.invoke(app, ["logs", "info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    import json

    info = json.loads(res.output)
    assert info["rows"] == 2000 and info["schema_version"] == "1"
    assert info["context_dim"] == len(info["context_names"]) == 28
    bad = runner.invoke(app, ["logs", "info", str(tmp_path / "missing.parquet")])
    assert bad.exit_code == 2 and "does not exist" in " ".join(bad.output.split())
