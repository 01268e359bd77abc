"""Bad input and faults at first contact, one table (issue 12): every case is a command line,
the exit code it must end with, a fragment its message must contain, and the files that must
not exist afterwards (no partial output, no orphan sidecar, no temp file).

Exit codes (copyloop/cli_common.py, docs/cli.md): 0 ok / promote, 1 hold, 2 bad input,
3 internal error, 130 interrupted, 143 terminated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from copyloop import DecisionLog
from copyloop.cli import app

runner = CliRunner()

MARKET_TOML = (
    "[market]\nseed = 1\n[market.catalog]\nn_campaigns = 24\nseed = 3\n"
    "[market.population]\nn_users = 4000\n"
)
IMPORT = ["--action-col", "arm", "--reward-col", "click", "--propensity-col", "p"]


# ---- inputs --------------------------------------------------------------------------------
def _csv(path: Path, rows: int, *, dup: tuple[int, int] | None = None, clicks: bool = True) -> Path:
    """A click log CSV: event ids e0..e{rows-1} (row ``dup[1]`` repeats ``dup[0]``'s id)."""
    rng = np.random.default_rng(0)
    ids = [f"e{i}" for i in range(rows)]
    if dup is not None:
        ids[dup[1]] = ids[dup[0]]
    click = (rng.random(rows) < 0.2).astype(int) if clicks else np.zeros(rows, int)
    lines = ["eid,arm,click,p,age"] + [
        f"{ids[i]},{'ab'[i % 2]},{click[i]},0.5,{rng.integers(18, 80)}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _imported(tmp: Path, name: str, rows: int, **kw: object) -> Path:
    src = _csv(tmp / f"{name}.csv", rows, **kw)  # type: ignore[arg-type]
    out = tmp / f"{name}.parquet"
    res = runner.invoke(
        app,
        [
            "logs",
            "import",
            str(src),
            *IMPORT,
            "--context-cols",
            "age",
            "--event-id-col",
            "eid",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and broken inputs, built once."""
    from copyloop.agents import UniformPolicy

    d = tmp_path_factory.mktemp("faults")
    f: dict[str, Path] = {"dir": d}
    f["toml"] = d / "market.toml"
    f["toml"].write_text(MARKET_TOML)
    f["log"] = _imported(d, "good", 400)
    log = DecisionLog.read(f["log"])
    np.save(d / "uniform.npy", np.full((log.n_rows, 2), 0.5))
    f["npy"] = d / "uniform.npy"
    # a log whose event ids repeat at rows 10 and 900 (written around the contract's writer)
    table = pq.read_table(_imported(d, "base1k", 1000))
    ev = table.column("event_id").to_pylist()
    ev[900] = ev[10]
    f["dup_log"] = d / "dup.parquet"
    pq.write_table(table.set_column(0, "event_id", pa.array(ev)), f["dup_log"])
    f["dup_csv"] = _csv(d / "dup.csv", 1000, dup=(10, 900))
    f["one_row"] = _imported(d, "one", 1)
    f["no_clicks"] = _imported(d, "noclick", 300, clicks=False)
    # broken files
    raw = f["log"].read_bytes()
    f["trunc_parquet"] = d / "trunc.parquet"
    f["trunc_parquet"].write_bytes(raw[: len(raw) // 2])
    f["csv_as_parquet"] = d / "renamed.parquet"
    f["csv_as_parquet"].write_text("a,b\n1,2\n")
    pol = d / "uniform_policy.npz"
    UniformPolicy(seed=0).save(pol)
    good = pol.read_bytes()
    f["trunc_npz"] = d / "trunc.npz"
    f["trunc_npz"].write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    for i in range(60, len(flipped) - 30, 97):  # flip bits inside the compressed members
        flipped[i] ^= 0xFF
    f["flip_npz"] = d / "flip.npz"
    f["flip_npz"].write_bytes(bytes(flipped))
    f["trunc_npy"] = d / "trunc.npy"
    f["trunc_npy"].write_bytes(f["npy"].read_bytes()[:100])
    f["bom_csv"] = d / "bom.csv"
    f["bom_csv"].write_bytes(b"\xef\xbb\xbfarm,click,p,age\na,1,0.5,30\nb,0,0.5,40\n")
    f["ragged_csv"] = d / "ragged.csv"
    f["ragged_csv"].write_text("arm,click,p,age\na,1,0.5,30\nb,0,0.5\n")
    f["binary_csv"] = d / "binary.csv"
    f["binary_csv"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 20)
    for name, body in {
        "type_str": '[market]\nsession_length = "five"\n',
        "type_float": "[market.population]\nn_users = 2.5\n",
        "unknown_segment": "[market.world.tastes.bargain_hunters]\nurgency = 1.0\n",
        "bad_taste_value": '[market.world.tastes.bargain_hunter]\nurgency = "high"\n',
        "toml_syntax": "[market\nseed = 1\n",
    }.items():
        (d / f"{name}.toml").write_text(body)
    (d / "a_folder").mkdir()
    return f


@dataclass(frozen=True)
class Case:
    """One command line and what it must do."""

    name: str
    argv: Callable[[dict[str, Path], Path], list[str]]
    code: int
    fragment: str
    absent: tuple[str, ...] = ()  # paths (relative to the case's tmp dir) that must not exist
    extra: tuple[str, ...] = field(default=())  # more message fragments


def _imp(src: str, *more: str) -> Callable[[dict[str, Path], Path], list[str]]:
    def argv(f: dict[str, Path], t: Path) -> list[str]:
        return ["logs", "import", str(f[src]), *IMPORT, "--context-cols", "age", *more]

    return argv


CASES = [
    # 1. event ids unique across the whole file, on import and in every reader
    Case(
        "import: duplicate id across batches",
        lambda f, t: [
            *_imp("dup_csv", "--event-id-col", "eid", "--batch-size", "100")(f, t),
            "--out",
            str(t / "o.parquet"),
        ],
        2,
        "rows 10, 900",
        ("o.parquet", "o.variants.parquet"),
        ("dup.csv", "event_id"),
    ),
    Case(
        "logs info: duplicate id across batches",
        lambda f, t: ["logs", "info", str(f["dup_log"]), "--batch-size", "500"],
        2,
        "rows 10, 900",
    ),
    Case(
        "ope: duplicate id",
        lambda f, t: ["ope", "--logs", str(f["dup_log"]), "--target-probs", str(f["npy"])],
        2,
        "dup.parquet: `event_id` must be unique; rows 10, 900",
    ),
    # 2. corrupted policy / probability / log files: exit 2 (not 1, the gate's hold), named
    Case(
        "gate: truncated policy .npz",
        lambda f, t: [
            "ope",
            "gate",
            "--logs",
            str(f["log"]),
            "--candidate",
            str(f["trunc_npz"]),
            "--incumbent",
            str(f["npy"]),
            "--config",
            str(f["toml"]),
        ],
        2,
        "trunc.npz is not a readable copyloop policy file",
        extra=("re-save",),
    ),
    Case(
        "gate: bit-flipped policy .npz",
        lambda f, t: [
            "ope",
            "gate",
            "--logs",
            str(f["log"]),
            "--candidate",
            str(f["flip_npz"]),
            "--incumbent",
            str(f["npy"]),
            "--config",
            str(f["toml"]),
        ],
        2,
        "flip.npz",
    ),
    Case(
        "ope: truncated .npy",
        lambda f, t: ["ope", "--logs", str(f["log"]), "--target-probs", str(f["trunc_npy"])],
        2,
        "trunc.npy is not a readable .npy",
    ),
    Case(
        "logs info: truncated parquet",
        lambda f, t: ["logs", "info", str(f["trunc_parquet"])],
        2,
        "trunc.parquet is not a readable Parquet log",
        extra=("truncated",),
    ),
    Case(
        "ope: truncated parquet log",
        lambda f, t: ["ope", "--logs", str(f["trunc_parquet"]), "--target-probs", str(f["npy"])],
        2,
        "trunc.parquet is not a readable Parquet",
    ),
    Case(
        "logs info: CSV renamed .parquet",
        lambda f, t: ["logs", "info", str(f["csv_as_parquet"])],
        2,
        "renamed.parquet is not a readable Parquet log",
        extra=("CSV renamed .parquet",),
    ),
    Case(
        "import: CSV renamed .parquet as the source",
        lambda f, t: [*_imp("csv_as_parquet")(f, t), "--out", str(t / "o.parquet")],
        2,
        "renamed.parquet is not a readable Parquet source",
        ("o.parquet", "o.variants.parquet"),
    ),
    # 3. market TOML: types, names, syntax — file and key named, exit 2
    *[
        Case(
            f"simulate --config {name}",
            lambda f, t, name=name: [
                "simulate",
                "--rounds",
                "10",
                "--out",
                str(t / "s.parquet"),
                "--config",
                str(f["dir"] / f"{name}.toml"),
            ],
            2,
            frag,
            ("s.parquet", "s.variants.parquet"),
        )
        for name, frag in [
            ("type_str", 'session_length: expected an integer, got "five"'),
            ("type_float", "n_users: expected an integer, got 2.5"),
            ("unknown_segment", "unknown segment(s) ['bargain_hunters']"),
            ("bad_taste_value", "urgency: expected a number"),
            ("toml_syntax", "not valid TOML"),
        ]
    ],
    # 4. output paths checked before any work; nothing left behind
    Case(
        "import --out a folder",
        lambda f, t: (
            _imp("log")(f, t)[:0] + _imp("bom_csv")(f, t) + ["--out", str(f["dir"] / "a_folder")]
        ),
        2,
        "is a folder",
        ("a_folder.variants.parquet",),
    ),
    Case(
        "import --out in a missing folder",
        lambda f, t: [*_imp("bom_csv")(f, t), "--out", str(t / "missing" / "o.parquet")],
        2,
        "does not exist",
        ("missing",),
    ),
    Case(
        "simulate --out a folder",
        lambda f, t: ["simulate", "--rounds", "10", "--out", str(t)],
        2,
        "is a folder",
    ),
    Case(
        "simulate --variants-out a folder",
        lambda f, t: [
            "simulate",
            "--rounds",
            "10",
            "--out",
            str(t / "s.parquet"),
            "--variants-out",
            str(t),
        ],
        2,
        "--variants-out",
        ("s.parquet",),
    ),
    Case(
        "simulate: size bound without --yes",
        lambda f, t: ["simulate", "--rounds", "100000000", "--out", str(t / "s.parquet")],
        2,
        "pass --yes",
        ("s.parquet",),
    ),
    Case(
        "clicksim fit --out an existing file",
        lambda f, t: ["clicksim", "fit", "--logs", str(f["log"]), "--out", str(f["npy"])],
        2,
        "is a file",
    ),
    Case(
        "ope --plot in a missing folder",
        lambda f, t: [
            "ope",
            "--logs",
            str(f["log"]),
            "--target-probs",
            str(f["npy"]),
            "--plot",
            str(t / "missing" / "x.png"),
        ],
        2,
        "--plot",
        ("missing",),
    ),
    # 6. degenerate logs, flags named as typed, Arrow messages with the file, generate's order
    Case(
        "ope: one-row log",
        lambda f, t: ["ope", "--logs", str(f["one_row"]), "--target-probs", str(f["npy"])],
        2,
        "1 logged decision(s)",
    ),
    Case(
        "ope --json: zero-click log",
        lambda f, t: [
            "ope",
            "--logs",
            str(f["no_clicks"]),
            "--target-probs",
            str(f["npy"]),
            "--json",
        ],
        2,
        "no click in 300 rows",
    ),
    Case(
        "ope --n-boot 1 names the flag",
        lambda f, t: [
            "ope",
            "--logs",
            str(f["log"]),
            "--target-probs",
            str(f["npy"]),
            "--estimators",
            "dm",
            "--n-boot",
            "1",
        ],
        2,
        "--n-boot must be >= 2",
    ),
    Case(
        "ope --reward-model names the flag",
        lambda f, t: [
            "ope",
            "--logs",
            str(f["log"]),
            "--target-probs",
            str(f["npy"]),
            "--reward-model",
            "tree",
        ],
        2,
        "--reward-model must be one of",
    ),
    Case(
        "import: ragged CSV row",
        lambda f, t: [*_imp("ragged_csv")(f, t), "--out", str(t / "o.parquet")],
        2,
        "ragged.csv cannot be read as CSV",
        ("o.parquet", "o.variants.parquet"),
        ("Expected 4 columns, got 3",),
    ),
    Case(
        "import: binary file named .csv",
        lambda f, t: [*_imp("binary_csv")(f, t), "--out", str(t / "o.parquet")],
        2,
        "binary.csv",
        ("o.parquet",),
    ),
    Case(
        "generate: --n checked before the model loads",
        lambda f, t: [
            "generate",
            "--campaign",
            "0",
            "--segment",
            "0",
            "--n",
            "0",
            "--model",
            str(t / "no-model"),
            "--config",
            str(f["toml"]),
        ],
        2,
        "--n must be >= 1",
    ),
    Case(
        "generate: --temperature checked before the model loads",
        lambda f, t: [
            "generate",
            "--campaign",
            "0",
            "--segment",
            "0",
            "--temperature",
            "-1",
            "--model",
            str(t / "no-model"),
            "--config",
            str(f["toml"]),
        ],
        2,
        "temperature",
    ),
    Case(
        "generate: --out checked before the model loads",
        lambda f, t: [
            "generate",
            "--campaign",
            "0",
            "--segment",
            "0",
            "--out",
            str(t / "missing" / "v.parquet"),
            "--model",
            str(t / "no-model"),
            "--config",
            str(f["toml"]),
        ],
        2,
        "--out",
    ),
    Case(
        "experiment run: non-empty --out names --overwrite",
        lambda f, t: ["experiment", "run", "smoke", "--out", str(f["dir"])],
        2,
        "--overwrite",
    ),
    # what must work
    Case(
        "import: UTF-8 BOM header",
        lambda f, t: [*_imp("bom_csv")(f, t), "--out", str(t / "o.parquet")],
        0,
        "imported 2 decisions",
    ),
]


# `copyloop traffic`: refused before any load is sent (port 9 on loopback: nothing listens)
_DOWN = "http://127.0.0.1:9"
CASES += [
    Case(
        "traffic: no key",
        lambda f, t: ["traffic", "--url", _DOWN, "--key", ""],
        2,
        "--key is missing",
    ),
    Case(
        "traffic: not an http url",
        lambda f, t: ["traffic", "--url", "ftp://127.0.0.1", "--key", "k"],
        2,
        "must start with http://",
    ),
    Case(
        "traffic: no concurrency",
        lambda f, t: ["traffic", "--url", _DOWN, "--key", "k", "--concurrency", "0"],
        2,
        "must be in 1..1024",
    ),
    Case(
        "traffic: report folder missing",
        lambda f, t: ["traffic", "--url", _DOWN, "--key", "k", "--out", str(t / "no/r.json")],
        2,
        "r.json",
    ),
    Case(
        "traffic: no service there",
        lambda f, t: ["traffic", "--url", _DOWN, "--key", "k", "--out", str(t / "r.json")],
        2,
        "no service at http://127.0.0.1:9",
        ("r.json",),
        ("copyloop serve --demo",),
    ),
    # `copyloop autopilot` and the service's roles: refused before anything starts
    Case("autopilot: no key", lambda f, t: ["autopilot", "--url", _DOWN, "--key", ""], 2, "--key"),
    Case(
        "autopilot: no service there",
        lambda f, t: ["autopilot", "--url", _DOWN, "--key", "k"],
        2,
        "no service at http://127.0.0.1:9",
    ),
    Case(
        "autopilot: alpha out of range",
        lambda f, t: ["autopilot", "--url", _DOWN, "--key", "k", "--alpha", "1.5"],
        2,
        "alpha",
    ),
    Case(
        "autopilot: an agent setting that cannot learn from the log",
        lambda f, t: ["autopilot", "--url", _DOWN, "--key", "k", "--policy", "ppo"],
        2,
        "cannot learn from log rows",
    ),
    Case(
        "autopilot: an agent setting with a parameter it does not have",
        lambda f, t: ["autopilot", "--url", _DOWN, "--key", "k", "--policy", "linear_ts:bogus=1"],
        2,
        "no such parameter",
    ),
    Case(
        "generator pool-from-log: no such log",
        lambda f, t: [
            "generator",
            "pool-from-log",
            "--logs",
            str(t / "nope.parquet"),
            "--out",
            str(t / "pool.parquet"),
        ],
        2,
        "does not exist",
    ),
    Case(
        "autopilot: a negative number of proposals",
        lambda f, t: ["autopilot", "--url", _DOWN, "--key", "k", "--propose", "-1"],
        2,
        "propose",
    ),
    Case(
        "autopilot: last look before the first",
        lambda f, t: [
            "autopilot",
            "--url",
            _DOWN,
            "--key",
            "k",
            "--min-impressions",
            "500",
            "--max-impressions",
            "100",
        ],
        2,
        "--max-impressions",
    ),
    Case(
        "serve: a replica with --demo",
        lambda f, t: ["serve", "--role", "api", "--demo", "--store", f"sqlite:///{t / 's.db'}"],
        2,
        "a replica registers nothing",
        ("s.db",),
    ),
    Case(
        "serve: unknown role",
        lambda f, t: ["serve", "--role", "replica", "--store", f"sqlite:///{t / 's.db'}"],
        2,
        "--role must be one of all, api, learner",
        ("s.db",),
    ),
    Case(
        "serve: unreachable PostgreSQL",
        lambda f, t: [
            "serve",
            "export",
            "--store",
            "postgresql://nobody@127.0.0.1:9/x",
            "--out",
            str(t / "x.parquet"),
        ],
        2,
        "cannot reach the PostgreSQL store",
        ("x.parquet",),
        ("bash scripts/pg.sh start",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_fault(case: Case, files: dict[str, Path], tmp_path: Path) -> None:
    res = runner.invoke(app, case.argv(files, tmp_path))
    text = " ".join(res.output.split())
    assert res.exit_code == case.code, text
    for frag in (case.fragment, *case.extra):
        assert frag in text, text
    assert "Traceback" not in res.output
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), rel
    assert not list(tmp_path.rglob(".*.tmp")), "a temp file was left"


def test_json_is_strict_and_nonfinite_is_null(capsys: pytest.CaptureFixture[str]) -> None:
    from copyloop.cli_common import print_json

    print_json({"lower": float("-inf"), "upper": float("inf"), "x": [float("nan"), 1.5]})
    out = capsys.readouterr().out
    assert "Infinity" not in out and "NaN" not in out
    assert json.loads(out) == {"lower": None, "upper": None, "x": [None, 1.5]}


def test_internal_error_is_exit_3_with_a_saved_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (not bad input) ends with exit 3, one line, and the traceback in a file."""
    import copyloop.stats

    def boom(*a: object, **k: object) -> None:
        raise KeyError("internal bookkeeping")

    monkeypatch.setenv("COPYLOOP_CACHE", str(tmp_path))
    monkeypatch.setattr(copyloop.stats, "summarize_log", boom)
    res = runner.invoke(app, ["logs", "info", "whatever.parquet"])
    assert res.exit_code == 3
    assert "internal error: KeyError" in res.output and "Traceback" not in res.output
    logs = list((tmp_path / "crash").glob("copyloop-*.log"))
    assert len(logs) == 1 and "KeyError" in logs[0].read_text()


@pytest.mark.parametrize(
    ("action", "match"),
    [(1.7, "1.7"), ("1", "'1'"), (True, "True"), (np.float32(1), "float")],
)
def test_single_env_refuses_non_integer_actions(market, action: object, match: str) -> None:
    """The single env refuses what the vector env refuses (issue 12 item 6)."""
    from copyloop.envs.market import CopyMarketEnv

    env = CopyMarketEnv(market=market)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)  # type: ignore[arg-type]


# ---- killed runs: SIGTERM cleans up; SIGKILL's leftovers are swept by the next run ------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "copyloop.cli", *args]


def _start_and_kill(argv: list[str], out: Path, sig: int) -> int:
    """Start ``argv``, wait until its temp file exists (work under way), send ``sig``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    try:
        while not list(out.parent.glob(f".{out.name}.*.tmp")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _big_csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(1)
    with path.open("w") as fh:
        fh.write("arm,click,p,age\n")
        for start in range(0, rows, 100_000):
            m = min(100_000, rows - start)
            ages = rng.integers(18, 80, m)
            clicks = rng.random(m) < 0.1
            fh.write(
                "".join(
                    f"{'ab'[i % 2]},{int(c)},0.5,{a}\n"
                    for i, (c, a) in enumerate(zip(clicks, ages, strict=True))
                )
            )
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
@pytest.mark.parametrize("command", ["simulate", "logs-import"])
def test_killed_run_leaves_nothing(command: str, sig: int, tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    if command == "simulate":
        (tmp_path / "m.toml").write_text(MARKET_TOML)
        argv = _cli("simulate", "--rounds", "20000000", "--config", str(tmp_path / "m.toml"))
        small = _cli("simulate", "--rounds", "100", "--config", str(tmp_path / "m.toml"))
    else:
        src = _big_csv(tmp_path / "big.csv", 1_500_000)
        argv = _cli("logs", "import", str(src), *IMPORT, "--context-cols", "age")
        argv += ["--batch-size", "50000"]
        small = _cli("logs", "import", str(_csv(tmp_path / "small.csv", 50)), *IMPORT)
        small += ["--context-cols", "age"]
    rc = _start_and_kill([*argv, "--out", str(out)], out, sig)
    leftovers = list(tmp_path.glob(".*.tmp"))
    assert not out.exists() and not (tmp_path / "o.variants.parquet").exists()
    if sig == signal.SIGTERM:
        assert rc == 143
        assert not leftovers, "SIGTERM must clean up its temp file"
    else:
        assert rc == -signal.SIGKILL
        assert leftovers, "expected SIGKILL to leave the temp file this test checks is swept"
    done = subprocess.run([*small, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.exists() and (tmp_path / "o.variants.parquet").exists()
    assert not list(tmp_path.glob(".*.tmp")), "the next run must sweep a dead run's temp files"
