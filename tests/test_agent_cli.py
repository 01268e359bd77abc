"""``copyloop agent fit`` / ``agent eval`` and :mod:`copyloop.agents.offline`: the offline journey
from a log to a gate verdict, its slots, its split, and the inputs it refuses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner, Result

from copyloop import DecisionLog, VariantsTable
from copyloop.agents.offline import (
    MAX_HEAD_DIM,
    candidate_rows,
    check_learnable,
    fit_policy,
    fit_record_path,
    load_fitted,
    make_policy,
    parse_params,
    policy_probs,
    read_log,
    split_log,
    split_order,
    store_for,
)
from copyloop.agents.store import VariantStore
from copyloop.cli import app as root_app
from copyloop.cli_agent import agent_app
from copyloop.cli_common import CopyloopGroup

runner = CliRunner()
agent_cli = typer.Typer(cls=CopyloopGroup, pretty_exceptions_enable=False)
agent_cli.add_typer(agent_app, name="agent")

SEGMENTS = ("student", "parent", "retiree")
HEADLINES = ("short", "long", "urgent", "friendly")
# True CTR of each headline per segment (desktop: ×0.8, mobile: ×1.2): the best headline
# differs by segment, so a contextual policy beats uniform logging clearly.
CTR = np.array([[0.02, 0.05, 0.12, 0.04], [0.08, 0.03, 0.02, 0.10], [0.03, 0.09, 0.02, 0.05]])


def cli(*args: str) -> Result:
    """Run a copyloop command (``agent …`` through agent_app, the rest through the root app)."""
    app = agent_cli if args[0] == "agent" else root_app
    return runner.invoke(app, list(args))


def text(res: Result) -> str:
    return " ".join(res.output.split())


def write_clicks(
    path: Path,
    n: int,
    *,
    seed: int = 0,
    segments: tuple[str, ...] = SEGMENTS,
    headlines: tuple[str, ...] = HEADLINES,
    clicks: bool = True,
) -> Path:
    """A click log as a marketer exports it: categorical context, uniform logging."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, n)
    d = rng.integers(0, 2, n)
    a = rng.integers(0, 4, n)
    click = rng.random(n) < CTR[s, a] * np.where(d == 0, 1.2, 0.8)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "segment", "device", "headline", "clicked", "p"])
        for i in range(n):
            w.writerow(
                [
                    1_767_225_600 + i,
                    segments[s[i]],
                    ("mobile", "desktop")[d[i]],
                    headlines[a[i]],
                    int(click[i]) if clicks else "",
                    0.25,
                ]
            )
    return path


def import_clicks(csv_path: Path, out: Path) -> Path:
    res = cli(
        "logs",
        "import",
        str(csv_path),
        "--out",
        str(out),
        "--action-col",
        "headline",
        "--reward-col",
        "clicked",
        "--propensity-col",
        "p",
        "--categorical-cols",
        "segment,device",
        "--timestamp-col",
        "ts",
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("imported")
    return import_clicks(write_clicks(d / "clicks.csv", 8000), d / "clicks.parquet")


@pytest.fixture(scope="module")
def fitted(imported: Path) -> Path:
    out = imported.parent / "lin.npz"
    res = cli(
        "agent", "fit", "--logs", str(imported), "--agent", "linear_ts", "--split", "0.8",
        "--out", str(out),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


# ---- the journey without Python ----------------------------------------------------------------
def test_csv_journey_without_python(imported: Path, fitted: Path) -> None:
    """CSV with categorical context → logs import → agent fit → agent eval: the contextual
    policy beats the uniform logger on the held-out fifth, and the gate promotes it."""
    record = json.loads(fit_record_path(fitted).read_text())
    assert record["arm_features"] == "onehot" and record["split"] == 0.8
    assert record["context_names"] == [
        "segment=parent", "segment=retiree", "segment=student",
        "device=desktop", "device=mobile",
    ]  # fmt: skip
    assert record["fit_rows"] == 6400 and record["learned_rows"] == 6400
    res = cli("agent", "eval", "--logs", str(imported), "--policy", str(fitted), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["rows"] == 1600 and out["split"] == 0.8 and out["verdict"] == "promote"
    assert "logging policy was uniform" in " ".join(out["notes"])
    est = {e["estimator"]: e for e in out["policy"]["estimates"]}
    base = {e["estimator"]: e for e in out["baseline"]["estimates"]}
    assert set(est) == {"ipw", "snipw", "dr"}
    # the logger is uniform and the best headline per segment earns ~2x its CTR
    assert est["dr"]["lower"] > base["dr"]["estimate"]
    # the table, and the same verdict without --json
    res = cli("agent", "eval", "--logs", str(imported), "--policy", str(fitted))
    assert res.exit_code == 0 and "PROMOTE" in res.output
    # a counting agent on the same log: propensity-weighted, one arm per headline
    out2 = imported.parent / "bts.npz"
    res = cli(
        "agent", "fit", "--logs", str(imported), "--agent", "bernoulli_ts", "--split", "0.8",
        "--param", "segment_columns=0,3", "--out", str(out2), "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["weighted"] is True
    res = cli(
        "agent", "eval", "--logs", str(imported), "--policy", str(out2),
        "--baseline", str(fitted), "--json",
    )  # fmt: skip
    assert res.exit_code in (0, 1), res.output
    assert json.loads(res.stdout)["baseline"]["name"] == "lin.npz"


def test_uniform_baseline_holds_a_uniform_policy(imported: Path, tmp_path: Path) -> None:
    """The gate's other side: the uniform policy cannot beat the uniform logger (exit 1)."""
    out = tmp_path / "uni.npz"
    res = cli(
        "agent", "fit", "--logs", str(imported), "--agent", "uniform", "--split", "0.8",
        "--out", str(out),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = cli("agent", "eval", "--logs", str(imported), "--policy", str(out), "--json")
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout)["verdict"] == "hold"


# ---- the library -------------------------------------------------------------------------------
def test_split_by_time_then_row_order(imported: Path) -> None:
    log = read_log(imported, VariantsTable.read(imported.with_suffix(".variants.parquet")))
    # shuffle the rows: the split follows the timestamps, not the file order
    perm = np.random.default_rng(1).permutation(log.n_rows)
    shuffled = DecisionLog(log.table.take(perm), variants=log.variants)
    fit, held = split_log(shuffled, 0.75)
    assert split_order(shuffled)[1] == "time"
    ts_fit = fit.table.column("ts").cast("int64").to_numpy()
    ts_held = held.table.column("ts").cast("int64").to_numpy()
    assert fit.n_rows == 6000 and held.n_rows == 2000 and ts_fit.max() < ts_held.min()
    again = split_log(shuffled, 0.75)[1]
    assert again.table.equals(held.table)  # deterministic
    # one timestamp for every row (an import without a time column): row order
    flat = shuffled.table.set_column(
        1, "ts", pa.array(np.zeros(log.n_rows, "datetime64[us]"), pa.timestamp("us", tz="UTC"))
    )
    same = DecisionLog(flat, variants=log.variants)
    assert split_order(same)[1] == "row order"
    assert (
        split_log(same, 0.75)[1]
        .table.column("event_id")
        .equals(flat.slice(6000).column("event_id"))
    )


def test_policy_probs_follow_the_slots_of_ope(imported: Path) -> None:
    """Slot j of a row is its j-th candidate (explicit, in any order, or its campaign's j-th
    variant): policy_probs agrees with the per-request decide() on the same candidates, and its
    mask with feedback_from_log's."""
    from copyloop.ope.data import feedback_from_log

    var = VariantsTable.read(imported.with_suffix(".variants.parquet"))
    log = read_log(imported, var)
    store = store_for(var)
    pol = fit_policy("epsilon_greedy", {"seed": 0, "epsilon": 0.2}, log, store)
    rows = log.table.slice(0, 40)
    rng = np.random.default_rng(3)
    ids = var.variant_ids
    cands: list[list[str] | None] = []
    action_index = []
    for i, a in enumerate(rows.column("action").to_pylist()):
        if i % 3 == 0:
            cands.append(None)  # the campaign's full set, in table order
            action_index.append(ids.index(a))
            continue
        others = [v for v in ids if v != a]
        c = [a, *rng.choice(others, size=int(rng.integers(0, 3)), replace=False).tolist()]
        rng.shuffle(c)
        cands.append(c)
        action_index.append(c.index(a))
    t = rows.set_column(5, "candidates", pa.array(cands, pa.list_(pa.string())))
    t = t.set_column(7, "action_index", pa.array(action_index, pa.int32()))
    mixed = DecisionLog(t, variants=var)
    probs = policy_probs(pol, mixed, store)
    data = feedback_from_log(mixed, var)
    np.testing.assert_array_equal(probs > 0, data.mask)
    ctx = mixed.context
    for i, c in enumerate(cands):
        want = pol.decide(ctx[i], c if c is not None else ids, event_id=f"e{i}").probs
        np.testing.assert_allclose(probs[i, : len(want)], want)


def test_fit_weights_counting_agents_as_warm_start_does(market, tmp_path: Path) -> None:
    """On a skewed log (a learning TS logger), fit_policy's Bernoulli TS equals warm_start's,
    and the market's text features equal the catalog's."""
    from copyloop.agents import BernoulliTSPolicy, LinearTSPolicy, warm_start
    from copyloop.envs.simulate import simulate

    path = tmp_path / "skewed.parquet"
    simulate(market, LinearTSPolicy(seed=1), 3000, seed=0, out=path)
    var = VariantsTable.read(path.with_suffix(".variants.parquet"))
    log = read_log(path, var)
    store = store_for(var, market)
    np.testing.assert_array_equal(
        store.features, VariantStore.from_catalog(market.catalog).features
    )
    ours = fit_policy("bernoulli_ts", {"seed": 0}, log, store, batch_size=512)
    ref = warm_start(BernoulliTSPolicy(seed=0), log, market, batch_size=512)
    assert not np.allclose(log.propensity, log.propensity[0])  # the weights matter here
    for k, v in ref._get_state().items():
        np.testing.assert_allclose(ours._get_state()[k], v)


def test_refuses_what_an_agent_cannot_learn(imported: Path) -> None:
    var = VariantsTable.read(imported.with_suffix(".variants.parquet"))
    log = read_log(imported, var)
    wide = VariantStore(var.variant_ids, np.eye(4, 400, dtype=np.float32), ["default"] * 4)
    with pytest.raises(ValueError, match=f"at most {MAX_HEAD_DIM:,}"):
        check_learnable(make_policy("linear_ts", {}), log, wide)
    check_learnable(make_policy("linear_ts", {"features": "candidate"}), log, wide)
    check_learnable(make_policy("logistic_ts", {}), log, wide)  # a diagonal posterior
    with pytest.raises(ValueError, match="outside the log's 5 context features"):
        check_learnable(make_policy("bernoulli_ts", {"segment_columns": (3, 9)}), log, wide)
    with pytest.raises(ValueError, match="cannot learn from log rows"):
        make_policy("ppo", {})


PARAMS = [
    (
        ["noise=0.3", "min_draws=none", "n_draws=64"],
        {"noise": 0.3, "min_draws": None, "n_draws": 64},
    ),
    (["segment_columns=0,5"], {"segment_columns": (0, 5)}),
]


@pytest.mark.parametrize(("items", "want"), PARAMS)
def test_parse_params(items: list[str], want: dict[str, object]) -> None:
    name = "bernoulli_ts" if "segment_columns" in want else "linear_ts"
    assert parse_params(name, items) == want


# ---- bad input: exit 2, a message, nothing written ---------------------------------------------
def _null_propensity(src: Path, out: Path) -> Path:
    t = pq.read_table(src)
    i = t.schema.get_field_index("propensity")
    t = t.set_column(i, "propensity", pa.nulls(t.num_rows, pa.float64()))
    pq.write_table(t, out)
    VariantsTable.read(src.with_suffix(".variants.parquet")).write(
        out.with_suffix(".variants.parquet")
    )
    return out


FIT_BAD = [
    (["--agent", "oracle"], "--agent must be one of"),
    (["--agent", "linear_ts", "--param", "noise"], "--param 'noise' is not key=value"),
    (["--agent", "linear_ts", "--param", "nois=1"], "linear_ts has no such parameter"),
    (["--agent", "linear_ts", "--param", "noise=high"], "noise='high': expected a number"),
    (["--agent", "linear_ts", "--param", "noise=-1"], "`noise` and `reg` must be > 0"),
    (["--agent", "ppo"], "PPOPolicy cannot learn from log rows"),
    (["--agent", "linear_ts", "--split", "1.5"], "--split must be in (0, 1)"),
    (["--agent", "linear_ts", "--split", "0"], "--split must be in (0, 1)"),
    (["--agent", "linear_ts", "--features", "text"], "--features text needs embeddings"),
    (["--agent", "bernoulli_ts", "--param", "segment_columns=4,9"], "outside the log's 5"),
]


@pytest.mark.parametrize(("args", "match"), FIT_BAD)
def test_fit_bad_input(imported: Path, tmp_path: Path, args: list[str], match: str) -> None:
    out = tmp_path / "p.npz"
    res = cli("agent", "fit", "--logs", str(imported), "--out", str(out), *args)
    assert res.exit_code == 2, res.output
    assert match in text(res)
    assert list(tmp_path.iterdir()) == []


def test_fit_refuses_logs_without_rewards_or_propensities(tmp_path: Path) -> None:
    """No observed reward; a Parquet log whose propensity is null; and an import without a
    propensity column, which the import itself refuses."""
    src = write_clicks(tmp_path / "noclicks.csv", 500, clicks=False)
    log = import_clicks(src, tmp_path / "noclicks.parquet")
    nulls = _null_propensity(log, tmp_path / "noprop.parquet")
    before = sorted(tmp_path.iterdir())
    res = cli("agent", "fit", "--logs", str(log), "--agent", "linear_ts", "--out", f"{log}.npz")
    assert res.exit_code == 2 and "has no observed rewards" in text(res)
    res = cli("agent", "fit", "--logs", str(nulls), "--agent", "linear_ts", "--out", f"{log}.x.npz")
    assert res.exit_code == 2 and "has no propensities (`propensity` is null" in text(res)
    res = cli(
        "logs", "import", str(src), "--out", str(tmp_path / "np.parquet"),
        "--action-col", "headline", "--reward-col", "clicked", "--categorical-cols", "segment",
    )  # fmt: skip
    assert res.exit_code == 2 and "--propensity-col" in text(res)
    assert sorted(tmp_path.iterdir()) == before


@pytest.fixture(scope="module")
def other_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Logs a policy fit on ``imported`` must not be judged on."""
    d = tmp_path_factory.mktemp("other")
    return {
        # a fourth segment: one more context feature
        "wider": import_clicks(_four_segments(d / "w.csv"), d / "w.parquet"),
        # the same width, another category: other context names
        "renamed": import_clicks(
            write_clicks(d / "r.csv", 600, segments=("student", "parent", "senior"), seed=2),
            d / "r.parquet",
        ),
        # the same features, other headlines: another campaign set
        "other_set": import_clicks(
            write_clicks(d / "o.csv", 600, headlines=("a", "b", "c", "d"), seed=3),
            d / "o.parquet",
        ),
    }


def _four_segments(path: Path) -> Path:
    write_clicks(path, 600, seed=1)
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("student", "gamer").replace("parent", "gamer")
    lines[1] = lines[1].replace("retiree", "gamer")
    path.write_text("\n".join(lines) + "\n")
    return path


def _eval_bad_cases(
    imported: Path, fitted: Path, other: dict[str, Path], tmp: Path
) -> list[tuple[list[str], str]]:
    pol = ["--policy", str(fitted)]
    return [
        (
            ["--logs", str(other["wider"]), *pol],
            "has 6 context features but the policy was fit on 5",
        ),
        (["--logs", str(other["renamed"]), *pol], "context features are not the fit log's"),
        (["--logs", str(other["other_set"]), *pol], "it was fit on another campaign set"),
        (
            ["--logs", str(_null_propensity(imported, tmp / "np.parquet")), *pol],
            "has no propensities",
        ),
        (["--logs", str(imported), *pol, "--split", "1.0"], "--split must be in (0, 1)"),
        (["--logs", str(imported), *pol, "--split", "0.5"], "rows it learned from"),
        (["--logs", str(imported), *pol, "--baseline", "best"], "--baseline must be logging"),
        (["--logs", str(imported), *pol, "--estimators", "magic"], "unknown estimator 'magic'"),
    ]


def test_eval_bad_input(
    imported: Path, fitted: Path, other_logs: dict[str, Path], tmp_path: Path
) -> None:
    cases = _eval_bad_cases(imported, fitted, other_logs, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    watched = sorted(p.name for p in imported.parent.iterdir())
    for args, match in cases:
        res = cli("agent", "eval", *args)
        assert res.exit_code == 2, (args, res.output)
        assert match in text(res), (args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in imported.parent.iterdir()) == watched


def test_eval_refuses_rows_the_policy_learned_and_stale_records(
    imported: Path, fitted: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole.npz"
    res = cli("agent", "fit", "--logs", str(imported), "--agent", "linucb", "--out", str(whole))
    assert res.exit_code == 0, res.output
    res = cli("agent", "eval", "--logs", str(imported), "--policy", str(whole))
    assert res.exit_code == 2 and "fit on every row of this log" in text(res)
    # a fit record that belongs to another save of the policy file
    stale = tmp_path / "stale.npz"
    stale.write_bytes(fitted.read_bytes())
    record = json.loads(fit_record_path(fitted).read_text())
    fit_record_path(stale).write_text(json.dumps({**record, "policy_sha256": "0" * 64}))
    res = cli("agent", "eval", "--logs", str(imported), "--policy", str(stale))
    assert res.exit_code == 2 and "checksums differ" in text(res)


# ---- the simulated journey, judged by the world ------------------------------------------------
@pytest.mark.slow
def test_simulated_journey_estimates_cover_the_true_value(tmp_path: Path) -> None:
    """30k rows of uniform logging on the tests' market; each agent fit on the first 80 % by
    time and evaluated on the last 20 % (6,000 rows). Tolerance: the world's true value of the
    frozen policy lies inside the 95 % interval of every estimator (IPW, SNIPW, DR), and the
    agents beat uniform in the world. (200k rows: experiments/offline_journey.py.)"""
    from copyloop.cli_clicksim import market_of_log
    from copyloop.contract import log_metadata, read_variants_for
    from copyloop.experiments.offline_journey import world_value

    cfg = tmp_path / "market.toml"
    cfg.write_text(
        "[market]\nseed = 1\n[market.catalog]\nn_campaigns = 24\nseed = 3\n"
        "[market.population]\nn_users = 4000\n"
    )
    logs = tmp_path / "logs.parquet"
    res = cli("simulate", "--rounds", "30000", "--out", str(logs), "--config", str(cfg))
    assert res.exit_code == 0, res.output
    market = market_of_log(log_metadata(logs), "auto")
    held = split_log(read_log(logs, read_variants_for(logs)), 0.8)[1]
    for agent in ("linear_ts", "logistic_ts", "bernoulli_ts"):
        out = tmp_path / f"{agent}.npz"
        res = cli(
            "agent", "fit", "--logs", str(logs), "--agent", agent, "--split", "0.8",
            "--out", str(out),
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        res = cli("agent", "eval", "--logs", str(logs), "--policy", str(out), "--json")
        assert res.exit_code in (0, 1), res.output
        rep = json.loads(res.stdout)
        assert rep["rows"] == 6000
        pol, _ = load_fitted(out)
        truth = world_value(market, held, policy_probs(pol, held))
        valid = candidate_rows(held, pol.store) >= 0  # type: ignore[arg-type]
        assert truth > world_value(market, held, valid / valid.sum(axis=1, keepdims=True))
        for e in rep["policy"]["estimates"]:
            assert e["lower"] <= truth <= e["upper"], (agent, e, truth)
