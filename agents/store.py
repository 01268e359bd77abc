"""Variants by id: what a per-request decision looks up (features, campaign), and how a new line
of copy joins without refitting anything.

Example:
    >>> store = VariantStore.from_catalog(market.catalog)  # doctest: +SKIP
    >>> store.rows(["p123-original", "p123-urgent"])  # doctest: +SKIP
    array([0, 3])
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]

MAX_ONEHOT_ARMS = 4096
"""Most variants a store gives one-hot arm features (its feature table is n × n)."""
_REQUEST_CACHE = 4096
"""Candidate lists :meth:`VariantStore.request` remembers (then it starts over)."""


def _rows(index: Mapping[str, int], ids: list[Any], unique: bool) -> npt.NDArray[np.int64]:
    if not ids:
        raise ValueError("`candidate_ids` is empty — a decision needs at least one candidate")
    try:
        out = np.fromiter((index[v] for v in ids), np.int64, len(ids))
    except (KeyError, TypeError):
        unknown = [v for v in ids if not isinstance(v, str) or v not in index][:5]
        raise ValueError(
            f"unknown variant id(s) {unknown} in `candidate_ids` — add them to the store "
            "first (VariantStore.add, or the service's admin API)"
        ) from None
    if unique and len(set(ids)) != len(ids):
        counts = Counter(ids)
        dup = sorted(v for v, c in counts.items() if c > 1)[:5]
        raise ValueError(f"`candidate_ids` repeats {dup} — each candidate once")
    return out


class VariantStore:
    """Variant id → candidate features (and campaign), shared by every agent of a deployment.

    Reads are lock-free: :meth:`add` builds new arrays and swaps them in one assignment, so a
    concurrent :meth:`rows` / :attr:`features` reader sees the table before or after, never half.

    Args:
        ids: variant ids, unique.
        features: their candidate features, (n, dc) — from a :class:`CopyFeaturizer`.
        campaigns: campaign id of each variant (the default candidate set of a campaign is its
            variants in this order).
        featurizer: the featurizer ``features`` came from; needed to :meth:`add` new lines.
    """

    def __init__(
        self,
        ids: Sequence[str],
        features: npt.ArrayLike,
        campaigns: Sequence[str] | None = None,
        featurizer: Any = None,
    ) -> None:
        feats = np.asarray(features, np.float32)
        ids = [str(i) for i in ids]
        if feats.ndim != 2 or feats.shape[0] != len(ids):
            raise ValueError(
                f"`features` must be ({len(ids)}, dc) — one row per id — got {feats.shape}"
            )
        index = {v: i for i, v in enumerate(ids)}
        if len(index) != len(ids):
            dup = sorted({v for v in ids if ids.count(v) > 1})[:5]
            raise ValueError(f"variant ids must be unique; repeated: {dup}")
        camps = [str(c) for c in campaigns] if campaigns is not None else [""] * len(ids)
        if len(camps) != len(ids):
            raise ValueError(f"{len(camps)} campaigns for {len(ids)} variants — one per variant")
        feats.setflags(write=False)
        self.featurizer = featurizer
        self._lock = threading.Lock()
        self._state = (ids, index, feats, camps)
        self._feature_ids: tuple[Any, dict[bytes, str]] | None = None
        self._requests: tuple[Any, dict[tuple[str, ...], tuple[tuple[str, ...], _F32]]] = (
            None,
            {},
        )

    @classmethod
    def from_catalog(cls, catalog: Any) -> VariantStore:
        """The catalog's variants with their candidate features (and its featurizer)."""
        camps = [catalog.campaign_ids[c] for c in catalog.variant_campaign.tolist()]
        return cls(
            catalog.variant_ids,
            catalog.candidate_feats[: catalog.n_variants],
            camps,
            catalog.featurizer,
        )

    @classmethod
    def from_variants_table(cls, variants: Any, featurizer: Any = None) -> VariantStore:
        """The variants of a :class:`~copyloop.VariantsTable`, in table order.

        With ``featurizer`` (a :class:`~copyloop.envs.featurize.CopyFeaturizer`, e.g. the
        catalog's) each variant gets its copy features from its embedding and text, so agents
        learn about kinds of copy. Without one — an imported log, whose actions are labels with
        no text features — each variant gets a one-hot arm feature (one column per variant):
        linear agents then learn a model per arm plus a shared context term, and counting
        agents keep one set of counts per variant.

        Raises:
            ValueError: a featurizer but no embeddings in the table; too many variants for
                one-hot features (:data:`MAX_ONEHOT_ARMS`).
        """
        ids = variants.variant_ids
        camps = variants.table.column("campaign_id").to_pylist()
        if featurizer is not None:
            emb = variants.embeddings
            if emb is None:
                raise ValueError(
                    "the variants table has no embeddings, so its copy cannot be featurized — "
                    "use one-hot arm features, or a variants table with embeddings"
                )
            return cls(ids, featurizer.transform(emb, variants.texts), camps, featurizer)
        if len(ids) > MAX_ONEHOT_ARMS:
            raise ValueError(
                f"the variants table has {len(ids):,} variants; one-hot arm features stop at "
                f"{MAX_ONEHOT_ARMS:,} (one column per variant) — give the variants embeddings "
                "and featurize their copy instead"
            )
        return cls(ids, np.eye(len(ids), dtype=np.float32), camps)

    # ---- reads ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._state[0])

    def __contains__(self, variant_id: object) -> bool:
        return variant_id in self._state[1]

    @property
    def ids(self) -> list[str]:
        return list(self._state[0])

    @property
    def features(self) -> _F32:
        """Candidate features of every variant, (n, dc), read-only."""
        return self._state[2]

    @property
    def dim(self) -> int:
        return int(self._state[2].shape[1])

    @property
    def campaigns(self) -> list[str]:
        """Campaign id of every variant, in store order."""
        return list(self._state[3])

    def campaign_of(self, variant_id: str) -> str:
        _, index, _, camps = self._state
        return camps[index[variant_id]]

    def campaign_rows(self, campaign_id: str) -> npt.NDArray[np.int64]:
        """Rows of a campaign's variants, in store order (its default candidate set)."""
        camps = self._state[3]
        rows = np.array([i for i, c in enumerate(camps) if c == campaign_id], np.int64)
        if rows.size == 0:
            raise ValueError(f"campaign {campaign_id!r} has no variants in the store")
        return rows

    def feature_ids(self) -> dict[bytes, str]:
        """Feature-row bytes (float32) → variant id, for the rows that belong to exactly one
        variant: how a counting agent names the variant of an env observation, which carries
        features only. Variants sharing a feature row are left out (only their ids tell them
        apart). Built once per version of the store."""
        state = self._state
        got = self._feature_ids
        if got is not None and got[0] is state:
            return got[1]
        ids, _, feats, _ = state
        void = np.dtype((np.void, feats.shape[1] * 4))
        keys: list[bytes] = np.ascontiguousarray(feats).view(void).ravel().tolist()  # type: ignore[assignment]
        seen = Counter(keys)
        table = {k: v for k, v in zip(keys, ids, strict=True) if seen[k] == 1}
        self._feature_ids = (state, table)
        return table

    def rows(self, variant_ids: Sequence[str], *, unique: bool = True) -> npt.NDArray[np.int64]:
        """Store rows of ``variant_ids`` (a request's candidates), refusing what cannot be one.

        Args:
            variant_ids: the ids.
            unique: refuse repeated ids (a request's candidates); False for log rows' actions.

        Raises:
            ValueError: empty, repeated or unknown ids (naming them).
        """
        return _rows(self._state[1], list(variant_ids), unique)

    def request(self, candidate_ids: Sequence[str]) -> tuple[tuple[str, ...], _F32]:
        """A request's candidates: (their ids as a tuple, their features (K, dc), read-only).

        Validated as :meth:`rows`; cached per candidate list and version of the store (a
        campaign's candidate set comes back request after request), so a repeat costs one
        dictionary look-up.
        """
        state = self._state
        try:
            key = tuple(candidate_ids)
            cache = self._requests
            if cache[0] is state:
                hit = cache[1].get(key)
                if hit is not None:
                    return hit
        except TypeError:  # unhashable ids: refused below, with the reason
            key = None
        rows = _rows(state[1], list(candidate_ids), True)
        feats = state[2][rows]
        feats.setflags(write=False)
        if key is None:
            return tuple(candidate_ids), feats
        entry = (key, feats)
        cache = self._requests
        if cache[0] is not state or len(cache[1]) >= _REQUEST_CACHE:
            cache = (state, {})
            self._requests = cache  # one assignment: readers see the old cache or the new one
        cache[1][key] = entry
        return entry

    # ---- writes ---------------------------------------------------------------------------------
    def add(
        self,
        variant_ids: Sequence[str],
        texts: Sequence[str],
        campaign_id: str,
        *,
        embeddings: npt.ArrayLike | None = None,
        encoder: Any = None,
    ) -> npt.NDArray[np.int64]:
        """Featurize new lines of copy with the saved featurizer and add them (no refit).

        Args:
            variant_ids: new, unique ids.
            texts: the lines.
            campaign_id: the campaign they belong to.
            embeddings: their MiniLM embeddings (default: ``encoder`` embeds them).
            encoder: a :class:`copyloop.envs.embed.TextEncoder` (default: the packaged MiniLM).

        Returns:
            The new rows.
        """
        if self.featurizer is None:
            raise ValueError("this store has no featurizer — build it with a featurizer to add")
        if len(variant_ids) != len(texts) or not texts:
            raise ValueError(
                f"give one text per id; got {len(variant_ids)} ids, {len(texts)} texts"
            )
        if embeddings is None:
            if encoder is None:
                from copyloop.envs.embed import default_encoder

                encoder = default_encoder()
            embeddings = encoder.encode(list(texts))
        feats = self.featurizer.transform(embeddings, list(texts))
        with self._lock:
            ids, index, old, camps = self._state
            new = [str(v) for v in variant_ids]
            clash = [v for v in new if v in index] + sorted({v for v in new if new.count(v) > 1})
            if clash:
                raise ValueError(f"variant id(s) {clash[:5]} already exist — ids are unique")
            all_ids = ids + new
            merged = np.vstack([old, feats]).astype(np.float32)
            merged.setflags(write=False)
            self._state = (
                all_ids,
                {v: i for i, v in enumerate(all_ids)},
                merged,
                camps + [campaign_id] * len(new),
            )
            return np.arange(len(ids), len(all_ids), dtype=np.int64)

    # ---- persistence ----------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        ids, _, feats, camps = self._state
        out: dict[str, npt.NDArray[Any]] = {
            "store.ids": np.array(ids, dtype=np.str_),
            "store.features": feats,
            "store.campaigns": np.array(camps, dtype=np.str_),
        }
        if self.featurizer is not None:
            out.update(self.featurizer.to_arrays())
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> VariantStore:
        from copyloop.envs.featurize import CopyFeaturizer

        feat = CopyFeaturizer.from_arrays(arrays) if "featurizer.mean" in arrays else None
        return cls(
            arrays["store.ids"].tolist(),
            arrays["store.features"],
            arrays["store.campaigns"].tolist(),
            feat,
        )
