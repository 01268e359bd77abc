"""Bring outside logs into the contract: CSV/Parquet with a column mapping, and obp's dict.

:func:`import_log` streams the source in batches (two passes when a vocabulary is needed), so
files larger than memory import in bounded memory; the output appears only when every row
passed validation. :func:`to_obp` / :func:`from_obp` convert to and from Open Bandit Pipeline's
``bandit_feedback`` dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from copyloop.contract import (
    DecisionLog,
    DecisionLogWriter,
    LogValidationError,
    UnreadableFileError,
    VariantsTable,
    check_output_path,
    guard_read,
    variants_sidecar,
)

_NUMBER = re.compile(
    r"^\s*[-+]?((\d+(\.\d*)?)|(\.\d+))([eE][-+]?\d+)?\s*$|^\s*[-+]?(nan|inf|infinity)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ColumnMapping:
    """Which source columns feed which contract columns.

    Attributes:
        action_col: the chosen action (variant id or any label).
        reward_col: the observed reward (click 0/1 or value); empty cells = not observed.
        propensity_col: the logging policy's probability of the chosen action.
        context_cols: numeric feature columns, in order.
        categorical_cols: categorical feature columns, one-hot or hashed into the context.
        categorical_encoding: ``"onehot"`` (vocabulary from a first pass) or ``"hash"``.
        hash_dim: buckets per categorical column when hashing.
        campaign_col: campaign / slot column (default: one campaign, ``default_campaign``).
        candidates_col: the candidate set per row (``sep``-separated in CSV, a list in Parquet);
            default: each campaign's full set of actions seen in the file.
        position_col: slot position column.
        timestamp_col: decision time column (ISO 8601 or epoch seconds).
        user_col: user id column.
        event_id_col: event id column (default: ``<file stem>-<row>``).
        policy_id: the logging policy's name, stored on every row.
        default_campaign: campaign id when there is no campaign column.
        sep: separator of candidate lists in CSV cells.
    """

    action_col: str
    reward_col: str
    propensity_col: str
    context_cols: tuple[str, ...] = ()
    categorical_cols: tuple[str, ...] = ()
    categorical_encoding: str = "onehot"
    hash_dim: int = 16
    campaign_col: str | None = None
    candidates_col: str | None = None
    position_col: str | None = None
    timestamp_col: str | None = None
    user_col: str | None = None
    event_id_col: str | None = None
    policy_id: str = "imported"
    default_campaign: str = "default"
    sep: str = "|"

    def __post_init__(self) -> None:
        if self.categorical_encoding not in ("onehot", "hash"):
            raise ValueError(
                "`categorical_encoding` must be 'onehot' or 'hash', got "
                f"{self.categorical_encoding!r}"
            )
        if self.hash_dim < 1:
            raise ValueError(f"`hash_dim` must be >= 1, got {self.hash_dim}")
        if not (self.context_cols or self.categorical_cols):
            raise ValueError(
                "give at least one feature column (--context-cols and/or --categorical-cols): the "
                "context is what the logging policy saw"
            )
        used = [c for c in self.source_columns]
        dup = sorted({c for c in used if used.count(c) > 1})
        if dup:
            raise ValueError(f"column(s) {dup} are mapped twice — each source column has one role")

    @property
    def source_columns(self) -> list[str]:
        cols = [
            self.action_col,
            self.reward_col,
            self.propensity_col,
            *self.context_cols,
            *self.categorical_cols,
        ]
        for c in (
            self.campaign_col,
            self.candidates_col,
            self.position_col,
            self.timestamp_col,
            self.user_col,
            self.event_id_col,
        ):
            if c is not None:
                cols.append(c)
        return cols


@dataclass
class ImportReport:
    """What :func:`import_log` wrote."""

    rows: int
    out: Path
    variants_out: Path
    context_names: list[str]
    campaigns: int
    actions: int
    missing_rewards: int = 0
    notes: list[str] = field(default_factory=list)


_SOURCE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _source_batches(path: Path, columns: Sequence[str], batch_size: int) -> Iterator[pa.Table]:
    """Stream the chosen columns of a CSV or Parquet file (CSV cells read as strings).

    Arrow's errors on a malformed source (a truncated Parquet file, a CSV row with the wrong
    number of cells, bytes that are not UTF-8) become one error that names the file.
    """
    if _is_parquet(path):
        pf = guard_read(path, "source", lambda: pq.ParquetFile(path, pre_buffer=False))
        it = pf.iter_batches(batch_size=batch_size, columns=list(columns))
        while (b := guard_read(path, "source", lambda: next(it, None))) is not None:
            yield pa.Table.from_batches([b])
        return
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=_delimiter(path)),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns),
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=True,
            ),
        )
        for b in reader:
            yield pa.Table.from_batches([b])
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFileError(
            f"{path.name} cannot be read as {_delimiter_name(path)} ({msg[:200]}) — every row "
            "needs one cell per header column, in UTF-8 text; fix or drop the bad rows"
        ) from None


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _delimiter_name(path: Path) -> str:
    return "TSV (tab-separated)" if path.suffix.lower() == ".tsv" else "CSV (comma-separated)"


def _source_columns(path: Path) -> list[str]:
    if _is_parquet(path):
        schema = guard_read(path, "source", lambda: pq.read_schema(path))
        return list(schema.names)
    import csv

    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first name
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = f.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise UnreadableFileError(
            f"{path.name}: the header is not UTF-8 text — is it a binary file? Save the log as "
            "UTF-8 CSV/TSV or Parquet"
        ) from None
    return next(csv.reader([header], delimiter=_delimiter(path))) if header else []


def _numeric(
    col: pa.ChunkedArray | pa.Array, name: str, role: str, offset: int
) -> npt.NDArray[np.float64]:
    """Cast a source column to float64 (nulls -> NaN), naming rows that are not numbers."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if (
        pa.types.is_floating(arr.type)
        or pa.types.is_integer(arr.type)
        or pa.types.is_boolean(arr.type)
    ):
        return np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        ok = pc.match_substring_regex(arr, _NUMBER.pattern, ignore_case=True).fill_null(True)
        bad = ~np.asarray(ok.to_numpy(zero_copy_only=False), bool)
        if bad.any():
            vals = arr.to_pylist()
            idx = np.flatnonzero(bad)
            rows = ", ".join(str(int(i) + offset) for i in idx[:5])
            shown = ", ".join(repr(vals[i]) for i in idx[:5])
            more = f" (and {idx.size - 5} more)" if idx.size > 5 else ""
            raise LogValidationError(
                f"column `{name}` ({role}) must be numeric; rows {rows}{more} have {shown} — "
                "fix or drop those rows in the source"
            )
        return np.asarray(
            pc.cast(pc.utf8_trim_whitespace(arr), pa.float64()).to_numpy(zero_copy_only=False),
            np.float64,
        )
    raise LogValidationError(
        f"column `{name}` ({role}) must be numeric, got type {arr.type} — convert it in the source"
    )


def _rows_error(
    name: str, role: str, rule: str, bad: npt.NDArray[np.bool_], values: Any, offset: int, fix: str
) -> LogValidationError:
    idx = np.flatnonzero(bad)
    rows = ", ".join(str(int(i) + offset) for i in idx[:5])
    shown = ", ".join(
        repr(values[int(i)].item() if hasattr(values[int(i)], "item") else values[int(i)])
        for i in idx[:5]
    )
    more = f" (and {idx.size - 5} more)" if idx.size > 5 else ""
    return LogValidationError(
        f"column `{name}` ({role}) {rule}; rows {rows}{more} have {shown} — {fix}"
    )


def _stable_hash(values: Sequence[str], buckets: int) -> npt.NDArray[np.int64]:
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") % buckets
            for v in values
        ],
        np.int64,
    )


def import_log(
    path: str | os.PathLike[str],
    mapping: ColumnMapping,
    out: str | os.PathLike[str],
    *,
    variants_out: str | os.PathLike[str] | None = None,
    batch_size: int = 500_000,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a CSV/TSV/Parquet click log into a DecisionLog file (plus its variants table).

    Args:
        path: the source file (``.csv``, ``.tsv`` or ``.parquet``).
        mapping: which columns mean what.
        out: the DecisionLog Parquet to write (atomically: nothing is left on error).
        variants_out: the variants table to write (default ``<out>.variants.parquet``);
            with no candidates column, each campaign's variants are the actions seen for it.
        batch_size: rows per streamed batch.
        progress: called with the number of rows done after each batch.

    Raises:
        LogValidationError: a missing column, a non-numeric value, a propensity outside (0, 1]
            or NaN, an action not among its candidates — naming the source column and rows.
    """
    src = Path(path)
    if src.is_dir():
        raise FileNotFoundError(f"log file {src} is a folder — give the CSV/Parquet file in it")
    if not src.is_file():
        raise FileNotFoundError(f"log file {src} does not exist — check the path")
    if src.suffix.lower() not in _SOURCE_SUFFIXES:
        raise ValueError(
            f"{src.name}: unknown file type {src.suffix or '(none)'!r} — import "
            f"{', '.join(_SOURCE_SUFFIXES)} files (rename a comma-separated file to .csv)"
        )
    out_p = check_output_path(out, "--out")
    var_p = check_output_path(
        variants_out if variants_out is not None else variants_sidecar(out_p), "--variants-out"
    )
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    have = _source_columns(src)
    missing = [c for c in mapping.source_columns if c not in have]
    if missing:
        raise LogValidationError(
            f"{src.name} has no column(s) {', '.join(f'`{c}`' for c in missing)}; its columns are "
            f"{', '.join(have) or '(none)'} — check the --*-col options"
        )

    # Pass 1: vocabularies (one-hot categories; each campaign's action set).
    vocab: dict[str, set[str]] = {
        c: set() for c in mapping.categorical_cols if mapping.categorical_encoding == "onehot"
    }
    actions_by_campaign: dict[str, set[str]] = {}
    first_pass = [c for c in vocab]
    if mapping.candidates_col is None:
        first_pass += [mapping.action_col] + (
            [mapping.campaign_col] if mapping.campaign_col else []
        )
    if first_pass:
        for t in _source_batches(src, sorted(set(first_pass)), batch_size):
            for c in vocab:
                vocab[c].update(str(v) for v in pc.unique(t.column(c)).to_pylist() if v is not None)
            if mapping.candidates_col is None:
                acts = t.column(mapping.action_col).cast(pa.string())
                camps = (
                    t.column(mapping.campaign_col).cast(pa.string())
                    if mapping.campaign_col
                    else pa.chunked_array([pa.array([mapping.default_campaign] * t.num_rows)])
                )
                pairs = pa.table({"c": camps, "a": acts}).group_by(["c", "a"]).aggregate([])
                for c, a in zip(
                    pairs.column("c").to_pylist(), pairs.column("a").to_pylist(), strict=True
                ):
                    if c is not None and a is not None:
                        actions_by_campaign.setdefault(c, set()).add(a)
    vocab_sorted = {c: sorted(v) for c, v in vocab.items()}
    context_names = list(mapping.context_cols)
    for c in mapping.categorical_cols:
        if mapping.categorical_encoding == "onehot":
            context_names += [f"{c}={v}" for v in vocab_sorted[c]]
        else:
            context_names += [f"{c}#h{k}" for k in range(mapping.hash_dim)]
    d = len(context_names)

    camp_sets = {c: sorted(a) for c, a in actions_by_campaign.items()}
    camp_index = {c: {a: i for i, a in enumerate(acts)} for c, acts in camp_sets.items()}
    seen_variants: dict[str, list[str]] = {c: list(a) for c, a in camp_sets.items()}

    meta = {
        "context_names": json.dumps(context_names),
        "source": src.name,
        "ts_source": mapping.timestamp_col or "import-time",
    }
    now = np.datetime64(datetime.now(UTC).replace(tzinfo=None), "us")
    rows = 0
    missing_rewards = 0
    with DecisionLogWriter(out_p, d, metadata=meta, variants_path=var_p, source=src.name) as writer:
        for t in _source_batches(src, sorted(set(mapping.source_columns)), batch_size):
            n = t.num_rows
            off = rows
            ctx = np.zeros((n, d), np.float32)
            j = 0
            for c in mapping.context_cols:
                ctx[:, j] = _numeric(t.column(c), c, "context", off)
                bad = ~np.isfinite(ctx[:, j])
                if bad.any():
                    raise _rows_error(
                        c,
                        "context",
                        "must be finite numbers",
                        bad,
                        ctx[:, j],
                        off,
                        "impute or drop missing features before importing",
                    )
                j += 1
            for c in mapping.categorical_cols:
                vals = t.column(c).cast(pa.string()).fill_null("<null>")
                enc = vals.combine_chunks().dictionary_encode()
                uniq = enc.dictionary.to_pylist()
                codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)
                if mapping.categorical_encoding == "onehot":
                    lookup = {v: i for i, v in enumerate(vocab_sorted[c])}
                    # "<null>" is not in the vocabulary: missing categories encode as all zeros
                    hot = np.array([lookup.get(v, -1) for v in uniq], np.int64)[codes]
                    ok = hot >= 0
                    ctx[np.flatnonzero(ok), j + hot[ok]] = 1.0
                    j += len(vocab_sorted[c])
                else:
                    bucket = _stable_hash(uniq, mapping.hash_dim)[codes]
                    ctx[np.arange(n), j + bucket] = 1.0
                    j += mapping.hash_dim
            prop = _numeric(
                t.column(mapping.propensity_col), mapping.propensity_col, "propensity", off
            )
            bad = ~((prop > 0) & (prop <= 1))
            if bad.any():
                raise _rows_error(
                    mapping.propensity_col,
                    "propensity",
                    "must be in (0, 1]",
                    bad,
                    prop,
                    off,
                    "check the logging policy; NaN/0 propensities "
                    "cannot be used for off-policy evaluation",
                )
            reward = _numeric(t.column(mapping.reward_col), mapping.reward_col, "reward", off)
            if np.isinf(reward).any():
                raise _rows_error(
                    mapping.reward_col,
                    "reward",
                    "must be finite",
                    np.isinf(reward),
                    reward,
                    off,
                    "store clicks as 0/1, leave unobserved cells empty",
                )
            missing_rewards += int(np.isnan(reward).sum())
            action = t.column(mapping.action_col).cast(pa.string()).combine_chunks()
            if action.null_count:
                bad = np.asarray(action.is_null().to_numpy(zero_copy_only=False))
                raise _rows_error(
                    mapping.action_col,
                    "action",
                    "must not be empty",
                    bad,
                    action.to_pylist(),
                    off,
                    "drop rows without an action",
                )
            campaign = (
                t.column(mapping.campaign_col).cast(pa.string()).combine_chunks()
                if mapping.campaign_col
                else pa.array([mapping.default_campaign] * n)
            )
            if campaign.null_count:
                bad = np.asarray(campaign.is_null().to_numpy(zero_copy_only=False))
                raise _rows_error(
                    mapping.campaign_col or "",
                    "campaign",
                    "must not be empty",
                    bad,
                    campaign.to_pylist(),
                    off,
                    "fill in the campaign",
                )
            acts = action.to_pylist()
            camps = campaign.to_pylist()
            # Variant ids must be unique across campaigns: with a campaign column they are
            # "<campaign>/<action>"; the log's `action` is that id.
            if mapping.campaign_col:
                action = pc.binary_join_element_wise(campaign, action, "/")
            candidates: list[list[str]] | None = None
            cands_logged: list[list[str]] | None = None
            if mapping.candidates_col is not None:
                cand_col = t.column(mapping.candidates_col).combine_chunks()
                if pa.types.is_string(cand_col.type) or pa.types.is_large_string(cand_col.type):
                    candidates = [s.split(mapping.sep) if s else [] for s in cand_col.to_pylist()]
                else:
                    candidates = [
                        list(map(str, x)) if x is not None else [] for x in cand_col.to_pylist()
                    ]
                if mapping.campaign_col:
                    cands_logged = [
                        [f"{c}/{v}" for v in cs] for c, cs in zip(camps, candidates, strict=True)
                    ]
                aidx = np.array(
                    [
                        cs.index(a) if a in cs else -1
                        for a, cs in zip(acts, candidates, strict=True)
                    ],
                    np.int64,
                )
                for cmp, cs in zip(camps, candidates, strict=True):
                    known = seen_variants.setdefault(cmp, [])
                    if len(known) < 10_000:
                        for v in cs:
                            if v not in known:
                                known.append(v)
            else:
                aidx = np.array(
                    [camp_index[c][a] for a, c in zip(acts, camps, strict=True)], np.int64
                )
            if (aidx < 0).any():
                raise _rows_error(
                    mapping.action_col,
                    "action",
                    f"must be among the candidates in `{mapping.candidates_col}`",
                    aidx < 0,
                    acts,
                    off,
                    "log the candidate set the policy chose from, including the action",
                )
            if mapping.event_id_col:
                ev = t.column(mapping.event_id_col).cast(pa.string())
            else:
                ev = pc.binary_join_element_wise(
                    pa.array([src.stem] * n),
                    pa.array(np.arange(off, off + n)).cast(pa.string()),
                    "-",
                )
            if mapping.timestamp_col:
                ts = _parse_ts(
                    t.column(mapping.timestamp_col).combine_chunks(), mapping.timestamp_col, off
                )
            else:
                ts = pa.array(np.full(n, now), pa.timestamp("us", tz="UTC"))
            pos: npt.NDArray[np.int32] | None = None
            if mapping.position_col:
                p = _numeric(t.column(mapping.position_col), mapping.position_col, "position", off)
                bad = ~np.isfinite(p) | (p < 0) | (p != np.round(p))
                if bad.any():
                    raise _rows_error(
                        mapping.position_col,
                        "position",
                        "must be integers >= 0",
                        bad,
                        p,
                        off,
                        "count slot positions from 0",
                    )
                pos = p.astype(np.int32)
            user = t.column(mapping.user_col).cast(pa.string()) if mapping.user_col else None
            try:
                log = DecisionLog.from_arrays(
                    event_id=ev,
                    ts=ts,
                    campaign_id=campaign,
                    user_id=user,
                    context=ctx,
                    candidates=cands_logged if mapping.campaign_col else candidates,
                    action=action,
                    action_index=aidx,
                    propensity=prop,
                    position=pos,
                    reward=reward,
                    policy_id=mapping.policy_id,
                    model_version="0",
                )
            except LogValidationError as e:
                raise LogValidationError(f"{src.name}: {e}") from None
            writer.write(log)
            rows += n
            if progress is not None:
                progress(rows)
        if rows == 0:
            raise LogValidationError(f"{src.name} has no data rows — nothing to import")
        records = [
            {
                "variant_id": f"{c}/{v}" if mapping.campaign_col else v,
                "campaign_id": c,
                "text": v,
                "attributes": {"action": v},
                "origin": f"import:{src.name}",
            }
            for c, vs in seen_variants.items()
            for v in vs
        ]
        writer.set_variants(VariantsTable.from_records(records))
    return ImportReport(
        rows=rows,
        out=out_p,
        variants_out=var_p,
        context_names=context_names,
        campaigns=len(seen_variants),
        actions=sum(len(v) for v in seen_variants.values()),
        missing_rewards=missing_rewards,
    )


def _parse_ts(arr: pa.Array, name: str, offset: int) -> pa.Array:
    if pa.types.is_timestamp(arr.type):
        return arr if arr.type.tz else pc.assume_timezone(arr, "UTC")
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        secs = np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False))
        return pa.array((secs * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))
    s = arr.cast(pa.string())
    if pc.all(pc.match_substring_regex(s, _NUMBER.pattern).fill_null(False)).as_py():
        return _parse_ts(pc.cast(s, pa.float64()), name, offset)
    vals = s.to_pylist()
    out: list[datetime | None] = []
    bad = np.zeros(len(vals), bool)
    for i, v in enumerate(vals):
        try:
            dt = datetime.fromisoformat(v) if v else None
        except ValueError:
            dt = None
        if dt is None:
            bad[i] = True
            out.append(None)
        else:
            out.append(dt if dt.tzinfo else dt.replace(tzinfo=UTC))
    if bad.any():
        raise _rows_error(
            name,
            "timestamp",
            "must be ISO 8601 or epoch seconds",
            bad,
            vals,
            offset,
            "write times like 2026-01-31T12:00:00Z",
        )
    return pa.array(out, pa.timestamp("us", tz="UTC"))


# --------------------------------------------------------------------------------------------
# Open Bandit Pipeline
# --------------------------------------------------------------------------------------------


def to_obp(log: DecisionLog, variants: VariantsTable) -> dict[str, Any]:
    """Export to obp's ``bandit_feedback`` dict.

    Actions become global indices into ``variants`` (obp has one action set), so
    ``n_actions = len(variants)``; ``action_context`` holds the variants' embeddings when they
    have them. Rows without an observed reward are refused (obp needs every reward).
    """
    r = log.reward
    if np.isnan(r).any():
        bad = np.isnan(r)
        raise _rows_error(
            "reward",
            "reward",
            "must be observed for obp",
            bad,
            r,
            0,
            "drop rows whose reward is null before exporting",
        )
    vid = {v: i for i, v in enumerate(variants.variant_ids)}
    acts = log.column("action")
    missing = np.array([a not in vid for a in acts])
    if missing.any():
        raise _rows_error(
            "action",
            "action",
            "must be a variant of the variants table",
            missing,
            acts,
            0,
            "pass the variants table the log was written with",
        )
    pos = log.position
    out: dict[str, Any] = {
        "n_rounds": log.n_rows,
        "n_actions": variants.n_variants,
        "action": np.array([vid[a] for a in acts], np.int64),
        "position": pos.astype(np.int64) if pos is not None else None,
        "reward": r,
        "pscore": log.propensity,
        "context": log.context.astype(np.float64),
        "action_context": (
            variants.embeddings.astype(np.float64) if variants.embeddings is not None else None
        ),
    }
    return out


def from_obp(
    feedback: dict[str, Any],
    *,
    campaign_id: str = "obp",
    policy_id: str = "obp",
) -> tuple[DecisionLog, VariantsTable]:
    """Import obp's ``bandit_feedback`` dict (``action``, ``reward``, ``pscore``, ``context``,
    optional ``position``, ``action_context`` and ``pi_b``) as a log plus variants table."""
    need = ["n_actions", "action", "reward", "pscore", "context"]
    missing = [k for k in need if k not in feedback]
    if missing:
        raise LogValidationError(
            f"bandit_feedback lacks key(s) {missing}; it has {sorted(feedback)}"
        )
    n_actions = int(feedback["n_actions"])
    action = np.asarray(feedback["action"], np.int64)
    n = action.size
    bad = (action < 0) | (action >= n_actions)
    if bad.any():
        raise _rows_error(
            "action", "action", f"must be in [0, {n_actions})", bad, action, 0, "check n_actions"
        )
    ctx = np.asarray(feedback["context"], np.float32)
    if ctx.ndim == 1:
        ctx = ctx[:, None]
    pos = feedback.get("position")
    probs = None
    pi_b = feedback.get("pi_b")
    if pi_b is not None:
        pi_b = np.asarray(pi_b, np.float64)
        p_idx = np.zeros(n, np.int64) if pos is None else np.asarray(pos, np.int64)
        probs = pi_b[np.arange(n), :, p_idx] if pi_b.ndim == 3 else pi_b
    ids = [f"a{k}" for k in range(n_actions)]
    ac = feedback.get("action_context")
    records = [
        {
            "variant_id": ids[k],
            "campaign_id": campaign_id,
            "text": f"action {k}",
            "embedding": None if ac is None else np.asarray(ac)[k],
            "origin": "obp",
        }
        for k in range(n_actions)
    ]
    variants = VariantsTable.from_records(records)
    log = DecisionLog.from_arrays(
        event_id=[f"obp-{i}" for i in range(n)],
        campaign_id=pa.array([campaign_id] * n),
        context=ctx,
        action=pa.array(ids).take(pa.array(action)),
        action_index=action,
        propensity=np.asarray(feedback["pscore"], np.float64),
        action_probs=probs,
        position=None if pos is None else np.asarray(pos),
        reward=np.asarray(feedback["reward"], np.float64),
        policy_id=policy_id,
        variants=variants,
    )
    return log, variants
