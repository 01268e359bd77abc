from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copyloop import DecisionLog, DecisionLogWriter, LogValidationError, VariantsTable
from copyloop.contract import SCHEMA_VERSION, log_schema


def base_kwargs(n: int = 4) -> dict:
    return dict(
        event_id=[f"e{i}" for i in range(n)],
        campaign_id=["c"] * n,
        context=np.arange(n * 3, dtype=np.float32).reshape(n, 3),
        candidates=[["a", "b", "c"]] * n,
        action=["a", "b", "c", "a"][:n],
        action_index=[0, 1, 2, 0][:n],
        propensity=[0.5, 0.25, 0.25, 0.5][:n],
        action_probs=[[0.5, 0.25, 0.25]] * n,
        reward=[1.0, 0.0, None, 0.0][:n],
    )


def test_round_trip_parquet(tmp_path: Path) -> None:
    log = DecisionLog.from_arrays(**base_kwargs())
    path = log.write(tmp_path / "l.parquet")
    meta = pq.ParquetFile(path).schema_arrow.metadata
    assert meta[b"copyloop.schema"] == SCHEMA_VERSION.encode()
    back = DecisionLog.read(path)
    assert back.table.equals(log.table)
    np.testing.assert_array_equal(back.context, log.context)
    assert np.isnan(back.reward[2]) and back.reward[0] == 1.0
    assert back.table.schema.equals(log_schema(3))


def test_readable_by_pandas(tmp_path: Path) -> None:
    import pandas as pd

    path = DecisionLog.from_arrays(**base_kwargs()).write(tmp_path / "l.parquet")
    df = pd.read_parquet(path)
    assert list(df["action"]) == ["a", "b", "c", "a"]
    assert len(df["context"][0]) == 3


def test_iter_batches_streams_and_numbers_rows(tmp_path: Path) -> None:
    kw = base_kwargs(4)
    with DecisionLogWriter(tmp_path / "big.parquet", 3) as w:
        for b in range(5):
            k = dict(kw)
            k["event_id"] = [f"b{b}-{i}" for i in range(4)]
            w.write(DecisionLog.from_arrays(**k))
    sizes = [len(b) for b in DecisionLog.iter_batches(tmp_path / "big.parquet", batch_size=7)]
    assert sum(sizes) == 20 and max(sizes) <= 7
    # a bad row deep in the file is reported with its file-wide row number
    t = pq.read_table(tmp_path / "big.parquet")
    p = t.column("propensity").to_numpy().copy()
    p[13] = 0.0
    t = t.set_column(t.schema.get_field_index("propensity"), "propensity", pa.array(p))
    pq.write_table(t, tmp_path / "bad.parquet")
    with pytest.raises(
        LogValidationError, match=r"`propensity` must be in \(0, 1\]; row 13 has 0.0"
    ):
        for _ in DecisionLog.iter_batches(tmp_path / "bad.parquet", batch_size=5):
            pass


def _with(**changes):
    kw = base_kwargs()
    kw.update(changes)
    return kw


BAD = [
    (_with(propensity=[0.0, 0.25, 0.25, 0.5]), "`propensity` must be in \\(0, 1\\]; row 0 has 0.0"),
    (
        _with(propensity=[0.5, -0.1, 0.25, 0.5]),
        "`propensity` must be in \\(0, 1\\]; row 1 has -0.1",
    ),
    (_with(propensity=[0.5, 0.25, 1.5, 0.5], action_probs=None), "row 2 has 1.5"),
    (_with(propensity=[0.5, 0.25, float("nan"), 0.5]), "`propensity` must be in .*row 2 has nan"),
    (_with(action=["a", "b", "z", "a"]), "`action` must be among the candidates.*row 2 has 'z'"),
    (_with(action_index=[0, 1, 5, 0]), "`action_index` must be smaller than the number of cand"),
    (_with(action_index=[0, -1, 2, 0]), "`action_index` must be >= 0; row 1"),
    (_with(action_probs=[[0.5, 0.5, 0.5]] * 4), "`action_probs` must sum to 1"),
    (_with(action_probs=[[0.5, 0.5]] * 4), "`action_probs` must have one entry per candidate"),
    (
        _with(propensity=[0.5, 0.5, 0.25, 0.5]),
        "`propensity` must equal action_probs\\[action_index\\]; row 1",
    ),
    (
        _with(context=np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0], [0, 0, 0]])),
        "`context` must be finite; row 1",
    ),
    (_with(event_id=["e", "e", "x", "y"]), "`event_id` must be unique; rows 0, 1"),
    (_with(reward=[1.0, np.inf, 0.0, 0.0]), "`reward` must be finite"),
    (_with(position=[0, -2, 0, 1]), "`position` must be >= 0; row 1"),
    (_with(action=["a", "b"]), "`action` has 2"),
    (_with(context=np.zeros(4)), "`context` must be a 2-D array"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD)
def test_bad_input_is_named(kwargs: dict, match: str) -> None:
    with pytest.raises(LogValidationError, match=match):
        DecisionLog.from_arrays(**kwargs)


def test_missing_and_unknown_columns() -> None:
    t = DecisionLog.from_arrays(**base_kwargs()).table
    with pytest.raises(LogValidationError, match=r"missing required column.*`propensity`"):
        DecisionLog(t.drop(["propensity"]))
    with pytest.raises(LogValidationError, match=r"unknown column.*`extra`"):
        DecisionLog(t.append_column("extra", pa.array([1, 2, 3, 4])))


def test_wrong_type_is_named() -> None:
    t = DecisionLog.from_arrays(**base_kwargs()).table
    t = t.set_column(
        t.schema.get_field_index("propensity"), "propensity", pa.array(["x", "0.5", "0.5", "0.5"])
    )
    with pytest.raises(LogValidationError, match="`propensity` must be double, got string"):
        DecisionLog(t)


def test_variable_length_context_is_coerced_or_refused() -> None:
    t = DecisionLog.from_arrays(**base_kwargs()).table
    i = t.schema.get_field_index("context")
    ok = t.set_column(i, "context", pa.array([[1.0, 2.0, 3.0]] * 4, pa.list_(pa.float64())))
    assert DecisionLog(ok).context_dim == 3
    ragged = t.set_column(
        i, "context", pa.array([[1.0, 2.0, 3.0], [1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    )
    with pytest.raises(LogValidationError, match=r"`context` must have the same length.*row 1"):
        DecisionLog(ragged)


def test_candidates_null_checked_against_variants() -> None:
    v = VariantsTable.from_records(
        [
            {"variant_id": "a", "campaign_id": "c", "text": "A"},
            {"variant_id": "b", "campaign_id": "c", "text": "B"},
        ]
    )
    kw = dict(
        event_id=["1", "2"],
        campaign_id=["c", "c"],
        context=np.zeros((2, 1)),
        action=["a", "b"],
        action_index=[0, 1],
        propensity=[0.5, 0.5],
        variants=v,
    )
    assert len(DecisionLog.from_arrays(**kw)) == 2
    with pytest.raises(LogValidationError, match="`action` must be among the candidates"):
        DecisionLog.from_arrays(**{**kw, "action": ["b", "b"]})
    with pytest.raises(
        LogValidationError, match="`campaign_id` must be a campaign of the variants"
    ):
        DecisionLog.from_arrays(**{**kw, "campaign_id": ["c", "zz"]})


def test_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    out = tmp_path / "l.parquet"
    with pytest.raises(RuntimeError, match="boom"), DecisionLogWriter(out, 3) as w:
        w.write(DecisionLog.from_arrays(**base_kwargs()))
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_other_context_width(tmp_path: Path) -> None:
    out = tmp_path / "l.parquet"
    with (
        pytest.raises(
            LogValidationError, match="3 features in this batch but the file was opened with 4"
        ),
        DecisionLogWriter(out, 4) as w,
    ):
        w.write(DecisionLog.from_arrays(**base_kwargs()))
    assert not out.exists()


def test_schema_version_mismatch(tmp_path: Path) -> None:
    t = DecisionLog.from_arrays(**base_kwargs()).table
    meta = {b"copyloop.kind": b"DecisionLog", b"copyloop.schema": b"99"}
    pq.write_table(t.replace_schema_metadata(meta), tmp_path / "v.parquet")
    with pytest.raises(LogValidationError, match="schema version 99"):
        DecisionLog.read(tmp_path / "v.parquet")


BAD_VARIANTS = [
    (
        [
            {"variant_id": "a", "campaign_id": "c", "text": "x"},
            {"variant_id": "a", "campaign_id": "c", "text": "y"},
        ],
        "`variant_id` must be unique",
    ),
    (
        [
            {"variant_id": "a", "campaign_id": "c", "text": "x"},
            {"variant_id": "b", "campaign_id": "d", "text": "y"},
            {"variant_id": "e", "campaign_id": "c", "text": "z"},
        ],
        "contiguous",
    ),
    ([{"variant_id": "a", "campaign_id": "c", "text": None}], "`text` must not be null"),
    (
        [
            {"variant_id": "a", "campaign_id": "c", "text": "x", "embedding": [1.0, 2.0]},
            {"variant_id": "b", "campaign_id": "c", "text": "y", "embedding": [1.0]},
        ],
        "`embedding` must have one length",
    ),
    (
        [{"variant_id": "a", "campaign_id": "c", "text": "x", "attributes": "{not json"}],
        "`attributes` must be a JSON object",
    ),
]


@pytest.mark.parametrize(("records", "match"), BAD_VARIANTS)
def test_bad_variants(records: list, match: str) -> None:
    with pytest.raises(LogValidationError, match=match):
        VariantsTable.from_records(records)


def test_obp_round_trip() -> None:
    from copyloop.importing import from_obp, to_obp

    rng = np.random.default_rng(0)
    n, k = 200, 5
    pi_b = rng.dirichlet(np.ones(k), size=n)
    action = np.array([rng.choice(k, p=p) for p in pi_b])
    fb = {
        "n_rounds": n,
        "n_actions": k,
        "action": action,
        "reward": rng.integers(0, 2, n),
        "pscore": pi_b[np.arange(n), action],
        "context": rng.normal(size=(n, 4)),
        "position": np.zeros(n, int),
        "pi_b": pi_b[:, :, None],
        "action_context": rng.normal(size=(k, 3)),
    }
    log, variants = from_obp(fb)
    assert log.n_rows == n and variants.n_variants == k
    back = to_obp(log, variants)
    np.testing.assert_array_equal(back["action"], action)
    np.testing.assert_allclose(back["pscore"], fb["pscore"])
    np.testing.assert_allclose(back["context"], fb["context"], rtol=1e-6)
    np.testing.assert_allclose(back["action_context"], fb["action_context"], rtol=1e-6)
    bad = dict(fb, pscore=np.zeros(n))
    with pytest.raises(LogValidationError, match="propensity"):
        from_obp(bad)


def _variants(ids: list[str], text: str = "t") -> VariantsTable:
    return VariantsTable.from_records(
        [{"variant_id": v, "campaign_id": "c", "text": f"{text} {v}"} for v in ids]
    )


def test_log_and_variants_are_one_unit(tmp_path: Path) -> None:
    """Both files carry one pair id; a table from another write is refused by readers; an
    error inside the block leaves neither file."""
    from copyloop.contract import read_variants_for, variants_sidecar

    out = tmp_path / "l.parquet"
    with DecisionLogWriter(out, 3, variants=_variants(["a", "b", "c"])) as w:
        w.write(DecisionLog.from_arrays(**base_kwargs()))
    assert variants_sidecar(out) == tmp_path / "l.variants.parquet"
    assert read_variants_for(out).variant_ids == ["a", "b", "c"]
    # the table of another write (e.g. a rerun killed between its two renames)
    other = tmp_path / "other.parquet"
    with DecisionLogWriter(other, 3, variants=_variants(["a", "b", "c"], "new")) as w:
        w.write(DecisionLog.from_arrays(**base_kwargs()))
    variants_sidecar(other).replace(variants_sidecar(out))
    with pytest.raises(LogValidationError, match="not written together"):
        read_variants_for(out)
    fresh = tmp_path / "fresh.parquet"
    with pytest.raises(RuntimeError), DecisionLogWriter(fresh, 3) as w:
        w.set_variants(_variants(["a", "b", "c"]))
        w.write(DecisionLog.from_arrays(**base_kwargs()))
        raise RuntimeError("boom")
    assert not fresh.exists() and not variants_sidecar(fresh).exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_writer_refuses_duplicate_ids_across_batches(tmp_path: Path) -> None:
    out = tmp_path / "l.parquet"
    second = DecisionLog.from_arrays(**{**base_kwargs(), "event_id": ["x", "e1", "y", "z"]})
    with (
        pytest.raises(LogValidationError, match=r"'e1' at rows 1, 5"),
        DecisionLogWriter(out, 3, variants=_variants(["a", "b", "c"])) as w,
    ):
        w.write(DecisionLog.from_arrays(**base_kwargs()))
        w.write(second)
    assert not out.exists() and not (tmp_path / "l.variants.parquet").exists()


def test_stale_temp_files_of_dead_processes_are_swept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from copyloop.contract import sweep_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = tmp_path / "l.parquet"
    stale = tmp_path / f".l.parquet.{int(dead.stdout)}.tmp"
    live = tmp_path / f".l.parquet.{os.getppid()}.tmp"  # the test runner's parent: alive
    other = tmp_path / f".m.parquet.{int(dead.stdout)}.tmp"  # another file's: not ours
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert sweep_stale_temps(out) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_explicit_candidates_must_be_known_variants() -> None:
    with pytest.raises(LogValidationError, match=r"`candidates` must be variant ids.*\['c'\]"):
        DecisionLog.from_arrays(**base_kwargs(), variants=_variants(["a", "b"]))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: None, "does not exist"),
    ],
    ids=["folder", "missing-parent"],
)
def test_output_path_checked_before_writing(tmp_path: Path, make, match: str) -> None:
    from copyloop.contract import OutputPathError, check_output_path

    target = tmp_path / "x.parquet" if match == "is a folder" else tmp_path / "no" / "x.parquet"
    make(target)
    with pytest.raises(OutputPathError, match=match):
        check_output_path(target)
