"""The Ray backend of experiment sweeps (``copyloop experiment run --backend ray``).

* The ``smoke`` experiment gives the same metrics, to the bit, on Ray actors as in spawned
  processes and inline (same seeds: every run is single-threaded whatever runs it).
* The market is built once per worker, not per run: each actor reports how many markets it
  built (one config → one build), while taking several runs.
* Bad input: ``--ray-address`` without ``--backend ray``, an unknown backend, and Ray missing
  (exit 2, naming ``pip install 'copyloop[ray]'``).

Ray is skipped when not installed (``bash scripts/setup_bench.sh`` installs it); with
``COPYLOOP_REQUIRE_PEERS=1``, as in ``scripts/test.sh`` and CI, a missing Ray fails instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import pandas as pd
import pytest
from typer.testing import CliRunner

from copyloop.cli import app
from copyloop.experiments import run_experiment
from copyloop.experiments.config import ExperimentConfig, config_path
from copyloop.experiments.parallel import RAY_MISSING, run_ray
from copyloop.experiments.runner import run_one

runner = CliRunner()


@pytest.fixture(scope="module")
def ray() -> ModuleType:
    how = "run `bash scripts/setup_bench.sh` (it installs ray, the copyloop[ray] extra)"
    if os.environ.get("COPYLOOP_REQUIRE_PEERS") == "1":
        try:
            return importlib.import_module("ray")
        except ImportError as e:
            pytest.fail(f"COPYLOOP_REQUIRE_PEERS=1 but ray does not import ({e}) — {how}")
    return pytest.importorskip("ray", reason=how)


@pytest.mark.slow
def test_ray_sweep_equals_processes_one_market_per_worker(ray, tmp_path):
    cfg = ExperimentConfig.from_toml(config_path("smoke")).resolved()
    specs = cfg.runs()
    sweep = run_ray(specs, run_one, workers=2)
    assert len(specs) == 6 and len(sweep.results) == 6
    # two actors took all six runs; each built the smoke market exactly once
    assert len(set(sweep.pids)) <= 2
    assert sweep.market_builds == [1] * len(sweep.market_builds)
    assert len(sweep.market_builds) == 2
    assert not ray.is_initialized()  # the local Ray started for the sweep is shut down

    processes = run_experiment("smoke", tmp_path / "proc", workers=2, progress=False)
    on_ray = run_experiment("smoke", tmp_path / "ray", workers=2, progress=False, backend="ray")
    pd.testing.assert_frame_equal(on_ray.metrics, processes.metrics, check_exact=True)
    pd.testing.assert_frame_equal(on_ray.summary, processes.summary, check_exact=True)
    direct = pd.concat(sweep.results, ignore_index=True)
    pd.testing.assert_frame_equal(direct, processes.metrics, check_exact=True)


@pytest.mark.slow
def test_cli_ray_backend_writes_the_same_summary(ray, tmp_path):
    out = tmp_path / "cli"
    res = runner.invoke(
        app, ["experiment", "run", "smoke", "--out", str(out), "--backend", "ray", "--json"]
    )
    assert res.exit_code == 0, res.output
    inline = run_experiment("smoke", tmp_path / "inline", workers=1, progress=False)
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "metrics.parquet"), inline.metrics, check_exact=True
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--ray-address", "127.0.0.1:6379"], "--ray-address is for --backend ray"),
        (["--backend", "dask"], "--backend must be one of process, ray"),
    ],
)
def test_cli_backend_bad_input(tmp_path, args, match):
    res = runner.invoke(app, ["experiment", "run", "smoke", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert match in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


def test_cli_without_ray_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    res = runner.invoke(
        app, ["experiment", "run", "smoke", "--out", str(tmp_path / "o"), "--backend", "ray"]
    )
    assert res.exit_code == 2
    assert "pip install 'copyloop[ray]'" in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()
    with pytest.raises(ImportError, match=r"copyloop\[ray\]"):
        run_experiment("smoke", tmp_path / "o2", backend="ray", progress=False)
    assert RAY_MISSING.startswith("the ray backend needs Ray")


def test_library_backend_bad_input(tmp_path):
    with pytest.raises(ValueError, match="`backend` must be one of process, ray"):
        run_experiment("smoke", tmp_path / "o", backend="spark", progress=False)
    with pytest.raises(ValueError, match="`ray_address` is for the ray backend"):
        run_experiment("smoke", tmp_path / "o", ray_address="auto", progress=False)
