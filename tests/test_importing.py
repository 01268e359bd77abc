from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from copyloop import DecisionLog, VariantsTable
from copyloop.cli import app

runner = CliRunner()


def write_csv(path: Path, n: int = 50, seed: int = 0, **overrides) -> Path:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 70, n),
            "score": rng.normal(size=n).round(3),
            "country": rng.choice(["de", "fr", "jp"], n),
            "device": rng.choice(["ios", "android"], n),
            "arm": rng.choice(["x", "y", "z"], n),
            "click": rng.integers(0, 2, n),
            "p": np.full(n, 1 / 3),
            "slot": rng.choice(["s1", "s2"], n),
        }
    )
    for col, (row, value) in overrides.items():
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
    df.to_csv(path, index=False)
    return path


def import_args(src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "logs",
        "import",
        str(src),
        "--out",
        str(out),
        "--action-col",
        "arm",
        "--reward-col",
        "click",
        "--propensity-col",
        "p",
        "--context-cols",
        "age,score",
        "--categorical-cols",
        "country,device",
        *extra,
    ]


def test_import_onehot(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "clicks.csv")
    out = tmp_path / "logs.parquet"
    res = runner.invoke(app, import_args(src, out, "--campaign-col", "slot"))
    assert res.exit_code == 0, res.output
    v = VariantsTable.read(tmp_path / "logs.variants.parquet")
    log = DecisionLog.read(out, variants=v)
    assert log.n_rows == 50 and log.context_dim == 2 + 3 + 2
    df = pd.read_csv(src)
    np.testing.assert_allclose(log.context[:, 0], df["age"])
    # one-hot block for country: de, fr, jp in sorted order
    np.testing.assert_array_equal(
        log.context[:, 2:5].argmax(1), df["country"].map({"de": 0, "fr": 1, "jp": 2})
    )
    assert set(v.campaign_variants()) == {"s1", "s2"}
    np.testing.assert_array_equal(log.reward, df["click"])


def test_import_hash_and_candidates(tmp_path: Path) -> None:
    src = tmp_path / "c.csv"
    pd.DataFrame(
        {
            "f": [0.1, 0.2, 0.3],
            "cat": ["a", "b", "a"],
            "arm": ["x", "y", "x"],
            "cands": ["x|y", "x|y|z", "z|x"],
            "r": [1, 0, ""],
            "p": [0.5, 0.3, 0.5],
        }
    ).to_csv(src, index=False)
    out = tmp_path / "o.parquet"
    res = runner.invoke(
        app,
        [
            "logs",
            "import",
            str(src),
            "--out",
            str(out),
            "--action-col",
            "arm",
            "--reward-col",
            "r",
            "--propensity-col",
            "p",
            "--context-cols",
            "f",
            "--categorical-cols",
            "cat",
            "--categorical-encoding",
            "hash",
            "--hash-dim",
            "4",
            "--candidates-col",
            "cands",
        ],
    )
    assert res.exit_code == 0, res.output
    log = DecisionLog.read(out)
    assert log.context_dim == 1 + 4
    assert log.action_index.tolist() == [0, 1, 1]
    assert np.isnan(log.reward[2])
    assert log.context[0, 1:].tolist() == log.context[2, 1:].tolist()  # same category, same bucket


BAD = [
    ({}, ["--propensity-col", "prob"], "has no column\\(s\\) `prob`"),
    ({"p": (7, "")}, [], "column `p` \\(propensity\\) must be in \\(0, 1\\]; rows 7 have nan"),
    ({"p": (3, 0.0)}, [], "column `p` \\(propensity\\) must be in \\(0, 1\\]; rows 3 have 0.0"),
    ({"p": (4, "abc")}, [], "column `p` \\(propensity\\) must be numeric; rows 4 have 'abc'"),
    ({"age": (9, "old")}, [], "column `age` \\(context\\) must be numeric; rows 9 have 'old'"),
    (
        {"arm": (2, "w")},
        ["--candidates-col", "cands"],
        "column `arm` \\(action\\) must be among the candidates in `cands`; rows 2 have 'w'",
    ),
]


@pytest.mark.parametrize(("overrides", "extra", "match"), BAD)
def test_bad_import_names_column_and_rows_and_writes_nothing(
    tmp_path: Path, overrides, extra, match
) -> None:
    src = write_csv(tmp_path / "clicks.csv", **overrides)
    if "--candidates-col" in extra:
        df = pd.read_csv(src)
        df["cands"] = "x|y|z"
        df.to_csv(src, index=False)
    out = tmp_path / "logs.parquet"
    args = import_args(src, out)
    if extra[:1] == ["--propensity-col"]:
        args[args.index("--propensity-col") + 1] = extra[1]
        extra = []
    res = runner.invoke(app, args + list(extra))
    assert res.exit_code == 2, res.output
    import re

    assert re.search(match, " ".join(res.output.split())), res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clicks.csv"]


def test_import_parquet_source_large_streamed(tmp_path: Path) -> None:
    from copyloop.importing import ColumnMapping, import_log

    n = 30_000
    rng = np.random.default_rng(1)
    pd.DataFrame(
        {
            "a": rng.integers(0, 4, n).astype(str),
            "r": rng.integers(0, 2, n),
            "p": np.full(n, 0.25),
            "x": rng.normal(size=n),
        }
    ).to_parquet(tmp_path / "s.parquet")
    rep = import_log(
        tmp_path / "s.parquet",
        ColumnMapping(action_col="a", reward_col="r", propensity_col="p", context_cols=("x",)),
        tmp_path / "o.parquet",
        batch_size=7_000,
    )
    assert rep.rows == n and rep.actions == 4
    assert (
        sum(len(b) for b in DecisionLog.iter_batches(tmp_path / "o.parquet", batch_size=9_999)) == n
    )


def test_mapping_errors() -> None:
    from copyloop.importing import ColumnMapping

    with pytest.raises(ValueError, match="at least one feature column"):
        ColumnMapping(action_col="a", reward_col="r", propensity_col="p")
    with pytest.raises(ValueError, match="mapped twice"):
        ColumnMapping(action_col="a", reward_col="a", propensity_col="p", context_cols=("x",))
    with pytest.raises(ValueError, match="'onehot' or 'hash'"):
        ColumnMapping(
            action_col="a",
            reward_col="r",
            propensity_col="p",
            context_cols=("x",),
            categorical_encoding="bins",
        )


def test_import_candidates_with_campaigns(tmp_path: Path) -> None:
    src = tmp_path / "c.csv"
    pd.DataFrame(
        {
            "f": [0.1, 0.2],
            "arm": ["x", "x"],
            "camp": ["k1", "k2"],
            "cands": ["x|y", "y|x"],
            "r": [1, 0],
            "p": [0.5, 0.5],
        }
    ).to_csv(src, index=False)
    res = runner.invoke(
        app,
        [
            "logs",
            "import",
            str(src),
            "--out",
            str(tmp_path / "o.parquet"),
            "--action-col",
            "arm",
            "--reward-col",
            "r",
            "--propensity-col",
            "p",
            "--context-cols",
            "f",
            "--candidates-col",
            "cands",
            "--campaign-col",
            "camp",
        ],
    )
    assert res.exit_code == 0, res.output
    v = VariantsTable.read(tmp_path / "o.variants.parquet")
    log = DecisionLog.read(tmp_path / "o.parquet", variants=v)
    assert log.column("action") == ["k1/x", "k2/x"]
    assert log.action_index.tolist() == [0, 1]
    assert v.campaign_variants() == {"k1": ["k1/x", "k1/y"], "k2": ["k2/y", "k2/x"]}
