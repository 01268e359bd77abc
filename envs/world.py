"""The click world: ground-truth CTR(user, copy text) for experiments.

Preferences are segment dependent, so the best copy differs by segment; base rates are
calibrated per segment to realistic display-ad CTRs (0.5–5 %); preferences can drift; repeated
exposure within a session wears an ad out. Two versions (:attr:`WorldConfig.version`):

**v1** (``copyloop/CopyMarket-v0``) reads fixed word lists. The logit of a first impression is

    logit = b[segment] + evening(hour)
          + T[segment, device, variant]                (tone taste, urgency, CTA, length,
                                                       embedding direction, product appeal)
          + tone_match · [user's tone == copy tone]
          + value_weight · (price_sensitivity − 0.4) · value_words(copy)
          + benefit_weight · Σ_c interest[c] · benefit_words_c(copy)
          + interest_weight · log(6 · interest[category of product])

Copy no marketer would ship games it (cue-stuffed lists, false claims, audience talk): see
``copyloop world audit``.

**v2** (``copyloop/CopyMarket-v1``) reads each line against its own product
(:func:`~copyloop.envs.text.read_copy`, :class:`~copyloop.envs.text.ProductFacts`), the way a
reader would, and every effect saturates:

    logit = b[segment] + evening(hour) + interest_weight · log(6 · interest[category])
          + Q(copy, product)                                     (the same for every reader)
          + g · cues · (tone taste + urgency + CTA)[segment]      (taken in only if relevant)
          + g · cues · (tone_match · [tone match] + value_weight · (price_sens − 0.4) · value)
          + detail · min(6 · interest[category], 3) · tanh(grounded detail words / 3)
          + embedding direction[segment] + appeal[product] − length(segment, device)

    Q = relevance · tanh((cos(copy, product) − 0.55) / 0.15)
        − ungrounded · tanh(n / 4)  − claims · tanh(n / 1.5)  − audience · tanh(n)
        − spam · tanh(n)  − lists · tanh((run − 3)⁺ / 2)  − hype · tanh((n − 3)⁺ / 2)
        − repetition · tanh((share − 0.2)⁺ / 0.2)  − caps · ramp(share, 0.2, 0.6)
        − exclamations · tanh((n − 1)⁺ / 2)  − gibberish · ramp(share, 0.1, 0.5)
        − codes · ramp(share, 0.3, 0.8)  − too_long · ramp(words, 25, 50)

with ``g = ramp(cos, 0.35, 0.6)`` and the weights in :class:`ReadingWeights`. ``cos`` is the
MiniLM cosine between the line and the product's title + description; grounded detail words
come from the product's own description; claims (superlatives, health, guarantees) count only
when the product's text does not make them.

In both, CTR = sigmoid(logit) · fatigue_same^(times this variant was shown this session)
                              · fatigue_any^(impressions earlier in the session).

With drift, T moves between two preference tables, ``T(t) = (1 − m(t)) T_A + m(t) T_B`` with
``m(t) = strength · (1 − cos(2πt / period)) / 2`` over the impression clock ``t``. Everything
copy-dependent is computed once per variant when the world is built (and once per judged line
in :meth:`ClickWorld.ctr_of_texts`), so both versions cost the same per impression.

Agents never see any of this: envs expose the true CTRs only in ``info`` for regret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq
from scipy.special import expit

from copyloop.envs.catalog import Catalog
from copyloop.envs.text import (
    BENEFIT_SLICE,
    CTA_COL,
    LENGTH_COL,
    READ,
    TONE_SLICE,
    URGENCY_COL,
    VALUE_COL,
    ProductFacts,
    read_copy,
    text_features,
)
from copyloop.envs.users import CATEGORIES, DEVICES, TONES, UserPopulation


@dataclass(frozen=True)
class SegmentTaste:
    """How one segment reacts to copy.

    Attributes:
        target_ctr: mean CTR of the segment's first impressions under uniformly random copy
            (the base rate the world is calibrated to).
        urgency: logit per unit of urgency cues (negative = put off by pressure).
        cta: logit for a call to action.
        ideal_words: preferred copy length in words.
    """

    target_ctr: float
    urgency: float
    cta: float
    ideal_words: float

    def __post_init__(self) -> None:
        if not 0.001 <= self.target_ctr <= 0.2:
            raise ValueError(f"`target_ctr` must be in [0.001, 0.2], got {self.target_ctr}")
        if not 1 <= self.ideal_words <= 60:
            raise ValueError(f"`ideal_words` must be in [1, 60], got {self.ideal_words}")


DEFAULT_TASTES: dict[str, SegmentTaste] = {
    "bargain_hunter": SegmentTaste(0.035, 0.55, 0.30, 8.0),
    "premium_shopper": SegmentTaste(0.010, -0.60, -0.05, 13.0),
    "busy_parent": SegmentTaste(0.025, 0.10, 0.40, 7.0),
    "tech_enthusiast": SegmentTaste(0.020, 0.00, 0.10, 16.0),
    "wellness_seeker": SegmentTaste(0.015, -0.25, 0.20, 11.0),
}


@dataclass(frozen=True)
class ReadingWeights:
    """How world v2 turns its reading of a line (:func:`~copyloop.envs.text.read_copy`, against
    the line's own product) into logit. Every effect saturates (tanh or a clipped ramp), so
    piling up a cue buys little and piling up a fault costs at most its weight.

    Attributes:
        relevance: logit range of the copy's semantic match to its product: ``relevance ·
            tanh((cos − relevance_mid) / relevance_scale)`` with ``cos`` the MiniLM cosine
            between the line and the product's title + description.
        relevance_mid: cosine at which relevance adds nothing.
        relevance_scale: cosine span of the relevance ramp.
        gate_low: below this cosine a reader ignores the copy's tone, urgency, call to action
            and value cues (they are not about anything the reader wants)...
        gate_high: ...and from this cosine on the cues count in full (linear in between).
        cues: scale of those segment and user tastes once taken in (v1's weights × this).
        detail: logit per unit of ``tanh(grounded detail words / 3)``, scaled per user by
            interest in the product's category (``min(6 · interest, 3)``): specific benefits
            the product's own description has.
        ungrounded: most logit lost to content words from neither the product's text nor
            generic marketing (``tanh(n / 4)``).
        claims: most logit lost to claims the product's text does not make (superlatives,
            health, guarantees; ``tanh(n / 1.5)``).
        audience: most logit lost to descriptions of the audience (``tanh(n)``).
        spam: most logit lost to spam marks (``tanh(n)``).
        lists: most logit lost to a list: a run of one- or two-word items between commas, or
            of generic words with nothing between them (``tanh((run − 3) / 2)``).
        hype: most logit lost to piled-up urgency, value and call-to-action words
            (``tanh((hits − 3) / 2)``: a deadline and a call to action are fine, seven are not).
        repetition: most logit lost to repeated words (``tanh((share − 0.2) / 0.2)``).
        caps: most logit lost to words in capitals (ramp from 20 % to 60 % of words).
        exclamations: most logit lost to "!" beyond the first (``tanh((n − 1) / 2)``).
        gibberish: most logit lost to non-words (ramp from 10 % to 50 % of words).
        codes: most logit lost to words with digits (ramp from 30 % to 80 % of words).
        length: most logit lost to a length away from the segment's ideal
            (``tanh(((words − ideal) / ideal)²)``, × ``mobile_length_mult`` on mobile).
        too_long: most logit lost to length itself, for every reader (ramp from 25 to 50
            words: nobody reads a pasted product page in an ad slot).
    """

    relevance: float = 1.0
    relevance_mid: float = 0.55
    relevance_scale: float = 0.15
    gate_low: float = 0.35
    gate_high: float = 0.6
    cues: float = 0.6
    detail: float = 0.6
    ungrounded: float = 0.4
    claims: float = 1.5
    audience: float = 1.5
    spam: float = 1.5
    lists: float = 1.0
    hype: float = 1.0
    repetition: float = 2.0
    caps: float = 3.0
    exclamations: float = 1.5
    gibberish: float = 1.5
    codes: float = 1.0
    length: float = 0.5
    too_long: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("relevance_mid", "gate_low", "gate_high") and v < 0:
                raise ValueError(f"`reading.{f.name}` must be >= 0, got {v}")
        if self.relevance_scale <= 0:
            raise ValueError(f"`reading.relevance_scale` must be > 0, got {self.relevance_scale}")
        if not -1.0 <= self.gate_low < self.gate_high <= 1.0:
            raise ValueError(
                "`reading.gate_low` < `reading.gate_high` must be cosines in [-1, 1], got "
                f"{self.gate_low} and {self.gate_high}"
            )


WorldVersion = Literal["v1", "v2"]
"""Click-world versions: v1 adds word-list cues (``CopyMarket-v0``); v2 reads copy against its
product (``CopyMarket-v1``)."""


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the click world (defaults give 0.5–5 % CTRs).

    Attributes:
        seed: seed of the world's hidden parameters (taste directions, product appeal).
        tastes: per-segment taste, keyed by segment name; segments not named here get a taste
            drawn from ``seed``. In a config file a table of segment tables
            (``[market.world.tastes.bargain_hunter]``) whose keys override that segment's
            default taste.
        version: ``"v1"``: the logit adds fixed word-list cues (what ``CopyMarket-v0`` runs;
            kept so earlier results reproduce). ``"v2"``: it reads each line against its own
            product — relevance, grounded detail, clarity, and the costs of unsupported
            claims, audience talk, lists, repetition, capitals, "!" piles and spam (what
            ``CopyMarket-v1`` runs). See the module docstring.
        reading: v2's weights (see :class:`ReadingWeights`); v1 ignores them.
        tone_weight: scale of each segment's tone preferences (taken from its tone mix).
        tone_match: logit bonus when the copy's tone is the user's own preferred tone.
        length_penalty: v1: logit lost per squared word away from the segment's ideal length
            (v2 saturates it: ``reading.length``).
        mobile_length_mult: the length penalty is this much stronger on mobile.
        value_weight: logit per unit of value cues, scaled by (price sensitivity − 0.4).
        benefit_weight: v1: logit for benefit-lexicon cues that match the user's interests
            (v2 reads grounded detail instead: ``reading.detail``).
        interest_weight: logit per log-unit of the user's interest in the product's category.
        embedding_weight: standard deviation of the embedding-direction term.
        product_sd: standard deviation of the product's own appeal.
        evening_boost: logit added for users active 19:00–23:00.
        drift_period: impressions per drift cycle; None = no drift.
        drift_strength: how far preferences move (0 = none, 1 = all the way to table B).
        fatigue_same: CTR multiplier per earlier impression of the same variant in the session.
        fatigue_any: CTR multiplier per earlier impression of any variant in the session.
    """

    seed: int = 0
    tastes: tuple[tuple[str, SegmentTaste], ...] = field(
        default=tuple(DEFAULT_TASTES.items()), metadata={"names": "segment"}
    )
    version: WorldVersion = "v1"
    reading: ReadingWeights = field(default_factory=ReadingWeights)
    tone_weight: float = 0.4
    tone_match: float = 0.35
    length_penalty: float = 0.002
    mobile_length_mult: float = 1.6
    value_weight: float = 1.4
    benefit_weight: float = 1.1
    interest_weight: float = 0.45
    embedding_weight: float = 0.25
    product_sd: float = 0.3
    evening_boost: float = 0.15
    drift_period: int | None = None
    drift_strength: float = 1.0
    fatigue_same: float = 0.55
    fatigue_any: float = 0.97

    def __post_init__(self) -> None:
        if self.version not in ("v1", "v2"):
            raise ValueError(f"`version` must be 'v1' or 'v2', got {self.version!r}")
        if self.drift_period is not None and self.drift_period < 2:
            raise ValueError(
                f"`drift_period` must be >= 2 impressions or None, got {self.drift_period}"
            )
        if not 0.0 <= self.drift_strength <= 1.0:
            raise ValueError(f"`drift_strength` must be in [0, 1], got {self.drift_strength}")
        for name in ("fatigue_same", "fatigue_any"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"`{name}` must be in (0, 1] (a CTR multiplier), got {v}")
        for name in ("length_penalty", "mobile_length_mult", "embedding_weight", "product_sd"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")


def sigmoid(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The logistic function in float32 via tanh (vectorised, ~4× faster than scipy's expit;
    within 1e-7 of it)."""
    y = np.tanh(np.asarray(x, np.float32) * np.float32(0.5))
    y += np.float32(1.0)
    y *= np.float32(0.5)
    return y.astype(np.float32, copy=False)


_CUES = slice(0, 12)
_BASE = slice(12, 18)
_SD = 18

UNUSED_LOGIT = -1e4
"""Logit of an unused slot: its CTR underflows to exactly 0 (finite, so drift mixing stays
well defined)."""


@dataclass
class SlotTerms:
    """The copy-dependent parts of the logit, laid out as R rows of K candidate slots.

    For the catalog a row is a campaign and its slots are the campaign's variants; for
    :meth:`ClickWorld.ctr_of_texts` one row holds the texts being judged. Gathering whole rows
    (not single variants) keeps the batched env fast. Unused slots have logit
    :data:`UNUSED_LOGIT` (CTR 0).

    Attributes (S segments, D devices):
        table_a: segment×device term per slot, (S·D, R, K).
        table_b: the same under the drifted preferences, (S·D, R, K).
        cues_t: the copy's cues that meet user-level weights, (R, 12, K): benefit cues per
            category (6; v2: grounded detail in the product's own category), value cues (1),
            one-hot tone (5) (v2: both scaled by how far the reader takes the line in).
        category: product category of each row's campaign, (R,).
    """

    table_a: npt.NDArray[np.float64]
    table_b: npt.NDArray[np.float64]
    cues_t: npt.NDArray[np.float32]
    category: npt.NDArray[np.int64]


@dataclass
class ClickWorld:
    """Ground-truth click model over a catalog and a user population.

    World v2 (``WorldConfig(version="v2")``) also embeds each campaign's product (title +
    description, with the packaged MiniLM) when it is built.

    Example:
        >>> world = ClickWorld(catalog, population, WorldConfig(seed=0))  # doctest: +SKIP
        >>> ctr = world.first_ctr(np.array([0, 1]), np.array([3, 3]))   # doctest: +SKIP
        >>> ctr.shape  # (2 users, K candidate slots), 0 in unused slots  # doctest: +SKIP
        (2, 8)
    """

    catalog: Catalog
    population: UserPopulation
    config: WorldConfig = field(default_factory=WorldConfig)

    def __post_init__(self) -> None:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 7919])
        pop = self.population
        s_names = pop.segment_names
        tastes = dict(cfg.tastes)
        self.tastes = [
            tastes[n]
            if n in tastes
            else SegmentTaste(
                float(np.clip(rng.lognormal(np.log(0.02), 0.4), 0.005, 0.05)),
                float(rng.normal(0.0, 0.4)),
                float(rng.normal(0.2, 0.15)),
                float(rng.uniform(6, 16)),
            )
            for n in s_names
        ]
        emb_dim = self.catalog.embeddings.shape[1]
        shared = np.asarray(rng.normal(size=emb_dim), np.float64)

        def directions() -> npt.NDArray[np.float64]:
            d = shared[None, :] + 1.2 * rng.normal(size=(len(s_names), emb_dim))
            return d / np.linalg.norm(d, axis=1, keepdims=True)

        self._dir_a = directions()
        self._dir_b = directions()
        tone_mix = np.array([np.asarray(s.tone_probs, float) for s in pop.config.segments])
        tone_mix = tone_mix / tone_mix.sum(1, keepdims=True)
        pref = np.log(np.clip(tone_mix * len(TONES), 0.05, None))
        self._tone_a = cfg.tone_weight * pref
        # Drifted tone taste: each segment's preferences rotate to another segment's.
        self._tone_b = cfg.tone_weight * np.roll(pref, 1, axis=0)
        self._appeal = rng.normal(0.0, cfg.product_sd, size=self.catalog.n_campaigns)
        self._emb_scale = cfg.embedding_weight * np.sqrt(emb_dim)

        cat = self.catalog
        if cfg.version == "v2":
            self._init_reading()
        self.terms = self.slot_terms(
            cat.embeddings,
            cat.text_feats,
            cat.variant_campaign,
            cat.slots,
            np.arange(cat.n_campaigns),
            texts=cat.variants.texts,
        )
        # Per-user parts.
        u = pop.users
        sd = (u.segment * len(DEVICES) + u.device).astype(np.float32)
        # User-level weights of the copy's cues (matching SlotTerms.cues): interests × benefit
        # cues (v2: interest in the product's category × grounded detail), price sensitivity ×
        # value cues, a bonus for the user's own preferred tone.
        interest_w = (
            cfg.benefit_weight * u.interests
            if cfg.version == "v1"
            else cfg.reading.detail * np.minimum(6.0 * u.interests, 3.0)
        )
        cue_w = np.concatenate(
            [
                interest_w,
                (cfg.value_weight * (u.price_sensitivity - 0.4))[:, None],
                cfg.tone_match * np.eye(len(TONES))[u.preferred_tone],
            ],
            axis=1,
        ).astype(np.float32)
        self._interest = cfg.interest_weight * np.log(np.clip(6.0 * u.interests, 1e-3, None))
        evening = (u.hour >= 19.0) & (u.hour < 23.0)
        self._offset = self._calibrate(evening, cue_w, sd)
        self._user_base = self._offset[u.segment] + cfg.evening_boost * evening
        # Everything the logit needs of a user in one row (one random memory access per user):
        # [cue weights (12) | base + interest per category (6) | segment·device index (1)].
        self.user_table = np.concatenate(
            [cue_w, self._user_base[:, None] + self._interest, sd[:, None]], axis=1
        ).astype(np.float32)
        self.user_table.setflags(write=False)
        self._slot_mask = cat.slots >= 0

    # ---- per-variant terms ---------------------------------------------------------------------
    def _init_reading(self) -> None:
        """v2: each campaign's product facts and the MiniLM embedding of its title and
        description (what copy is read against)."""
        from copyloop.envs.embed import default_encoder

        products = self.catalog.products
        self._facts = [
            ProductFacts.of(p.title, p.description, p.brand, p.category_name) for p in products
        ]
        emb = default_encoder().encode([f"{p.title}. {p.description}" for p in products])
        if emb.shape[1] != self.catalog.embeddings.shape[1]:
            raise ValueError(
                f"world v2 embeds products with the packaged MiniLM ({emb.shape[1]}-d) but the "
                f"catalog's embeddings are {self.catalog.embeddings.shape[1]}-d — build the "
                "catalog with the default encoder"
            )
        self._product_emb = emb.astype(np.float64)

    def read(
        self,
        texts: Sequence[str],
        embeddings: npt.NDArray[np.float32],
        campaign: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        """v2's segment-independent reading of lines shown in ``campaign`` ``(V,)``.

        Returns:
            ``quality`` ``(V,)``: relevance minus every fault (see :class:`ReadingWeights`);
            ``gate`` ``(V,)`` in [0, ``cues``]: how far the reader takes in the line's cues;
            ``reading`` ``(V, len(READING_NAMES))``: :func:`~copyloop.envs.text.read_copy`.
        """
        w = self.config.reading
        campaign = np.asarray(campaign, np.int64)
        r = read_copy(texts, [self._facts[c] for c in campaign]).astype(np.float64)
        cos = np.einsum("ve,ve->v", embeddings.astype(np.float64), self._product_emb[campaign])

        def col(name: str) -> npt.NDArray[np.float64]:
            return r[:, READ[name]]

        def ramp(x: npt.NDArray[np.float64], lo: float, hi: float) -> npt.NDArray[np.float64]:
            return np.clip((x - lo) / (hi - lo), 0.0, 1.0)

        stuffing = np.maximum(col("list_run"), col("keyword_run"))
        quality = (
            w.relevance * np.tanh((cos - w.relevance_mid) / w.relevance_scale)
            - w.ungrounded * np.tanh(col("ungrounded") / 4.0)
            - w.claims * np.tanh(col("unsupported_claims") / 1.5)
            - w.audience * np.tanh(col("audience"))
            - w.spam * np.tanh(col("spam"))
            - w.lists * np.tanh(np.maximum(stuffing - 3.0, 0.0) / 2.0)
            - w.hype * np.tanh(np.maximum(col("hype") - 3.0, 0.0) / 2.0)
            - w.repetition * np.tanh(np.maximum(col("repetition") - 0.2, 0.0) / 0.2)
            - w.caps * ramp(col("caps"), 0.2, 0.6)
            - w.exclamations * np.tanh(np.maximum(col("exclamations") - 1.0, 0.0) / 2.0)
            - w.gibberish * ramp(col("unknown"), 0.1, 0.5)
            - w.codes * ramp(col("codes"), 0.3, 0.8)
            - w.too_long * ramp(col("words"), 25.0, 50.0)
        )
        gate = w.cues * ramp(cos, w.gate_low, w.gate_high)
        return quality, gate, r.astype(np.float32)

    def slot_terms(
        self,
        embeddings: npt.NDArray[np.float32],
        text_feats: npt.NDArray[np.float32],
        campaign: npt.NDArray[np.int64],
        slots: npt.NDArray[np.int64],
        row_campaign: npt.NDArray[np.int64],
        *,
        texts: Sequence[str] | None = None,
    ) -> SlotTerms:
        """Logit terms of any texts (embeddings ``(V, e)``, features ``(V, F)``, shown in
        campaigns ``(V,)``), laid out in rows of slots ``(R, K)`` (variant index, −1 = unused)
        whose campaigns are ``row_campaign`` ``(R,)``. World v2 also reads the ``texts``."""
        cfg = self.config
        n_seg = len(self.tastes)
        n_v = embeddings.shape[0]
        tone = np.argmax(text_feats[:, TONE_SLICE], axis=1).astype(np.int64)
        urg = np.array([t.urgency for t in self.tastes])[:, None] * text_feats[None, :, URGENCY_COL]
        cta = np.array([t.cta for t in self.tastes])[:, None] * text_feats[None, :, CTA_COL]
        words = 20.0 * text_feats[:, LENGTH_COL]
        ideal = np.array([t.ideal_words for t in self.tastes])[:, None]
        appeal = self._appeal[campaign][None, :]
        used = slots >= 0
        idx = np.where(used, slots, 0)
        value = text_feats[:, VALUE_COL : VALUE_COL + 1].astype(np.float64)
        tone_1h = np.eye(len(TONES))[tone]
        if cfg.version == "v1":
            gate, quality = np.ones(n_v), np.zeros(n_v)
            length = cfg.length_penalty * (words[None, :] - ideal) ** 2  # (S, V)
            benefit = text_feats[:, BENEFIT_SLICE].astype(np.float64)
        else:
            if texts is None or len(texts) != n_v:
                raise ValueError("world v2 reads the copy itself: pass `texts`, one per embedding")
            quality, gate, reading = self.read(texts, embeddings, campaign)
            length = cfg.reading.length * np.tanh(((words[None, :] - ideal) / ideal) ** 2)
            # Grounded detail counts in the product's own category (weighted per user by
            # interest in it); tone and value cues only as far as the reader takes the line in.
            detail = np.tanh(reading[:, READ["detail_hits"]] / 3.0)
            cats = np.array([self.catalog.products[c].category for c in campaign], np.int64)
            benefit = detail[:, None] * np.eye(len(CATEGORIES))[cats]
            value, tone_1h = gate[:, None] * value, gate[:, None] * tone_1h
        cues = np.concatenate([benefit, value, tone_1h], axis=1).astype(np.float64)
        dev_mult = np.array([cfg.mobile_length_mult if d == "mobile" else 1.0 for d in DEVICES])

        def table(
            dirs: npt.NDArray[np.float64], tone_pref: npt.NDArray[np.float64]
        ) -> npt.NDArray[np.float64]:
            emb = self._emb_scale * (dirs @ embeddings.T.astype(np.float64))  # (S, V)
            seg = gate * (tone_pref[:, tone] + urg + cta) + emb + appeal + quality  # (S, V)
            out = seg[:, None, :] - dev_mult[None, :, None] * length[:, None, :]  # (S, D, V)
            out = out.reshape(n_seg * len(DEVICES), -1)[:, idx]  # (S·D, R, K)
            return np.where(used[None], out, UNUSED_LOGIT).astype(np.float32)

        products = self.catalog.products
        return SlotTerms(
            table_a=table(self._dir_a, self._tone_a),
            table_b=table(self._dir_b, self._tone_b),
            cues_t=np.ascontiguousarray(
                np.where(used[..., None], cues[idx], 0.0).astype(np.float32).transpose(0, 2, 1)
            ),
            category=np.array([products[c].category for c in row_campaign], np.int64),
        )

    def drift_mix(self, t: float | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Weight of the drifted preferences at impression clock ``t`` (0 without drift)."""
        cfg = self.config
        t_arr = np.asarray(t, float)
        if cfg.drift_period is None:
            return np.zeros_like(t_arr)
        return cfg.drift_strength * 0.5 * (1.0 - np.cos(2.0 * np.pi * t_arr / cfg.drift_period))

    def _logits(
        self,
        user_rows: npt.NDArray[np.float32],
        rows: npt.NDArray[np.int64],
        terms: SlotTerms,
        t: float | npt.NDArray[np.float64] = 0.0,
    ) -> npt.NDArray[np.float32]:
        """First-impression logits ``(B, K)`` for users (their :attr:`user_table` rows,
        ``(B, 19)``) seeing slot rows ``(B,)``."""
        sd = user_rows[:, _SD].astype(np.intp)
        tab = terms.table_a[sd, rows]
        if self.config.drift_period is not None:
            m = np.asarray(self.drift_mix(t), float)
            if m.ndim:
                m = m[:, None]
            tab = (1.0 - m) * tab + m * terms.table_b[sd, rows]
        user = np.take_along_axis(user_rows[:, _BASE], terms.category[rows][:, None], axis=1)
        logit = tab + user
        cues = np.take(terms.cues_t, rows, axis=0)  # (B, 12, K)
        logit += np.matmul(user_rows[:, None, _CUES], cues)[:, 0]
        return np.asarray(logit, np.float32)

    def _calibrate(
        self,
        evening: npt.NDArray[np.bool_],
        cue_w: npt.NDArray[np.float32],
        sd: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float64]:
        """Per-segment offsets so each segment's mean first-impression CTR hits its target."""
        base = self.config.evening_boost * evening
        table = np.concatenate([cue_w, base[:, None] + self._interest, sd[:, None]], axis=1).astype(
            np.float32
        )
        rng = np.random.default_rng([self.config.seed, 104729])
        users = self.population.users
        offsets = np.zeros(len(self.tastes))
        mask = self.catalog.slots >= 0
        for s, taste in enumerate(self.tastes):
            members = np.flatnonzero(users.segment == s)
            if members.size == 0:
                continue
            pick = rng.choice(members, size=min(4000, 4 * members.size))
            camp = rng.integers(0, self.catalog.n_campaigns, size=pick.size)
            raw = self._logits(table[pick], camp, self.terms, 0.0).astype(np.float64)
            w = mask[camp]

            def gap(
                off: float,
                raw: npt.NDArray[np.float64] = raw,
                w: npt.NDArray[np.bool_] = w,
                target: float = taste.target_ctr,
            ) -> float:
                return float((expit(raw + off) * w).sum() / w.sum()) - target

            offsets[s] = brentq(gap, -20.0, 10.0, xtol=1e-6)
        return offsets

    # ---- public CTRs ---------------------------------------------------------------------------
    def first_ctr(
        self,
        users: npt.NDArray[np.int64],
        campaigns: npt.NDArray[np.int64],
        t: float | npt.NDArray[np.float64] = 0.0,
    ) -> npt.NDArray[np.float32]:
        """CTR of a first impression of each candidate slot, ``(B, K)``; 0 in unused slots."""
        return self.first_ctr_rows(self.user_table[np.asarray(users, np.int64)], campaigns, t)

    def first_ctr_rows(
        self,
        user_rows: npt.NDArray[np.float32],
        campaigns: npt.NDArray[np.int64],
        t: float | npt.NDArray[np.float64] = 0.0,
    ) -> npt.NDArray[np.float32]:
        """:meth:`first_ctr` for users given by their :attr:`user_table` rows ``(B, 19)``."""
        campaigns = np.asarray(campaigns, np.int64)
        return sigmoid(self._logits(user_rows, campaigns, self.terms, t))

    def fatigue(
        self, shown: npt.NDArray[np.integer], step: npt.NDArray[np.integer] | int
    ) -> npt.NDArray[np.float64]:
        """CTR multiplier given times each slot was shown ``(B, K)`` and the session step."""
        step_arr = np.asarray(step)
        return self.config.fatigue_same**shown * (
            self.config.fatigue_any ** (step_arr[:, None] if step_arr.ndim else step_arr)
        )

    def ctr_of_texts(
        self,
        texts: Sequence[str],
        campaign: int,
        users: npt.NDArray[np.int64],
        *,
        embeddings: npt.NDArray[np.float32] | None = None,
        t: float = 0.0,
    ) -> npt.NDArray[np.float32]:
        """True first-impression CTR of arbitrary copy for ``users`` in ``campaign``,
        shape ``(len(users), len(texts))`` — how generated copy is judged."""
        from copyloop.envs.embed import default_encoder

        if not 0 <= campaign < self.catalog.n_campaigns:
            raise ValueError(
                f"`campaign` must be in [0, {self.catalog.n_campaigns}), got {campaign}"
            )
        emb = default_encoder().encode(list(texts)) if embeddings is None else embeddings
        n = len(texts)
        terms = self.slot_terms(
            emb,
            text_features(list(texts)),
            np.full(n, campaign, np.int64),
            np.arange(n)[None, :],
            np.array([campaign]),
            texts=list(texts),
        )
        users = np.asarray(users, np.int64)
        rows = self.user_table[users]
        return sigmoid(self._logits(rows, np.zeros(users.size, np.int64), terms, t))
