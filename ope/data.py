"""Typed inputs of off-policy evaluation: logged bandit feedback and a target policy.

:class:`BanditFeedback` is what the estimators read: per row the context, the candidate set
(as slots of width K), the chosen slot, its reward and logging propensity, optionally the
logging policy's full distribution and each candidate's embedding (for MIPS). It is built from a
:class:`~copyloop.DecisionLog` (+ variants table) by :func:`feedback_from_log`, after which the
contract has already validated every column. A target policy is given as a per-row probability
matrix aligned to those rows and slots (:func:`check_target`), the universal format: any
external policy can be evaluated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from copyloop.contract import (
    DecisionLog,
    LogValidationError,
    UnreadableFileError,
    VariantsTable,
    guard_read,
)

_TOL = 1e-6


@dataclass(frozen=True)
class BanditFeedback:
    """Logged decisions as arrays (n rows, K candidate slots).

    Attributes:
        context: features the logging policy saw, (n, d).
        mask: valid candidate slots per row, (n, K).
        action: chosen slot per row, (n,).
        reward: observed reward, (n,).
        pscore: logging propensity of the chosen slot, (n,), in (0, 1].
        logging_probs: the logging policy's distribution over slots, (n, K), or None.
        candidate_features: per row and slot, features of the candidate (embeddings), (n, K, e),
            or None. For large logs prefer ``variant`` + ``variant_embeddings`` (the same
            information in O(n·K + V·e) instead of O(n·K·e) memory).
        variant: variant index (into the variants table) per row and slot, (n, K), -1 unused;
            or None.
        position: slot position per row, (n,), or None.
        variant_embeddings: the variants' embeddings, (V, e), indexed by ``variant``; or None.
    """

    context: npt.NDArray[np.float64]
    mask: npt.NDArray[np.bool_]
    action: npt.NDArray[np.int64]
    reward: npt.NDArray[np.float64]
    pscore: npt.NDArray[np.float64]
    logging_probs: npt.NDArray[np.float64] | None = None
    candidate_features: npt.NDArray[np.float32] | None = None
    variant: npt.NDArray[np.int64] | None = None
    position: npt.NDArray[np.int64] | None = None
    variant_embeddings: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        n = self.action.shape[0]
        if n == 0:
            raise ValueError("the log is empty — off-policy evaluation needs at least one row")
        for name in ("context", "mask", "reward", "pscore"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"`{name}` has {getattr(self, name).shape[0]} rows, expected {n}")
        if not self.mask[np.arange(n), self.action].all():
            raise ValueError("`action` must be a valid slot (inside `mask`) in every row")

    @property
    def n_rows(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_slots(self) -> int:
        return int(self.mask.shape[1])

    def take(self, idx: npt.NDArray[np.intp]) -> BanditFeedback:
        """The rows ``idx`` (for folds and bootstrap resamples)."""

        def t(a: npt.NDArray[np.generic] | None) -> npt.NDArray[np.generic] | None:
            return None if a is None else a[idx]

        return BanditFeedback(
            context=self.context[idx],
            mask=self.mask[idx],
            action=self.action[idx],
            reward=self.reward[idx],
            pscore=self.pscore[idx],
            logging_probs=t(self.logging_probs),  # type: ignore[arg-type]
            candidate_features=t(self.candidate_features),  # type: ignore[arg-type]
            variant=t(self.variant),  # type: ignore[arg-type]
            position=t(self.position),  # type: ignore[arg-type]
            variant_embeddings=self.variant_embeddings,
        )


def feedback_from_log(log: DecisionLog, variants: VariantsTable | None = None) -> BanditFeedback:
    """Arrays for the estimators from a validated log (vectorised: O(n·K) numpy work).

    Rows without an observed reward are refused (drop them first: OPE needs outcomes). With a
    variants table, rows whose ``candidates`` is null use their campaign's full variant set, and
    every slot carries its variant's index (``variant``) into the table's embeddings
    (``variant_embeddings``, for MIPS and the reward models).
    """
    if variants is not None and log.variants is not variants:
        # the contract checks the log against this table (candidate ids, campaign sets)
        log = DecisionLog(log.table, variants=variants)
    r = log.reward
    missing = np.isnan(r)
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise LogValidationError(
            f"`reward` is null in {int(missing.sum())} rows (first: {rows}) — OPE needs observed "
            "outcomes; filter those rows out first"
        )
    n = log.n_rows
    cand = log.table.column("candidates").combine_chunks()
    has_cand = np.asarray(cand.is_valid().to_numpy(zero_copy_only=False), bool)
    if (~has_cand).any() and variants is None:
        raise LogValidationError(
            "`candidates` is null (the campaign's full set) in some rows, so the variants table "
            "is needed to know the candidate sets — pass --variants"
        )
    lengths = np.where(
        has_cand, pc.list_value_length(cand).fill_null(0).to_numpy(zero_copy_only=False), 0
    ).astype(np.int64)
    camp_code = camp_slots = None
    if variants is not None:
        # campaign -> its variants' indices, as a (C, Kc) table (-1 padded)
        vcamps, starts, counts = variants.campaign_index()
        kc = int(counts.max()) if counts.size else 0
        camp_slots = np.full((len(counts), kc), -1, np.int64)
        for c, (s0, m) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
            camp_slots[c, :m] = np.arange(s0, s0 + m)
        if (~has_cand).any():
            camp_code = np.asarray(
                pc.index_in(log.table.column("campaign_id"), value_set=vcamps)
                .fill_null(-1)
                .to_numpy(zero_copy_only=False),
                np.int64,
            )
            bad = (~has_cand) & (camp_code < 0)
            if bad.any():
                rows = np.flatnonzero(bad)[:5].tolist()
                raise LogValidationError(
                    f"`campaign_id` of rows {rows} is not in the variants table, and their "
                    "`candidates` is null — pass the variants table the log was made with"
                )
            lengths = np.where(has_cand, lengths, counts[np.maximum(camp_code, 0)])
    k = int(lengths.max())
    mask = np.arange(k)[None, :] < lengths[:, None]
    variant = np.full((n, k), -1, np.int64)
    if variants is not None and has_cand.any():
        ids = pa.array(variants.variant_ids, pa.string())
        flat_idx = pc.index_in(cand.flatten(), value_set=ids).fill_null(-2)
        variant[mask & has_cand[:, None]] = np.asarray(
            flat_idx.to_numpy(zero_copy_only=False), np.int64
        )
    if camp_code is not None and camp_slots is not None:
        rows = np.flatnonzero(~has_cand)
        width = min(k, camp_slots.shape[1])
        variant[rows, :width] = camp_slots[camp_code[rows], :width]
    probs = None
    ap = log.table.column("action_probs").combine_chunks()
    if ap.null_count == 0:
        flat_p = np.asarray(ap.flatten().to_numpy(zero_copy_only=False), np.float64)
        probs = np.zeros((n, k))
        probs[mask] = flat_p
    emb = None
    if variants is not None and variants.embeddings is not None and (variant >= -1).all():
        emb = variants.embeddings
    return BanditFeedback(
        context=log.context.astype(np.float64),
        mask=mask,
        action=log.action_index.astype(np.int64),
        reward=r,
        pscore=log.propensity,
        logging_probs=probs,
        variant=variant if variants is not None else None,
        position=None if log.position is None else log.position.astype(np.int64),
        variant_embeddings=emb,
    )


def check_target(
    target: npt.ArrayLike, data: BanditFeedback, *, name: str = "target_probs"
) -> npt.NDArray[np.float64]:
    """Validate a target policy's per-row distribution against the log's rows and slots.

    Raises:
        ValueError: wrong shape, non-finite or negative entries, mass on invalid slots, or rows
            that do not sum to 1 — naming the rows and the fix.
    """
    p = np.asarray(target, dtype=np.float64)
    n, k = data.n_rows, data.n_slots
    if p.ndim != 2 or p.shape[0] != n or p.shape[1] < k:
        raise ValueError(
            f"`{name}` must have shape ({n}, {k}) — one row per logged decision, one column per "
            f"candidate slot — got {p.shape}"
        )
    if p.shape[1] > k:
        extra = p[:, k:]
        if np.any(extra != 0):
            raise ValueError(f"`{name}` puts probability on slots >= {k}, which no row has")
        p = p[:, :k]
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    if bad.any():
        raise ValueError(
            f"`{name}` must be finite and >= 0; rows {np.flatnonzero(bad)[:5].tolist()}"
        )
    off = (p * ~data.mask).sum(axis=1) > _TOL
    if off.any():
        raise ValueError(
            f"`{name}` puts probability on slots that are not candidates in rows "
            f"{np.flatnonzero(off)[:5].tolist()} — zero them (align columns to the log's slots)"
        )
    s = p.sum(axis=1)
    bad = np.abs(s - 1.0) > _TOL
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        raise ValueError(
            f"`{name}` rows must sum to 1; rows {rows.tolist()} sum to "
            f"{[round(float(x), 6) for x in s[rows]]} — normalise them"
        )
    return p


def load_target(path: str | os.PathLike[str], data: BanditFeedback) -> npt.NDArray[np.float64]:
    """Read target probabilities from ``.npy`` (n, K) or Parquet (a list column ``probs`` or
    one column per slot) and validate them."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"target-probabilities file {p} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UnreadableFileError(
                f"{p} is not a readable .npy array of target probabilities ({reason}) — it may "
                "be truncated or corrupted; save it again with numpy.save"
            ) from None
    elif p.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        t = guard_read(p, "table of target probabilities", lambda: pq.read_table(p))
        if "probs" in t.column_names:
            col = t.column("probs").combine_chunks()
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            k = int(lengths.max())
            arr = np.zeros((t.num_rows, k))
            arr[np.arange(k)[None, :] < lengths[:, None]] = np.asarray(
                col.flatten().to_numpy(zero_copy_only=False), np.float64
            )
        else:
            arr = np.column_stack([t.column(c).to_numpy() for c in t.column_names]).astype(float)
    else:
        raise ValueError(f"{p}: target probabilities must be .npy or .parquet")
    return check_target(arr, data, name=p.name)


__all__ = ["BanditFeedback", "check_target", "feedback_from_log", "load_target"]
