"""The DecisionLog contract: one row per decision, wherever it came from.

This module owns the schema of the decision log and of the variants table, their Parquet form
and the one validation function every reader goes through. Nothing downstream re-checks: once
a :class:`DecisionLog` exists, its columns are known to be well formed.

Columns:

==============  ===========================  ===============================================
column          Arrow type                   meaning
==============  ===========================  ===============================================
event_id        string                       unique id of the decision
ts              timestamp[us, UTC]           when it was made
campaign_id     string                       which campaign / slot
user_id         string, nullable             who saw it
context         fixed_size_list<float32>[d]  the features the policy used
candidates      list<string>, nullable       variant ids offered, in order; null = the
                                             campaign's full set (variants table order)
action          string                       chosen variant id
action_index    int32                        its index among the candidates
propensity      float64 in (0, 1]            probability the logging policy gave it
action_probs    list<float64>, nullable      the full distribution over candidates
position        int32, nullable              slot position on multi-slot pages
reward          float64, nullable            click (0/1) or value; null = not observed
policy_id       string                       which policy made it
model_version   string                       which version of that policy
==============  ===========================  ===============================================
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
"""Version of the DecisionLog schema, stored in the Parquet metadata under ``copyloop.schema``."""

_META_KIND = b"copyloop.kind"
_META_VERSION = b"copyloop.schema"
_PROB_TOL = 1e-6
_T = TypeVar("_T")


class LogValidationError(ValueError):
    """A decision log or variants table broke the contract.

    The message names the column, the offending rows (first few) and what to do about it.
    """


class OutputPathError(ValueError):
    """An output path cannot be written (missing folder, a folder given for a file, …)."""


class UnreadableFileError(ValueError):
    """A file is missing its data, truncated, corrupted or of another format."""


def log_schema(context_dim: int) -> pa.Schema:
    """Arrow schema of a DecisionLog whose context has ``context_dim`` features."""
    if context_dim < 0:
        raise ValueError(f"`context_dim` must be >= 0, got {context_dim}")
    return pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("campaign_id", pa.string(), nullable=False),
            pa.field("user_id", pa.string()),
            pa.field("context", pa.list_(pa.float32(), context_dim), nullable=False),
            pa.field("candidates", pa.list_(pa.string())),
            pa.field("action", pa.string(), nullable=False),
            pa.field("action_index", pa.int32(), nullable=False),
            pa.field("propensity", pa.float64(), nullable=False),
            pa.field("action_probs", pa.list_(pa.float64())),
            pa.field("position", pa.int32()),
            pa.field("reward", pa.float64()),
            pa.field("policy_id", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
        ]
    )


LOG_COLUMNS: tuple[str, ...] = tuple(log_schema(0).names)
OPTIONAL_LOG_COLUMNS: frozenset[str] = frozenset(
    {"user_id", "candidates", "action_probs", "position", "reward"}
)


# --------------------------------------------------------------------------------------------
# error messages
# --------------------------------------------------------------------------------------------


def _rows_phrase(
    bad: npt.NDArray[np.bool_], values: Sequence[Any] | npt.NDArray[Any] | None, offset: int
) -> str:
    """``"rows 17, 40 have 0.0, nan"`` for the first few rows flagged in ``bad``."""
    idx = np.flatnonzero(bad)
    shown = idx[:5]
    rows = ", ".join(str(int(i) + offset) for i in shown)
    more = f" (and {idx.size - shown.size} more)" if idx.size > shown.size else ""
    noun = "row" if idx.size == 1 else "rows"
    if values is None:
        return f"{noun} {rows}{more}"
    vals = ", ".join(repr(_py(values[int(i)])) for i in shown)
    verb = "has" if idx.size == 1 else "have"
    return f"{noun} {rows}{more} {verb} {vals}"


def _py(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fail(
    column: str,
    rule: str,
    bad: npt.NDArray[np.bool_],
    values: Sequence[Any] | npt.NDArray[Any] | None,
    fix: str,
    offset: int = 0,
) -> LogValidationError:
    return LogValidationError(f"`{column}` {rule}; {_rows_phrase(bad, values, offset)} — {fix}")


# --------------------------------------------------------------------------------------------
# the one validation function
# --------------------------------------------------------------------------------------------


def _to_context(col: pa.ChunkedArray, n: int, row_offset: int) -> pa.Array:
    """Coerce a context column (fixed or variable list of numbers) to fixed_size_list<float32>."""
    arr = col.combine_chunks()
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
        if arr.null_count:
            bad = np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
            raise _fail(
                "context",
                "must not be null",
                bad,
                None,
                "give every decision the feature vector the policy saw",
                row_offset,
            )
        flat = arr.flatten()
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        if arr.null_count:
            bad = np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
            raise _fail(
                "context",
                "must not be null",
                bad,
                None,
                "give every decision the feature vector the policy saw",
                row_offset,
            )
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        d = int(lengths[0]) if n else 0
        if np.any(lengths != d):
            raise _fail(
                "context",
                f"must have the same length in every row (row 0 has {d})",
                lengths != d,
                lengths,
                "pad or fix the feature vectors",
                row_offset,
            )
        flat = arr.flatten()
    else:
        raise LogValidationError(
            f"`context` must be a list of floats per row, got Arrow type {t} — store the "
            "features as one list column (use logs import --context-cols to build it from columns)"
        )
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        raise LogValidationError(
            f"`context` must hold numbers, got list<{flat.type}> — encode categorical features "
            "first (logs import --categorical-cols does this)"
        )
    values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32)
    if values.size and not np.all(np.isfinite(values)):
        rows_bad = np.asarray(~np.isfinite(values.reshape(n, d)).all(axis=1), bool)
        raise _fail(
            "context",
            "must be finite",
            rows_bad,
            None,
            "impute or drop NaN/inf features before logging",
            row_offset,
        )
    return pa.FixedSizeListArray.from_arrays(pa.array(values, pa.float32()), d)


def _cast(col: pa.ChunkedArray, name: str, typ: pa.DataType) -> pa.Array:
    arr = col.combine_chunks()
    if arr.type == typ:
        return arr
    try:
        if pa.types.is_timestamp(typ) and pa.types.is_timestamp(arr.type) and arr.type.tz is None:
            # Naive timestamps are taken as UTC (documented in the contract).
            arr = pc.assume_timezone(arr, "UTC")
        return arr.cast(typ, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise LogValidationError(
            f"`{name}` must be {typ}, got {arr.type} that does not convert ({e}) — fix the "
            "column's type in the source"
        ) from None


def _list_values_at(lists: pa.Array, index: npt.NDArray[np.int64]) -> pa.Array:
    """``lists[i][index[i]]`` for every row (rows must have ``index[i] < len(lists[i])``)."""
    offsets = lists.offsets.to_numpy()[:-1] if len(lists) else np.zeros(0, np.int64)
    return lists.values.take(pa.array(offsets.astype(np.int64) + index))


def validate_log_table(
    table: pa.Table,
    *,
    variants: VariantsTable | None = None,
    row_offset: int = 0,
    check_unique_ids: bool = True,
) -> pa.Table:
    """Check a table against the DecisionLog contract and return it in canonical form.

    The one validation function: every reader (Parquet, CSV import, obp import, the env logger,
    the live service) calls it. Columns are cast to the canonical Arrow types (naive timestamps
    are taken as UTC, variable-length context lists become fixed-size float32 lists) and
    optional columns that are absent are added as nulls.

    Args:
        table: the decisions, one row each.
        variants: when given, rows with null ``candidates`` are checked against the campaign's
            full variant set (``action`` must be the variant at ``action_index``).
        row_offset: added to row numbers in messages (for batches of a larger file).
        check_unique_ids: check ``event_id`` is unique within ``table``.

    Returns:
        The table with the canonical schema (:func:`log_schema`).

    Raises:
        LogValidationError: naming the column, the first offending rows and the fix.
    """
    missing = [
        c for c in LOG_COLUMNS if c not in table.column_names and c not in OPTIONAL_LOG_COLUMNS
    ]
    if missing:
        have = ", ".join(table.column_names) or "(none)"
        raise LogValidationError(
            f"DecisionLog is missing required column(s) {', '.join(f'`{c}`' for c in missing)}; "
            f"it has {have} — add them, or import the file with `copyloop logs import` and a "
            "column mapping"
        )
    extra = [c for c in table.column_names if c not in LOG_COLUMNS]
    if extra:
        raise LogValidationError(
            f"DecisionLog has unknown column(s) {', '.join(f'`{c}`' for c in extra)} — "
            f"the contract's columns are {', '.join(LOG_COLUMNS)}; put extra features in `context`"
        )
    n = table.num_rows
    context = _to_context(table.column("context"), n, row_offset)
    schema = log_schema(context.type.list_size)
    cols: dict[str, pa.Array] = {"context": context}
    for f in schema:
        if f.name == "context":
            continue
        if f.name in table.column_names:
            cols[f.name] = _cast(table.column(f.name), f.name, f.type)
        else:
            cols[f.name] = pa.nulls(n, f.type)
        if not f.nullable and cols[f.name].null_count:
            bad = np.asarray(cols[f.name].is_null().to_numpy(zero_copy_only=False))
            raise _fail(
                f.name, "must not be null", bad, None, "fill it in or drop those rows", row_offset
            )

    # propensity in (0, 1], finite
    prop = cols["propensity"].to_numpy()
    bad = ~((prop > 0.0) & (prop <= 1.0))  # NaN fails both comparisons
    if bad.any():
        raise _fail(
            "propensity",
            "must be in (0, 1]",
            bad,
            prop,
            "check the logging policy; a decision it could not make has no propensity",
            row_offset,
        )

    aidx = cols["action_index"].to_numpy()
    bad = aidx < 0
    if bad.any():
        raise _fail(
            "action_index", "must be >= 0", bad, aidx, "index into the candidates", row_offset
        )

    action = cols["action"]
    cand = cols["candidates"]
    has_cand = np.asarray(cand.is_valid().to_numpy(zero_copy_only=False))
    if has_cand.any():
        lengths = pc.list_value_length(cand).fill_null(0).to_numpy(zero_copy_only=False)
        bad = has_cand & (aidx >= lengths)
        if bad.any():
            raise _fail(
                "action_index",
                "must be smaller than the number of candidates",
                bad,
                aidx,
                "action_index counts from 0 within `candidates`",
                row_offset,
            )
        idx = np.where(has_cand, aidx, 0).astype(np.int64)
        # Rows without candidates read a one-element dummy list so the gather stays vectorised.
        filler = pa.array([[""]], pa.list_(pa.string())).take(pa.array(np.zeros(n, np.int64)))
        chosen = _list_values_at(pc.if_else(pa.array(has_cand), cand, filler), idx)
        same = pc.equal(chosen, action).to_numpy(zero_copy_only=False)
        bad = has_cand & ~same
        if bad.any():
            acts = action.to_pylist()
            raise _fail(
                "action",
                "must be among the candidates, at `action_index`",
                bad,
                acts,
                "log the variant actually shown and its index in `candidates`",
                row_offset,
            )
    n_cand: npt.NDArray[np.int64] | None = None
    if variants is not None and (~has_cand).any():
        n_cand = _check_against_variants(cols, has_cand, variants, row_offset)
    if variants is not None and has_cand.any():
        _check_candidates_known(cand, variants, row_offset)

    probs = cols["action_probs"]
    has_probs = np.asarray(probs.is_valid().to_numpy(zero_copy_only=False))
    if has_probs.any():
        plen = pc.list_value_length(probs).fill_null(0).to_numpy(zero_copy_only=False)
        if has_cand.any():
            clen = pc.list_value_length(cand).fill_null(0).to_numpy(zero_copy_only=False)
            bad = has_probs & has_cand & (plen != clen)
            if bad.any():
                raise _fail(
                    "action_probs",
                    "must have one entry per candidate",
                    bad,
                    plen,
                    "give the probability of every candidate, in candidate order",
                    row_offset,
                )
        if n_cand is not None:
            bad = has_probs & ~has_cand & (plen != n_cand)
            if bad.any():
                raise _fail(
                    "action_probs",
                    "must have one entry per variant of the campaign (candidates is null)",
                    bad,
                    plen,
                    "give the probability of every variant",
                    row_offset,
                )
        bad = has_probs & (aidx >= plen)
        if bad.any():
            raise _fail(
                "action_probs",
                "must cover `action_index`",
                bad,
                plen,
                "give the probability of every candidate",
                row_offset,
            )
        flat = probs.flatten().to_numpy(zero_copy_only=False)
        if flat.size and not (np.all(np.isfinite(flat)) and np.all(flat >= 0)):
            row_of = np.repeat(np.arange(n), plen)
            badrow = np.zeros(n, bool)
            badrow[row_of[~(np.isfinite(flat) & (flat >= 0))]] = True
            raise _fail(
                "action_probs",
                "must be finite and >= 0",
                badrow,
                None,
                "store probabilities, not scores",
                row_offset,
            )
        starts = np.concatenate([[0], np.cumsum(plen)[:-1]]).astype(np.int64)
        sums = np.add.reduceat(flat, starts) if flat.size else np.zeros(n)
        sums = np.where(plen > 0, sums, 0.0)
        bad = has_probs & (np.abs(sums - 1.0) > _PROB_TOL)
        if bad.any():
            raise _fail(
                "action_probs",
                f"must sum to 1 (±{_PROB_TOL:g})",
                bad,
                sums,
                "normalise the distribution before logging",
                row_offset,
            )
        chosen_p = flat[np.minimum(starts + aidx, max(flat.size - 1, 0))] if flat.size else prop
        bad = has_probs & ~np.isclose(chosen_p, prop, rtol=1e-6, atol=1e-12)
        if bad.any():
            raise _fail(
                "propensity",
                "must equal action_probs[action_index]",
                bad,
                prop,
                "log the probability the policy gave the action it chose",
                row_offset,
            )

    reward = cols["reward"]
    if reward.null_count < n:
        r = reward.to_numpy(zero_copy_only=False)
        bad = np.isinf(r)
        if bad.any():
            raise _fail(
                "reward",
                "must be finite (null = not observed)",
                bad,
                r,
                "store clicks as 0/1 and missing rewards as null",
                row_offset,
            )
    pos = cols["position"]
    if pos.null_count < n:
        p = pos.fill_null(0).to_numpy(zero_copy_only=False)
        bad = p < 0
        if bad.any():
            raise _fail("position", "must be >= 0", bad, p, "count positions from 0", row_offset)

    if check_unique_ids and n:
        ev = cols["event_id"]
        if len(pc.unique(ev)) != n:  # ~2x faster than count_distinct on 1M ids
            counts = pc.value_counts(ev)
            dup_vals = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
            bad = np.asarray(pc.is_in(ev, value_set=dup_vals).to_numpy(zero_copy_only=False))
            raise _fail(
                "event_id",
                "must be unique",
                bad,
                ev.to_pylist(),
                "give each decision its own id",
                row_offset,
            )

    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def _check_candidates_known(cand: pa.Array, variants: VariantsTable, row_offset: int) -> None:
    """Explicit candidates must all be variants of the table (their text and embedding are
    looked up there: an unknown id would silently lose its features)."""
    lengths = pc.list_value_length(cand).fill_null(0).to_numpy(zero_copy_only=False)
    flat = cand.flatten()
    known = pc.is_in(flat, value_set=variants.table.column("variant_id").combine_chunks())
    ok = np.asarray(known.to_numpy(zero_copy_only=False), bool)
    if ok.all():
        return
    row_of = np.repeat(np.arange(len(cand)), lengths)
    bad = np.zeros(len(cand), bool)
    bad[row_of[~ok]] = True
    unknown = flat.filter(pa.array(~ok)).to_pylist()
    raise _fail(
        "candidates",
        "must be variant ids of the variants table",
        bad,
        None,
        f"unknown id(s) {sorted(set(unknown))[:5]}; pass the variants table the log was made "
        "with, or add those variants to it",
        row_offset,
    )


def _check_against_variants(
    cols: Mapping[str, pa.Array],
    has_cand: npt.NDArray[np.bool_],
    variants: VariantsTable,
    row_offset: int,
) -> npt.NDArray[np.int64]:
    """Rows with null candidates: the action must be the campaign's variant at action_index.

    Returns the number of variants of each row's campaign (0 where unknown).
    """
    campaigns, starts, counts = variants.campaign_index()
    camp = cols["campaign_id"]
    pos = pc.index_in(camp, value_set=campaigns).to_numpy(zero_copy_only=False)
    pos = np.where(np.isnan(pos.astype(float)), -1, pos).astype(np.int64)
    check = ~has_cand
    bad = check & (pos < 0)
    if bad.any():
        raise _fail(
            "campaign_id",
            "must be a campaign of the variants table when `candidates` is null",
            bad,
            camp.to_pylist(),
            "log the candidates explicitly or pass the matching variants table",
            row_offset,
        )
    n_cand = np.where(pos >= 0, counts[np.maximum(pos, 0)], 0).astype(np.int64)
    aidx = cols["action_index"].to_numpy()
    bad = check & (aidx >= n_cand)
    if bad.any():
        raise _fail(
            "action_index",
            "must be smaller than the campaign's variant count",
            bad,
            aidx,
            "index into the campaign's variants in variants-table order",
            row_offset,
        )
    vid = variants.table.column("variant_id").combine_chunks()
    gather = np.where(check, starts[np.maximum(pos, 0)] + aidx, 0).astype(np.int64)
    expect = vid.take(pa.array(gather))
    same = pc.equal(expect, cols["action"]).to_numpy(zero_copy_only=False)
    bad = check & ~same
    if bad.any():
        raise _fail(
            "action",
            "must be among the candidates (the campaign's variants), at `action_index`",
            bad,
            cols["action"].to_pylist(),
            "check the variants table matches the log",
            row_offset,
        )
    return n_cand


# --------------------------------------------------------------------------------------------
# Parquet I/O
# --------------------------------------------------------------------------------------------


def _metadata(kind: str, extra: Mapping[str, str] | None = None) -> dict[bytes, bytes]:
    meta = {_META_KIND: kind.encode(), _META_VERSION: SCHEMA_VERSION.encode()}
    for k, v in (extra or {}).items():
        meta[f"copyloop.{k}".encode()] = v.encode()
    return meta


def log_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The key/value metadata a copyloop Parquet file was written with (the ``metadata=`` given
    to :class:`DecisionLogWriter`, e.g. ``context_names``), without reading its rows; of a
    dataset folder, its first part's."""
    prefix = b"copyloop."
    return {
        k[len(prefix) :].decode(): v.decode()
        for k, v in (_read_schema(log_files(path)[0], "log").metadata or {}).items()
        if k.startswith(prefix) and k not in (_META_KIND, _META_VERSION)
    }


def _check_file_kind(path: Path, schema: pa.Schema, kind: str) -> None:
    meta = schema.metadata or {}
    found = meta.get(_META_KIND)
    if found is not None and found.decode() != kind:
        raise LogValidationError(
            f"{path} holds a copyloop {found.decode()}, not a {kind} — pass the right file"
        )
    version = meta.get(_META_VERSION)
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise LogValidationError(
            f"{path} was written with {kind} schema version {version.decode()}; this copyloop "
            f"reads version {SCHEMA_VERSION} — re-export it with a matching copyloop"
        )


def variants_sidecar(path: str | os.PathLike[str]) -> Path:
    """The variants table that travels with a log: ``logs.parquet`` -> ``logs.variants.parquet``.

    The one place this name is made; writers put the table there by default and readers look
    for it there when no variants table is named. A dataset folder (:func:`log_files`) keeps
    it inside, as ``variants.parquet``.
    """
    p = Path(path)
    if p.is_dir():  # a dataset folder keeps its table inside (not one of its log parts)
        return p / DATASET_VARIANTS
    return p.with_suffix(".variants.parquet")


def check_output_path(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Check, before any work starts, that ``path`` can be written as a file.

    Raises:
        OutputPathError: the folder does not exist or is not writable, or ``path`` is a folder.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(
            f"{flag} {p} is a folder — give a file name inside it, e.g. {p / 'out.parquet'}"
        )
    parent = p.parent
    if not parent.exists():
        raise OutputPathError(
            f"{flag} {p}: the folder {parent} does not exist — create it first or choose "
            "another path"
        )
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {p}: the folder {parent} is not writable")
    return p


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def sweep_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed processes left beside ``path``.

    A write goes to ``.<name>.<pid>.tmp`` first; ``kill -9`` (or a power cut) leaves that file
    behind. Files of processes that no longer exist are removed; those of live ones are kept.

    Returns:
        The files removed.
    """
    final = Path(path)
    removed: list[Path] = []
    if not final.parent.is_dir():
        return removed
    for tmp in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        pid = tmp.name[len(final.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                if tmp.is_dir():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever left at ``path``: on any exception (Ctrl-C and SIGTERM
    included, see :func:`copyloop.cli_common.handle_sigterm`) the temporary file is removed and
    ``path`` (if it existed) is untouched. Temporary files left by killed processes are swept.
    """
    final = check_output_path(path, flag)
    sweep_stale_temps(final)
    tmp = _tmp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class DecisionLogWriter:
    """Stream batches of decisions into one Parquet file, atomically, with its variants table.

    Use it as a context manager; the file appears at ``path`` only when the block exits
    cleanly, so an error, Ctrl-C or SIGTERM never leaves a partial log. Before the file is put
    in place, ``event_id`` is checked unique across the whole file (in bounded memory, with
    DuckDB), so a log that a reader would reject is never written.

    With a variants table (``variants=`` or :meth:`set_variants` before the block ends) the log
    and the table are one unit: both carry the same ``pair_id`` in their metadata, the table is
    put in place just before the log, and readers (:func:`read_variants_for`) refuse a pair whose
    ids differ — what a write killed between the two renames would leave.

    Example:
        >>> with DecisionLogWriter("logs.parquet", context_dim=4) as w:  # doctest: +SKIP
        ...     for log in batches:
        ...         w.write(log)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        context_dim: int,
        *,
        metadata: Mapping[str, str] | None = None,
        compression: str = "zstd",
        variants: VariantsTable | None = None,
        variants_path: str | os.PathLike[str] | None = None,
        source: str | None = None,
    ) -> None:
        self.path = check_output_path(path)
        self.source = source
        self.context_dim = context_dim
        self.metadata = dict(metadata or {})
        self.compression = compression
        self.variants = variants
        self.variants_path = (
            check_output_path(variants_path, "--variants-out")
            if variants_path is not None
            else variants_sidecar(self.path)
        )
        if self.variants_path.resolve() == self.path.resolve():
            raise OutputPathError(
                f"the log and its variants table would both be written to {self.path} — "
                "give --variants-out another name"
            )
        self.pair_id = uuid.uuid4().hex
        meta = {**self.metadata, "pair_id": self.pair_id}
        self._schema = log_schema(context_dim).with_metadata(_metadata("DecisionLog", meta))
        self._stack: contextlib.ExitStack | None = None
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self.rows_written = 0

    def set_variants(self, variants: VariantsTable) -> None:
        """Name the variants table to write with the log (when it is known only at the end)."""
        self.variants = variants

    def __enter__(self) -> DecisionLogWriter:
        stack = contextlib.ExitStack()
        self._tmp = stack.enter_context(atomic_path(self.path))
        self._stack = stack
        self._writer = pq.ParquetWriter(self._tmp, self._schema, compression=self.compression)
        return self

    def write(self, log: DecisionLog) -> None:
        """Append one validated batch."""
        if self._writer is None:
            raise RuntimeError("DecisionLogWriter.write called outside its `with` block")
        if log.context_dim != self.context_dim:
            raise LogValidationError(
                f"`context` has {log.context_dim} features in this batch but the file was "
                f"opened with {self.context_dim} — all batches must share one context width"
            )
        self._writer.write_table(log.table.replace_schema_metadata(self._schema.metadata))
        self.rows_written += log.n_rows

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._stack is not None and self._writer is not None and self._tmp is not None
        stack, self._stack = self._stack, None
        try:
            self._writer.close()
            if exc_type is None:
                check_unique_event_ids(self._tmp, name=self.source or str(self.path))
                if self.variants is not None:
                    self.variants.write(self.variants_path, pair_id=self.pair_id)
        except BaseException as e:
            stack.__exit__(type(e), e, e.__traceback__)  # removes the temporary log
            raise
        # On success this renames the log into place, right after its variants table; on an
        # error in the block it removes the temporary file instead.
        stack.__exit__(exc_type, exc, tb)


def check_unique_event_ids(path: str | os.PathLike[str], *, name: str | None = None) -> None:
    """Check ``event_id`` is unique across a whole Parquet log (a file or a dataset folder,
    :func:`log_files`), in bounded memory.

    DuckDB aggregates the ids with a memory limit and spills to disk beyond it, so logs far
    larger than RAM are checked exactly; the rows of the first duplicated ids are named (with
    their part file, in a dataset).

    Raises:
        LogValidationError: some id occurs more than once.
    """
    p = Path(path)
    files = [str(f) for f in log_files(p)]
    folder = p.is_dir()
    shown = name or str(p)
    with duckdb_connection() as con:
        src = "read_parquet(?, file_row_number=true, filename=true)"
        dups = con.execute(
            f"SELECT event_id FROM {src} GROUP BY event_id HAVING count(*) > 1 LIMIT 5",
            [files],
        ).fetchall()
        if not dups:
            return
        total = con.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {src} GROUP BY event_id HAVING count(*) > 1)",
            [files],
        ).fetchall()[0]
        ids = [d[0] for d in dups]
        rows = con.execute(
            f"SELECT event_id, list((filename, file_row_number) ORDER BY filename, "
            f"file_row_number) FROM {src} WHERE list_contains(?, event_id) GROUP BY event_id "
            "ORDER BY min(filename), min(file_row_number)",
            [files, ids],
        ).fetchall()
    n_dup = int(total[0]) if total else len(ids)

    def where(r: Any) -> str:
        f, i = (r["filename"], r["file_row_number"]) if isinstance(r, dict) else r
        return f"{Path(f).name} row {i}" if folder else str(i)

    shown_rows = "; ".join(
        f"{eid!r} at {'' if folder else 'rows '}{', '.join(where(r) for r in rs[:5])}"
        for eid, rs in rows
    )
    more = f" (and {n_dup - len(rows)} more ids)" if n_dup > len(rows) else ""
    scope = "the dataset's files" if folder else "the file"
    raise LogValidationError(
        f"{shown}: `event_id` must be unique across {scope}; {shown_rows}{more} — give each "
        "decision its own id (or drop the repeated rows)"
    )


def read_variants_for(
    log_path: str | os.PathLike[str], variants: str | os.PathLike[str] | None = None
) -> VariantsTable | None:
    """The variants table of a log: ``variants`` when given, else its sidecar when present.

    When both files carry a ``pair_id`` (every log copyloop writes with its table does), they
    must match: a mismatch means they come from different writes.

    Raises:
        LogValidationError: the two files were not written together.
    """
    vp = Path(variants) if variants is not None else variants_sidecar(log_path)
    if variants is None and not vp.is_file():
        return None
    table = VariantsTable.read(vp)
    log_pair = log_metadata(log_path).get("pair_id")
    var_pair = _read_schema(vp, "variants").metadata or {}
    var_id = var_pair.get(b"copyloop.pair_id")
    if log_pair and var_id is not None and var_id.decode() != log_pair:
        raise LogValidationError(
            f"{vp} was not written together with {log_path} (their pair ids differ: an "
            "interrupted write or a table from another log) — re-run the command that wrote "
            "the log, or pass the right table with --variants"
        )
    return table


# --------------------------------------------------------------------------------------------
# DecisionLog
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionLog:
    """A validated batch of decisions (an Arrow table with the contract's schema).

    Construct from a table (validated on entry), from arrays with :meth:`from_arrays`, or from
    Parquet with :meth:`read` / :meth:`iter_batches` (for logs larger than memory).

    Example:
        >>> import numpy as np
        >>> log = DecisionLog.from_arrays(
        ...     event_id=["e0", "e1"], campaign_id=["c", "c"], context=np.zeros((2, 3)),
        ...     action=["v1", "v0"], action_index=[1, 0], propensity=[0.5, 0.5],
        ...     candidates=[["v0", "v1"], ["v0", "v1"]], reward=[1.0, 0.0])
        >>> log.n_rows, log.context_dim, float(log.reward.mean())
        (2, 3, 0.5)
    """

    table: pa.Table
    variants: VariantsTable | None = field(default=None, compare=False, repr=False)
    row_offset: int = field(default=0, compare=False, repr=False)
    check_unique_ids: bool = field(default=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        canonical = validate_log_table(
            self.table,
            variants=self.variants,
            row_offset=self.row_offset,
            check_unique_ids=self.check_unique_ids,
        )
        object.__setattr__(self, "table", canonical)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        *,
        event_id: Sequence[str] | pa.Array,
        campaign_id: Sequence[str] | pa.Array,
        context: npt.ArrayLike,
        action: Sequence[str] | pa.Array,
        action_index: npt.ArrayLike,
        propensity: npt.ArrayLike,
        ts: npt.ArrayLike | pa.Array | None = None,
        user_id: Sequence[str | None] | pa.Array | None = None,
        candidates: Sequence[Sequence[str] | None] | pa.Array | None = None,
        action_probs: Sequence[Sequence[float] | None] | npt.ArrayLike | pa.Array | None = None,
        position: npt.ArrayLike | None = None,
        reward: npt.ArrayLike | None = None,
        policy_id: str | Sequence[str] = "unknown",
        model_version: str | Sequence[str] = "0",
        variants: VariantsTable | None = None,
    ) -> DecisionLog:
        """Build and validate a log from column arrays (``context`` shaped ``(n, d)``)."""
        ctx = np.asarray(context, dtype=np.float32)
        if ctx.ndim != 2:
            raise LogValidationError(
                f"`context` must be a 2-D array (n, d), got shape {ctx.shape} — reshape it"
            )
        n, d = ctx.shape
        cols: dict[str, Any] = {
            "event_id": pa.array(event_id, pa.string()),
            "ts": _ts_array(ts, n),
            "campaign_id": pa.array(campaign_id, pa.string()),
            "user_id": pa.array(user_id, pa.string())
            if user_id is not None
            else pa.nulls(n, pa.string()),
            "context": pa.FixedSizeListArray.from_arrays(pa.array(ctx.reshape(-1)), d),
            "candidates": _list_array(candidates, pa.string(), n),
            "action": pa.array(action, pa.string()),
            "action_index": pa.array(np.asarray(action_index), pa.int32()),
            "propensity": pa.array(np.asarray(propensity, dtype=np.float64)),
            "action_probs": _list_array(action_probs, pa.float64(), n),
            "position": pa.nulls(n, pa.int32())
            if position is None
            else pa.array(np.asarray(position), pa.int32()),
            "reward": pa.nulls(n, pa.float64())
            if reward is None
            else pa.array(np.asarray(reward, dtype=np.float64), from_pandas=True),
            "policy_id": _const_or_array(policy_id, n),
            "model_version": _const_or_array(model_version, n),
        }
        lengths = {k: len(v) for k, v in cols.items()}
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise LogValidationError(
                "all columns must have one entry per decision: `context` has "
                f"{n} rows but " + ", ".join(f"`{k}` has {v}" for k, v in wrong.items())
            )
        return cls(pa.table(cols), variants=variants)

    @classmethod
    def read(
        cls, path: str | os.PathLike[str], *, variants: VariantsTable | None = None
    ) -> DecisionLog:
        """Read a whole log from Parquet (validated). See :meth:`iter_batches` for big files."""
        p = _existing(path, "log")
        table = guard_read(p, "log", lambda: pq.read_table(p))
        _check_file_kind(p, table.schema, "DecisionLog")
        try:
            return cls(table.replace_schema_metadata(None), variants=variants)
        except LogValidationError as e:
            raise LogValidationError(f"{p}: {e}") from None

    @staticmethod
    def iter_batches(
        path: str | os.PathLike[str],
        *,
        batch_size: int = 1_000_000,
        columns: Sequence[str] | None = None,
        variants: VariantsTable | None = None,
    ) -> Iterator[DecisionLog]:
        """Stream a Parquet log in validated batches of at most ``batch_size`` rows.

        Memory stays bounded by the batch, so logs far larger than RAM can be processed.
        ``event_id`` uniqueness is checked across the whole file before the first batch
        (:func:`check_unique_event_ids`, bounded memory). A dataset folder (:func:`log_files`:
        many part files, as an export writes them) is scanned by DuckDB, its parts in name
        order, row offsets counting across them.

        Args:
            path: the Parquet file, or a folder of them.
            batch_size: rows per batch.
            columns: read only these columns (the rest are filled with nulls where optional);
                all required columns are always read.
            variants: optional variants table to check campaign-set actions against.
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if Path(path).is_dir():
            yield from _iter_dataset(Path(path), batch_size, columns, variants)
            return
        p = _existing(path, "log")
        # pre_buffer=False: with it on, Arrow keeps every row group it has read buffered, so
        # memory grows with the file (measured in bench/log_scale.py); off, it stays bounded.
        pf = guard_read(p, "log", lambda: pq.ParquetFile(p, pre_buffer=False))
        _check_file_kind(p, pf.schema_arrow, "DecisionLog")
        if "event_id" in pf.schema_arrow.names:
            guard_read(p, "log", lambda: check_unique_event_ids(p))
        wanted = None
        if columns is not None:
            wanted = _wanted_columns(columns, pf.schema_arrow)
        offset = 0
        batches = pf.iter_batches(batch_size=batch_size, columns=wanted)
        while True:
            batch = guard_read(p, "log", lambda: next(batches, None))
            if batch is None:
                return
            table = pa.Table.from_batches([batch]).replace_schema_metadata(None)
            try:
                log = DecisionLog(
                    table, variants=variants, row_offset=offset, check_unique_ids=False
                )
            except LogValidationError as e:
                raise LogValidationError(f"{p}: {e}") from None
            yield log
            offset += batch.num_rows

    def write(
        self, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
    ) -> Path:
        """Write the log to Parquet atomically (schema version in the file metadata)."""
        with DecisionLogWriter(path, self.context_dim, metadata=metadata) as w:
            w.write(self)
        return Path(path)

    # ---- views ------------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return int(self.table.num_rows)

    def __len__(self) -> int:
        return self.n_rows

    @property
    def context_dim(self) -> int:
        return int(self.table.schema.field("context").type.list_size)

    @property
    def context(self) -> npt.NDArray[np.float32]:
        """Context features, shape ``(n, d)``, float32."""
        arr = self.table.column("context").combine_chunks()
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(self.n_rows, self.context_dim)

    def _np(self, name: str) -> npt.NDArray[Any]:
        return np.asarray(self.table.column(name).to_numpy())

    @property
    def propensity(self) -> npt.NDArray[np.float64]:
        """Logging propensities, shape ``(n,)``."""
        return self._np("propensity").astype(np.float64, copy=False)

    @property
    def action_index(self) -> npt.NDArray[np.int32]:
        """Chosen index among the candidates, shape ``(n,)``."""
        return self._np("action_index").astype(np.int32, copy=False)

    @property
    def reward(self) -> npt.NDArray[np.float64]:
        """Rewards, shape ``(n,)``; NaN where not observed."""
        return np.asarray(self.table.column("reward").to_numpy(), dtype=np.float64)

    @property
    def position(self) -> npt.NDArray[np.int32] | None:
        """Slot positions, shape ``(n,)``, or None when the log has none."""
        col = self.table.column("position")
        if col.null_count == self.n_rows:
            return None
        return np.asarray(col.fill_null(0).to_numpy(), dtype=np.int32)

    def column(self, name: str) -> list[Any]:
        """A column as a Python list (for string and list columns)."""
        return list(self.table.column(name).to_pylist())

    def to_pandas(self) -> Any:
        """The log as a pandas DataFrame."""
        return self.table.to_pandas()

    def slice(self, offset: int, length: int | None = None) -> DecisionLog:
        """Rows ``offset .. offset+length`` (no copy)."""
        return DecisionLog(self.table.slice(offset, length), variants=self.variants)

    @staticmethod
    def concat(logs: Sequence[DecisionLog]) -> DecisionLog:
        """Concatenate logs with the same context width."""
        if not logs:
            raise ValueError("`logs` is empty — nothing to concatenate")
        return DecisionLog(pa.concat_tables([lg.table for lg in logs]), variants=logs[0].variants)


def _wanted_columns(columns: Sequence[str], schema: pa.Schema) -> list[str]:
    unknown = [c for c in columns if c not in LOG_COLUMNS]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; the log has {list(LOG_COLUMNS)}")
    wanted = [c for c in LOG_COLUMNS if c in columns or c not in OPTIONAL_LOG_COLUMNS]
    return [c for c in wanted if c in schema.names]


# --------------------------------------------------------------------------------------------
# datasets: a folder of Parquet part files, scanned by DuckDB (logs larger than memory)
# --------------------------------------------------------------------------------------------

DATASET_VARIANTS = "variants.parquet"
"""The variants table inside a dataset folder (:func:`variants_sidecar` of the folder)."""

DUCKDB_MEMORY_LIMIT = "1GB"
"""DuckDB's memory limit in the dataset scans; beyond it DuckDB spills to a temporary folder."""


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The Parquet files holding a log: the file itself, or a dataset folder's part files.

    A dataset is a folder of ``*.parquet`` parts (nested folders too, as partitioned exports
    write them) read in path order; its variants table (``variants.parquet``, or any
    ``*.variants.parquet``) and hidden or temporary files (``.*``, ``_*``) are not parts.

    Raises:
        FileNotFoundError: the path does not exist, or the folder has no part file.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"log {p} does not exist — check the path")
    files = sorted(
        f
        for f in p.rglob("*.parquet")
        if f.is_file()
        and f.name != DATASET_VARIANTS
        and not f.name.endswith(".variants.parquet")
        and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)
    )
    if not files:
        raise FileNotFoundError(
            f"log folder {p} has no Parquet part files (*.parquet) — give a DecisionLog file or "
            "a folder of them"
        )
    return files


@contextlib.contextmanager
def duckdb_connection(memory_limit: str = DUCKDB_MEMORY_LIMIT) -> Iterator[Any]:
    """A DuckDB connection with a memory limit, spilling to a temporary folder (removed after),
    timestamps in UTC."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="copyloop-duckdb-") as spill:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill})
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()


def dataset_schema(path: str | os.PathLike[str]) -> pa.Schema:
    """The Arrow schema (with its metadata) shared by every part of a log, from their footers.

    Raises:
        LogValidationError: a part is not a DecisionLog of this schema version, or the parts'
            columns differ (naming the first part that differs).
        UnreadableFileError: a part is not readable Parquet.
    """
    files = log_files(path)
    first = _read_schema(files[0], "log")
    _check_file_kind(files[0], first, "DecisionLog")
    # names and types must match; nullability may differ between writers (the contract
    # checks the nulls themselves)
    cols = [(fld.name, fld.type) for fld in first]
    for f in files[1:]:
        sch = _read_schema(f, "log")
        _check_file_kind(f, sch, "DecisionLog")
        if [(fld.name, fld.type) for fld in sch] != cols:
            diff = [
                f"{name}: {typ} vs {sch.field(name).type}"
                if name in sch.names
                else f"{name}: missing"
                for name, typ in cols
                if name not in sch.names or sch.field(name).type != typ
            ] or [f"columns {sch.names} vs {first.names}"]
            raise LogValidationError(
                f"{f}: its columns differ from {files[0].name}'s ({'; '.join(diff[:3])}) — every "
                "part of a dataset must share one schema; re-export the odd part"
            )
    return first


def _iter_dataset(
    p: Path,
    batch_size: int,
    columns: Sequence[str] | None,
    variants: VariantsTable | None,
) -> Iterator[DecisionLog]:
    schema = dataset_schema(p)
    if "event_id" in schema.names:
        check_unique_event_ids(p)
    wanted = list(schema.names) if columns is None else _wanted_columns(columns, schema)
    files = [str(f) for f in log_files(p)]
    cols = ", ".join(f'"{c}"' for c in wanted)
    offset = 0
    with duckdb_connection() as con:
        # DuckDB keeps the parts' order and each part's row order (insertion order is on)
        reader = con.sql(f"SELECT {cols} FROM read_parquet(?)", params=[files]).to_arrow_reader(
            batch_size
        )
        for batch in reader:
            if batch.num_rows == 0:
                continue
            table = pa.Table.from_batches([batch]).replace_schema_metadata(None)
            try:
                log = DecisionLog(
                    table, variants=variants, row_offset=offset, check_unique_ids=False
                )
            except LogValidationError as e:
                raise LogValidationError(f"{p}: {e}") from None
            yield log
            offset += batch.num_rows


def summarize_dataset(
    path: str | os.PathLike[str], *, batch_size: int = 1_000_000, validate: bool = True
) -> dict[str, Any]:
    """What ``copyloop logs info`` reports (the keys of :func:`copyloop.stats.summarize_log`),
    for a dataset folder or a file, aggregated by one DuckDB scan in bounded memory.

    With ``validate`` every row first goes through the contract (:meth:`DecisionLog.iter_batches`,
    ``batch_size`` rows at a time; event ids unique across the parts); the aggregates then come
    from DuckDB, which reads only the columns they need.
    """
    p = Path(path)
    schema = dataset_schema(p)
    if validate:
        for _ in DecisionLog.iter_batches(p, batch_size=batch_size):
            pass
    files = [str(f) for f in log_files(p)]
    meta = schema.metadata or {}
    ctx = schema.field("context").type if "context" in schema.names else None
    with duckdb_connection() as con:
        row = con.execute(
            """SELECT count(*), count(reward), sum(reward), min(propensity), max(propensity),
                      sum(1.0 / propensity), sum(1.0 / (propensity * propensity)),
                      count(DISTINCT campaign_id), count(DISTINCT action),
                      list(DISTINCT policy_id ORDER BY policy_id), count(candidates),
                      count(action_probs), count(position), min(ts), max(ts),
                      max(len(context))
               FROM read_parquet(?)""",
            [files],
        ).fetchall()[0]
    (n, observed, r_sum, p_min, p_max, w_sum, w_sq, camps, acts, pols, cand, probs, pos) = row[:13]
    ts_min, ts_max, width = row[13:]
    out: dict[str, Any] = {
        "rows": int(n),
        "schema_version": (meta.get(_META_VERSION) or SCHEMA_VERSION.encode()).decode(),
        "context_dim": (
            (ctx.list_size if isinstance(ctx, pa.FixedSizeListType) else width) if n else None
        ),
    }
    if b"copyloop.context_names" in meta:
        out["context_names"] = json.loads(meta[b"copyloop.context_names"])
    out.update(
        {
            "campaigns": int(camps),
            "distinct_actions": int(acts),
            "policies": list(pols or []),
            "ts_min": ts_min,
            "ts_max": ts_max,
            "rewards_observed": int(observed),
            "reward_mean": float(r_sum) / observed if observed else None,
            "propensity_min": float(p_min) if n else None,
            "propensity_max": float(p_max) if n else None,
            "ips_ess": float(w_sum) ** 2 / float(w_sq) if n else None,
            "rows_with_candidates": int(cand),
            "rows_with_action_probs": int(probs),
            "rows_with_position": int(pos),
        }
    )
    return out


def read_dataset(
    path: str | os.PathLike[str],
    *,
    max_rows: int | None = None,
    seed: int = 0,
    variants: VariantsTable | None = None,
) -> DecisionLog:
    """A log (file or dataset folder) as one validated :class:`DecisionLog` in memory — all of
    it, or, when it has more than ``max_rows`` rows, a uniform sample of ``max_rows`` of them
    (DuckDB's reservoir sample, repeatable for a ``seed``; memory bounded by the sample).

    With all rows, the result is the rows in order (the same as :meth:`DecisionLog.read` of
    one file); a sample keeps the log's order among the rows it drew.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"`max_rows` must be >= 1, got {max_rows}")
    p = Path(path)
    schema = dataset_schema(p)
    if "event_id" in schema.names:
        check_unique_event_ids(p)
    files = [str(f) for f in log_files(p)]
    cols = ", ".join(f'"{c}"' for c in schema.names)
    with duckdb_connection() as con:
        src = "read_parquet(?, filename=true, file_row_number=true)"
        n = int(con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchall()[0][0])
        if max_rows is None or n <= max_rows:
            table = con.sql(f"SELECT {cols} FROM read_parquet(?)", params=[files]).to_arrow_table()
        else:
            # Draw the rows' positions only (narrow, so the reservoir fits the memory limit;
            # one thread, as DuckDB's REPEATABLE sample is deterministic only single-threaded),
            # then stream the drawn rows out and put them back in log order in Arrow.
            con.execute("SET threads = 1")
            con.execute(
                f"CREATE TEMP TABLE pick AS SELECT filename AS f, file_row_number AS r FROM {src} "
                f"USING SAMPLE reservoir({int(max_rows)} ROWS) REPEATABLE ({int(seed)})",
                [files],
            )
            con.execute("RESET threads")
            reader = con.sql(
                f"SELECT {cols}, filename, file_row_number FROM {src} SEMI JOIN pick "
                "ON filename = pick.f AND file_row_number = pick.r",
                params=[files],
            ).to_arrow_reader(1_000_000)
            table = (
                pa.Table.from_batches(list(reader), schema=reader.schema)
                .sort_by([("filename", "ascending"), ("file_row_number", "ascending")])
                .drop_columns(["filename", "file_row_number"])
            )
    try:
        return DecisionLog(table.replace_schema_metadata(None), variants=variants)
    except LogValidationError as e:
        raise LogValidationError(f"{p}: {e}") from None


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise FileNotFoundError(f"{what} file {p} is a folder — give the Parquet file inside it")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} does not exist — check the path")
    return p


def guard_read(path: Path, what: str, read: Callable[[], _T]) -> _T:
    """Run a Parquet read, turning Arrow's errors on a bad file into one that names the file.

    Raises:
        UnreadableFileError: naming ``path``, what it should have been and what to do.
    """
    try:
        return read()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFileError(
            f"{path} is not a readable Parquet {what} ({first[:160]}) — it may be truncated, "
            "corrupted or another format (a CSV renamed .parquet?); re-create it, or bring a "
            "CSV in with `copyloop logs import`"
        ) from None


def _read_schema(path: str | os.PathLike[str], what: str) -> pa.Schema:
    p = _existing(path, what)
    return guard_read(p, what, lambda: pq.read_schema(p))


_EPOCH = np.datetime64("2026-01-01T00:00:00", "us")


def _ts_array(ts: npt.ArrayLike | pa.Array | None, n: int) -> pa.Array:
    if ts is None:
        return pa.array(np.full(n, _EPOCH), pa.timestamp("us", tz="UTC"))
    if isinstance(ts, pa.Array | pa.ChunkedArray):
        return ts if isinstance(ts, pa.Array) else ts.combine_chunks()
    arr = np.asarray(ts)
    if arr.dtype.kind == "M":
        return pa.array(arr.astype("datetime64[us]"), pa.timestamp("us", tz="UTC"))
    return pa.array(arr, pa.timestamp("us", tz="UTC"))


def _list_array(values: Any, typ: pa.DataType, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, pa.list_(typ))
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return pa.ListArray.from_arrays(
            pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)),
            pa.array(values.reshape(-1), typ),
        )
    return pa.array(list(values), pa.list_(typ))


def _const_or_array(value: str | Sequence[str], n: int) -> pa.Array:
    if isinstance(value, str):
        return pa.array([value], pa.string()).take(pa.array(np.zeros(n, np.int64)))
    return pa.array(value, pa.string())


# --------------------------------------------------------------------------------------------
# Variants table
# --------------------------------------------------------------------------------------------


def variants_schema(embedding_dim: int | None) -> pa.Schema:
    """Arrow schema of the variants table; ``embedding_dim=None`` for tables without embeddings."""
    emb = pa.list_(pa.float32(), embedding_dim) if embedding_dim else pa.list_(pa.float32())
    return pa.schema(
        [
            pa.field("variant_id", pa.string(), nullable=False),
            pa.field("campaign_id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("attributes", pa.string()),  # JSON object
            pa.field("embedding", emb),
            pa.field("origin", pa.string(), nullable=False),
        ]
    )


VARIANT_COLUMNS: tuple[str, ...] = tuple(variants_schema(None).names)


@dataclass(frozen=True)
class VariantsTable:
    """The copy variants a log's actions refer to (id, campaign, text, attributes, embedding,
    origin).

    Rows of one campaign are contiguous and in the campaign's candidate order; a log row with
    null ``candidates`` indexes into that order.

    Example:
        >>> v = VariantsTable.from_records([
        ...     {"variant_id": "a", "campaign_id": "c", "text": "Shop now", "origin": "corpus"},
        ...     {"variant_id": "b", "campaign_id": "c", "text": "Save 20%", "origin": "corpus"}])
        >>> v.campaign_variants()["c"]
        ['a', 'b']
    """

    table: pa.Table

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", validate_variants_table(self.table))

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> VariantsTable:
        rows = []
        for r in records:
            attrs = r.get("attributes")
            rows.append(
                {
                    "variant_id": r.get("variant_id"),
                    "campaign_id": r.get("campaign_id"),
                    "text": r.get("text"),
                    "attributes": attrs
                    if attrs is None or isinstance(attrs, str)
                    else json.dumps(attrs, sort_keys=True),
                    "embedding": None
                    if r.get("embedding") is None
                    else np.asarray(r["embedding"], np.float32).tolist(),
                    "origin": r.get("origin", "unknown"),
                }
            )
        return cls(pa.Table.from_pylist(rows, schema=variants_schema(None)))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> VariantsTable:
        p = _existing(path, "variants")
        table = guard_read(p, "variants table", lambda: pq.read_table(p))
        _check_file_kind(p, table.schema, "VariantsTable")
        return cls(table.replace_schema_metadata(None))

    def write(self, path: str | os.PathLike[str], *, pair_id: str | None = None) -> Path:
        """Write the table to Parquet atomically; ``pair_id`` ties it to the log it came with."""
        extra = {"pair_id": pair_id} if pair_id is not None else None
        with atomic_path(path, "--variants-out") as tmp:
            pq.write_table(
                self.table.replace_schema_metadata(_metadata("VariantsTable", extra)),
                tmp,
                compression="zstd",
            )
        return Path(path)

    @property
    def n_variants(self) -> int:
        return int(self.table.num_rows)

    def __len__(self) -> int:
        return self.n_variants

    @property
    def variant_ids(self) -> list[str]:
        return list(self.table.column("variant_id").to_pylist())

    @property
    def texts(self) -> list[str]:
        return list(self.table.column("text").to_pylist())

    @property
    def embeddings(self) -> npt.NDArray[np.float32] | None:
        """Embeddings, shape ``(n_variants, e)``, or None when the table has none."""
        col = self.table.column("embedding").combine_chunks()
        if col.null_count:
            return None
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32)
        return flat.reshape(self.n_variants, -1)

    def attributes(self) -> list[dict[str, Any]]:
        return [json.loads(a) if a else {} for a in self.table.column("attributes").to_pylist()]

    def campaign_index(self) -> tuple[pa.Array, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(campaign ids, first row of each, variant count of each), in table order."""
        camp = self.table.column("campaign_id").combine_chunks()
        ids = camp.to_numpy(zero_copy_only=False)
        change = np.ones(len(ids), bool)
        change[1:] = ids[1:] != ids[:-1]
        starts = np.flatnonzero(change).astype(np.int64)
        counts = np.diff(np.append(starts, len(ids))).astype(np.int64)
        return camp.take(pa.array(starts)), starts, counts

    def campaign_variants(self) -> dict[str, list[str]]:
        """Campaign id -> its variant ids, in candidate order."""
        camps, starts, counts = self.campaign_index()
        vids = self.variant_ids
        return {
            c: vids[s : s + k]
            for c, s, k in zip(camps.to_pylist(), starts.tolist(), counts.tolist(), strict=True)
        }


def validate_variants_table(table: pa.Table) -> pa.Table:
    """Check a variants table and return it in canonical form (see :func:`variants_schema`)."""
    missing = [c for c in ("variant_id", "campaign_id", "text") if c not in table.column_names]
    if missing:
        raise LogValidationError(
            f"variants table is missing column(s) {', '.join(f'`{c}`' for c in missing)}; it has "
            f"{', '.join(table.column_names) or '(none)'} — a variants table needs "
            "variant_id, campaign_id and text"
        )
    extra = [c for c in table.column_names if c not in VARIANT_COLUMNS]
    if extra:
        raise LogValidationError(
            f"variants table has unknown column(s) {extra} — its columns are "
            f"{list(VARIANT_COLUMNS)}; "
            "put extra fields in `attributes` (a JSON object)"
        )
    n = table.num_rows
    cols: dict[str, pa.Array] = {}
    emb_dim: int | None = None
    if "embedding" in table.column_names and table.column("embedding").null_count < n:
        emb = table.column("embedding").combine_chunks()
        if emb.null_count:
            bad = np.asarray(emb.is_null().to_numpy(zero_copy_only=False))
            raise _fail(
                "embedding",
                "must be given for all variants or none",
                bad,
                None,
                "embed every variant (copyloop's catalog does this)",
            )
        lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
        emb_dim = int(lengths[0])
        if np.any(lengths != emb_dim):
            raise _fail(
                "embedding",
                f"must have one length (row 0 has {emb_dim})",
                lengths != emb_dim,
                lengths,
                "embed all variants with one encoder",
            )
        flat = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), np.float32)
        if not np.all(np.isfinite(flat)):
            bad = np.asarray(~np.isfinite(flat.reshape(n, emb_dim)).all(axis=1), bool)
            raise _fail("embedding", "must be finite", bad, None, "re-embed those variants")
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), emb_dim)
    schema = variants_schema(emb_dim)
    for f in schema:
        if f.name in cols:
            continue
        if f.name in table.column_names:
            cols[f.name] = _cast(table.column(f.name), f.name, f.type)
        elif f.name == "origin":
            cols[f.name] = pa.array(["unknown"] * n, pa.string())
        else:
            cols[f.name] = pa.nulls(n, f.type)
        if not f.nullable and cols[f.name].null_count:
            bad = np.asarray(cols[f.name].is_null().to_numpy(zero_copy_only=False))
            raise _fail(f.name, "must not be null", bad, None, "fill it in")
    vid = cols["variant_id"]
    if n and pc.count_distinct(vid).as_py() != n:
        counts = pc.value_counts(vid)
        dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        bad = np.asarray(pc.is_in(vid, value_set=dup).to_numpy(zero_copy_only=False))
        raise _fail(
            "variant_id", "must be unique", bad, vid.to_pylist(), "give each variant its own id"
        )
    camp = cols["campaign_id"].to_numpy(zero_copy_only=False)
    if n:
        change = np.ones(n, bool)
        change[1:] = camp[1:] != camp[:-1]
        firsts = camp[change]
        if len(set(firsts.tolist())) != len(firsts):
            seen: set[str] = set()
            bad = np.zeros(n, bool)
            for i in np.flatnonzero(change).tolist():
                if camp[i] in seen:
                    bad[i] = True
                seen.add(camp[i])
            raise _fail(
                "campaign_id",
                "rows of one campaign must be contiguous",
                bad,
                camp,
                "sort the table by campaign, keeping each campaign's candidate order",
            )
    attrs = cols["attributes"].to_pylist()
    bad = np.zeros(n, bool)
    for i, a in enumerate(attrs):
        if a is None:
            continue
        try:
            ok = isinstance(json.loads(a), dict)
        except json.JSONDecodeError:
            ok = False
        bad[i] = not ok
    if bad.any():
        raise _fail("attributes", "must be a JSON object", bad, attrs, "store attributes as JSON")
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
