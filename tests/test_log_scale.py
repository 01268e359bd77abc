"""Logs larger than memory: dataset folders of Parquet parts, scanned by DuckDB.

The same simulated log (6,000 decisions of the tests' small market) is kept once as one file
and once as a dataset folder of three parts in nested folders (as a partitioned export writes
them) with its variants table inside. Table-driven over the three commands that read logs:
``copyloop logs info``, ``copyloop ope`` (IPW and SNIPW of a saved LinUCB, CLT intervals) and
``copyloop clicksim fit`` give the same numbers on the folder (streamed through DuckDB) as on
the file (read whole, the in-memory path): integers exactly, floats to 1e-9 relative (sums in
another order). Then the folder readers themselves: rows and order, offsets across parts in
error messages, the seeded reservoir sample, and the inputs they refuse.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from copyloop.cli import app
from copyloop.contract import (
    DecisionLog,
    LogValidationError,
    check_unique_event_ids,
    log_files,
    read_dataset,
    summarize_dataset,
)

runner = CliRunner()
ROWS = 6000
PARTS = (2500, 2000, 1500)


def cli(*args: str) -> dict[str, Any]:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = res.output  # progress bars go to stderr, which the runner mixes in before the JSON
    return json.loads(out[out.index("\n{") + 1 :] if not out.startswith("{") else out)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The log as one file and as a dataset folder of three parts, a saved LinUCB, the config."""
    from copyloop.agents import LinUCBPolicy
    from copyloop.envs import Market, MarketConfig
    from copyloop.envs.simulate import simulate

    d = tmp_path_factory.mktemp("scale")
    cfg_path = d / "market.toml"
    cfg_path.write_text(
        "[market]\nseed = 1\n[market.catalog]\nn_campaigns = 24\nseed = 3\n"
        "[market.population]\nn_users = 4000\n"
    )
    res = runner.invoke(
        app,
        ["simulate", "--rounds", str(ROWS), "--out", str(d / "log.parquet"), "--config",
         str(cfg_path), "--seed", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    table = pq.read_table(d / "log.parquet")
    ds = d / "dataset"
    start = 0
    for i, n in enumerate(PARTS):
        (ds / f"day={i}").mkdir(parents=True)
        pq.write_table(table.slice(start, n), ds / f"day={i}" / f"part-{i}.parquet")
        start += n
    shutil.copy(d / "log.variants.parquet", ds / "variants.parquet")
    market = Market.get(MarketConfig.from_toml(cfg_path))
    agent = LinUCBPolicy(seed=0)
    simulate(market, agent, 1500, seed=11)
    agent.save(d / "linucb.npz")
    return {"file": d / "log.parquet", "folder": ds, "config": cfg_path, "agent": d / "linucb.npz"}


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal: exactly for ints/strings/None, to 1e-9 relative for floats, recursively."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _ope_numbers(out: dict[str, Any]) -> dict[str, Any]:
    return {"rows": out["rows"], "value": out["logging_policy_value"], "est": out["estimates"]}


def _clicksim_numbers(out: dict[str, Any]) -> dict[str, Any]:
    m = out["metrics"]
    keep = ("train_rows", "holdout_rows", "clicks", "base_rate", "holdout_logloss_calibrated")
    return {k: m[k] for k in keep}


CASES = [
    pytest.param(["logs", "info", "{log}"], lambda o: o, id="logs-info"),
    pytest.param(
        ["ope", "--logs", "{log}", "--policy", "{agent}", "--config", "{config}",
         "--estimators", "ipw,snipw", "--interval", "clt"],
        _ope_numbers,
        id="ope",
    ),
    pytest.param(
        ["clicksim", "fit", "--logs", "{log}", "--out", "{tmp}/sim", "--members", "1",
         "--epochs", "2", "--threads", "1"],
        _clicksim_numbers,
        id="clicksim-fit",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("args", "numbers"), CASES)
def test_folder_scan_equals_the_file_in_memory(logs, tmp_path, args, numbers) -> None:
    got = {}
    for kind in ("file", "folder"):
        (tmp_path / kind).mkdir()
        fill = {k: str(v) for k, v in logs.items()} | {"log": str(logs[kind])}
        fill["tmp"] = str(tmp_path / kind)
        got[kind] = numbers(cli(*(a.format(**fill) for a in args)))
    _close(got["folder"], got["file"])
    if args[0] == "ope":  # a real check, not two empty lists: both estimators, finite bounds
        assert [e["estimator"] for e in got["file"]["est"]] == ["ipw", "snipw"]
        assert all(e["lower"] < e["estimate"] < e["upper"] for e in got["file"]["est"])
        assert got["file"]["rows"] == ROWS
        # the agent is not the logging policy: its weights vary, so the equality means something
        assert got["file"]["est"][0]["max_weight"] > 2.0
        assert got["file"]["est"][0]["ess"] < 0.9 * ROWS
    if args[0] == "logs":
        assert got["file"]["rows"] == ROWS and got["file"]["campaigns"] > 1


def test_streamed_ope_equals_in_memory_clt_with_small_batches(logs) -> None:
    """Batches of 700 rows (not a divisor of any part) give the in-memory CLT numbers."""
    from copyloop.agents import Policy
    from copyloop.agents.warm import policy_probs_on_log
    from copyloop.contract import read_variants_for
    from copyloop.envs import Market, MarketConfig
    from copyloop.ope.evaluate import evaluate_policy, read_feedback
    from copyloop.ope.stream import evaluate_scan

    market = Market.get(MarketConfig.from_toml(logs["config"]))
    agent = Policy.load(logs["agent"])
    log, data = read_feedback(logs["file"])
    target = policy_probs_on_log(agent, log, market)[:, : data.n_slots]
    mem = evaluate_policy(data, target, ["ipw", "snipw"], interval="clt")
    var = read_variants_for(logs["folder"])
    scan = evaluate_scan(
        logs["folder"],
        lambda b, _d: policy_probs_on_log(agent, b, market),
        ["ipw", "snipw"],
        variants=var,
        batch_size=700,
    )
    assert scan.rows == mem.rows == ROWS
    for (n1, a), (n2, b) in zip(scan.estimates, mem.estimates, strict=True):
        assert n1 == n2
        for f in ("estimate", "lower", "upper", "ess", "max_weight"):
            assert math.isclose(getattr(a, f), getattr(b, f), rel_tol=1e-9), (n1, f)


def test_folder_reads_the_rows_in_order(logs) -> None:
    assert [p.parent.name for p in log_files(logs["folder"])] == ["day=0", "day=1", "day=2"]
    whole = DecisionLog.read(logs["file"]).table
    streamed = pa.concat_tables(
        b.table for b in DecisionLog.iter_batches(logs["folder"], batch_size=1000)
    )
    assert streamed.equals(whole)
    assert read_dataset(logs["folder"]).table.equals(whole)
    # the summary of a file through DuckDB is the summary of the folder
    _close(summarize_dataset(logs["file"]), summarize_dataset(logs["folder"]))


def test_reservoir_sample_is_seeded_and_keeps_log_order(logs) -> None:
    a = read_dataset(logs["folder"], max_rows=1000, seed=1)
    b = read_dataset(logs["folder"], max_rows=1000, seed=1)
    c = read_dataset(logs["folder"], max_rows=1000, seed=2)
    ids_a, ids_c = a.column("event_id"), c.column("event_id")
    assert a.n_rows == 1000 and a.table.equals(b.table)
    assert ids_a != ids_c
    order = {e: i for i, e in enumerate(DecisionLog.read(logs["file"]).column("event_id"))}
    pos = [order[e] for e in ids_a]
    assert pos == sorted(pos)  # a subset of the log, in the log's order
    # every part is sampled (2500/2000/1500 rows: ~417/333/250 expected of 1000)
    assert min(pos) < 2500 and any(2500 <= p < 4500 for p in pos) and max(pos) >= 4500


def _bad_folder(logs: dict[str, Path], tmp: Path, how: str) -> Path:
    ds = tmp / how
    shutil.copytree(logs["folder"], ds)
    part = ds / "day=1" / "part-1.parquet"
    t = pq.read_table(part)
    if how == "duplicate-ids":
        first = pq.read_table(ds / "day=0" / "part-0.parquet").column("event_id")[7]
        ids = t.column("event_id").to_pylist()
        ids[3] = first.as_py()
        t = t.set_column(t.schema.get_field_index("event_id"), "event_id", pa.array(ids))
    elif how == "schema-differs":
        t = t.drop_columns(["position"])
    elif how == "bad-propensity":
        p = t.column("propensity").to_numpy().copy()
        p[5] = 0.0
        t = t.set_column(t.schema.get_field_index("propensity"), "propensity", pa.array(p))
    elif how == "empty":
        shutil.rmtree(ds)
        ds.mkdir()
        (ds / "variants.parquet").write_bytes(b"")
        return ds
    pq.write_table(t, part)
    return ds


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("duplicate-ids", r"unique across the dataset's files; .*part-0.parquet row 7, "
         r"part-1.parquet row 3"),
        ("schema-differs", r"part-1.parquet: its columns differ from part-0.parquet's"),
        ("bad-propensity", r"propensity.*2505"),  # row 5 of part 1 = row 2505 of the log
        ("empty", r"has no Parquet part files"),
    ],
)  # fmt: skip
def test_logs_info_refuses_a_bad_folder(logs, tmp_path, how, match) -> None:
    import re

    ds = _bad_folder(logs, tmp_path, how)
    res = runner.invoke(app, ["logs", "info", str(ds)])
    assert res.exit_code == 2, res.output
    assert re.search(match, " ".join(res.output.split())), res.output
    if how == "duplicate-ids":
        with pytest.raises(LogValidationError, match=r"part-1\.parquet row 3"):
            check_unique_event_ids(ds)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--estimators", "dr"], "cannot be streamed over a dataset folder"),
        (["--interval", "bootstrap-t"], "use --interval clt"),
        (["--target-probs", "x.npy"], "give exactly one of --policy"),
    ],
)
def test_ope_on_a_folder_bad_input(logs, extra, match) -> None:
    res = runner.invoke(
        app,
        ["ope", "--logs", str(logs["folder"]), "--policy", str(logs["agent"]), "--config",
         str(logs["config"]), *extra],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert match in " ".join(res.output.split())


def test_ope_on_a_folder_needs_a_policy(logs) -> None:
    res = runner.invoke(
        app, ["ope", "--logs", str(logs["folder"]), "--target-probs", str(logs["agent"])]
    )
    assert res.exit_code == 2
    assert "give the target as --policy" in " ".join(res.output.split())


def test_read_dataset_bad_max_rows(logs) -> None:
    with pytest.raises(ValueError, match="`max_rows` must be >= 1"):
        read_dataset(logs["folder"], max_rows=0)
