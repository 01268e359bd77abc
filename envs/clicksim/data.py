"""A DecisionLog joined to its variants table: the rows a click simulator trains and is scored
on, and the copy-side model input of a text (MiniLM embedding + readable text features)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from copyloop.contract import DecisionLog, VariantsTable, log_metadata, variants_sidecar
from copyloop.envs.clicksim.config import ClickSimError
from copyloop.envs.text import text_features

_F32 = npt.NDArray[np.float32]


def _file_rows(path: Path) -> int:
    """Rows of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    from copyloop.contract import guard_read

    if not path.is_file():
        raise FileNotFoundError(f"log file {path} does not exist — check the path")
    return int(guard_read(path, "log", lambda: pq.ParquetFile(path).metadata.num_rows))


def copy_inputs(texts: Sequence[str], embeddings: _F32 | None = None) -> _F32:
    """The copy-side input of the model: ``[MiniLM embedding | readable text features]``."""
    if embeddings is None:
        from copyloop.envs.embed import default_encoder

        embeddings = default_encoder().encode(list(texts))
    emb = np.asarray(embeddings, np.float32)
    if emb.shape[0] != len(texts):
        raise ClickSimError(f"{len(texts)} texts but {emb.shape[0]} embeddings — pass one per text")
    return np.hstack([emb, text_features(list(texts))]).astype(np.float32)


@dataclass
class ClickData:
    """A log joined to its variants table: what the model trains and is scored on.

    Attributes:
        context: user features, ``(n, du)``.
        variant: row of each shown variant in the variants table, ``(n,)``.
        campaign: index of each row's campaign in :attr:`campaign_ids`, ``(n,)``.
        reward: clicks in [0, 1], ``(n,)``.
        propensity: logged propensity of the shown variant, ``(n,)``.
        n_candidates: number of candidates each decision chose among, ``(n,)``.
        copy: model input of every variant, ``(V, e + text features)``.
        variant_campaign: campaign index of every variant, ``(V,)``.
        campaign_ids: campaign ids in variants-table order.
        variant_ids: variant ids in table order.
        texts: variant texts in table order.
        context_names: names of the context features when the log says (else None).
        user_id: the log's user ids (for ground-truth checks on simulated logs), or None.
        action_index: the logged slot of each row.
        metadata: the log file's key/value metadata.
    """

    context: _F32
    variant: npt.NDArray[np.int64]
    campaign: npt.NDArray[np.int64]
    reward: npt.NDArray[np.float32]
    propensity: npt.NDArray[np.float64]
    n_candidates: npt.NDArray[np.int64]
    copy: _F32
    variant_campaign: npt.NDArray[np.int64]
    campaign_ids: list[str]
    variant_ids: list[str]
    texts: list[str]
    embeddings: _F32 | None
    context_names: list[str] | None = None
    user_id: list[str | None] | None = None
    action_index: npt.NDArray[np.int64] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.reward.size)

    @classmethod
    def from_files(
        cls,
        logs: str | Path,
        variants: str | Path | None = None,
        *,
        need_reward: bool = True,
        max_rows: int | None = None,
        seed: int = 0,
    ) -> ClickData:
        """Read a DecisionLog (a Parquet file, or a dataset folder of part files) and its
        variants table (default ``<logs>.variants.parquet``, as ``copyloop simulate`` writes
        it; ``variants.parquet`` inside a dataset folder).

        Args:
            max_rows: a log with more rows is read as a uniform sample of ``max_rows`` rows
                (DuckDB's reservoir sample, repeatable for ``seed``; memory bounded by the
                sample, so a log larger than memory can be fitted on); None or a log that
                fits: every row, in order.
            seed: seed of that sample.
        """
        from copyloop.contract import read_dataset

        lp = Path(logs)
        vp = Path(variants) if variants is not None else variants_sidecar(lp)
        if not vp.is_file():
            raise ClickSimError(
                f"variants table {vp} does not exist — pass --variants with the variants table "
                "the log's actions refer to"
            )
        vt = VariantsTable.read(vp)
        if lp.is_dir() or (max_rows is not None and _file_rows(lp) > max_rows):
            log = read_dataset(lp, max_rows=max_rows, seed=seed)
        else:
            log = DecisionLog.read(lp)
        return cls.from_log(log, vt, metadata=log_metadata(lp), need_reward=need_reward)

    @classmethod
    def from_log(
        cls,
        log: DecisionLog,
        variants: VariantsTable,
        *,
        metadata: dict[str, str] | None = None,
        need_reward: bool = True,
    ) -> ClickData:
        """Join ``log`` to ``variants``; clear errors when they do not belong together."""
        if log.n_rows == 0:
            raise ClickSimError("the log is empty — a click simulator needs logged impressions")
        reward = log.reward
        if need_reward:
            missing = np.isnan(reward)
            if missing.all():
                raise ClickSimError(
                    "the log has no rewards (`reward` is null in every row) — a click simulator "
                    "learns from observed clicks; log rewards or join them in before fitting"
                )
            if missing.any():
                rows = np.flatnonzero(missing)[:5].tolist()
                raise ClickSimError(
                    f"`reward` is null in {int(missing.sum())} rows (e.g. rows {rows}) — drop "
                    "unobserved rows before fitting"
                )
            bad = (reward < 0) | (reward > 1)
            if bad.any():
                rows = np.flatnonzero(bad)[:5].tolist()
                raise ClickSimError(
                    f"`reward` must be a click in [0, 1]; rows {rows} have "
                    f"{reward[bad][:5].tolist()} — the click simulator models click probabilities"
                )
        vids = variants.variant_ids
        index = {v: i for i, v in enumerate(vids)}
        actions = log.column("action")
        row = np.fromiter((index.get(a, -1) for a in actions), np.int64, len(actions))
        if (row < 0).any():
            bad_rows = np.flatnonzero(row < 0)
            shown = [actions[i] for i in bad_rows[:5].tolist()]
            raise ClickSimError(
                f"{bad_rows.size} logged actions are not in the variants table (e.g. {shown} in "
                f"rows {bad_rows[:5].tolist()}) — pass the variants table the log was written "
                "with (`copyloop simulate` writes it next to the log as *.variants.parquet)"
            )
        camps, _starts, counts = variants.campaign_index()
        camp_ids = [str(c) for c in camps.to_pylist()]
        variant_campaign = np.repeat(np.arange(len(camp_ids)), counts).astype(np.int64)
        camp_index = {c: i for i, c in enumerate(camp_ids)}
        log_camp = log.column("campaign_id")
        campaign = np.fromiter((camp_index.get(c, -1) for c in log_camp), np.int64, len(log_camp))
        mismatch = campaign != variant_campaign[row]
        if mismatch.any():
            bad_rows = np.flatnonzero(mismatch)
            i = int(bad_rows[0])
            raise ClickSimError(
                f"{bad_rows.size} rows show a variant of another campaign (row {i}: campaign "
                f"{log_camp[i]!r}, variant {actions[i]!r} belongs to "
                f"{camp_ids[int(variant_campaign[row[i]])]!r}) — the variants table does not "
                "match the log"
            )
        cands = log.column("candidates")
        n_cand = np.asarray(
            [
                int(counts[c]) if cd is None else len(cd)
                for c, cd in zip(campaign, cands, strict=True)
            ],
            np.int64,
        )
        meta = dict(metadata or {})
        names = None
        if "context_names" in meta:
            try:
                names = [str(x) for x in json.loads(meta["context_names"])]
            except (json.JSONDecodeError, TypeError):
                names = None
            if names is not None and len(names) != log.context_dim:
                names = None
        texts = variants.texts
        emb = variants.embeddings
        return cls(
            context=np.ascontiguousarray(log.context, np.float32),
            variant=row,
            campaign=campaign,
            reward=np.nan_to_num(reward).astype(np.float32),
            propensity=log.propensity.astype(np.float64),
            n_candidates=n_cand,
            copy=copy_inputs(texts, emb),
            variant_campaign=variant_campaign,
            campaign_ids=camp_ids,
            variant_ids=vids,
            texts=texts,
            embeddings=emb,
            context_names=names,
            user_id=log.column("user_id"),
            action_index=log.action_index.astype(np.int64),
            metadata=meta,
        )

    def ipw_weights(self, max_weight: float, power: float = 1.0) -> npt.NDArray[np.float64]:
        """Self-normalised weights ``((1/K) / propensity) ** power`` (target: uniform over
        candidates; ``power < 1`` flattens them, Shimodaira 2000), clipped at ``max_weight`` and
        renormalised to mean 1."""
        w = ((1.0 / self.n_candidates) / self.propensity) ** power
        w = w / w.mean()
        w = np.minimum(w, max_weight)
        return w / w.mean()
