"""Calibration report of the click world.

Is it a world in which copy, context and generation matter?
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.envs.audit import audit_lines
from copyloop.envs.catalog import BENEFIT_PHRASE, short_title
from copyloop.envs.embed import default_encoder
from copyloop.envs.market import Market

CRAFTED: tuple[str, ...] = (
    "{short}: {benefit}. Save today, shop now!",
    "You'll love the {short}: {benefit}. Shop yours.",
    "{brand}{short}: {benefit}. Refined, timeless quality. Discover it.",
    "{short}: {benefit}. Great value with free shipping. Shop now.",
    "Wow, the {short}: {benefit}. Ready to treat yourself? Shop now!",
    "{short}: {benefit}. Designed to last, with full specs. Explore it.",
)
"""Copy that combines cues no single catalog style combines (benefit + value + CTA + tone): in
world v1, evidence that copy better than the corpus's exists. Its benefit phrase is the
category's, not the product's, so world v2 reads it as generic; the honest evidence there is
the audit's good lines (:data:`~copyloop.envs.audit.GOOD_TEMPLATES`, the product's own facts)."""


@dataclass
class SegmentRow:
    segment: str
    share: float
    base_ctr: float
    oracle_ctr: float
    ctr_p05: float
    ctr_p95: float


@dataclass
class WorldReport:
    """Numbers behind docs/world.md."""

    segments: list[SegmentRow]
    mean_ctr: float
    mean_best_over_worst: float
    campaigns_best_differs: float
    pairwise_best_disagreement: float
    crafted_beats_corpus: float
    crafted_lift: float
    good_beats_corpus: float
    good_lift: float
    campaigns: int
    users_per_segment: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def world_report(
    market: Market, *, users_per_segment: int = 300, campaigns: int | None = 60, seed: int = 0
) -> WorldReport:
    """Measure base CTR by segment, CTR spread across variants, how often the best variant
    differs by segment, and how often crafted copy and the audit's good lines (the best of a
    campaign's lines, per segment) beat every catalog variant.

    Args:
        market: the market to measure.
        users_per_segment: users sampled per segment (CTR averaged over them).
        campaigns: campaigns examined (None = all).
        seed: sampling seed.
    """
    rng = np.random.default_rng(seed)
    pop, cat, world = market.population, market.catalog, market.world
    n_c = cat.n_campaigns if campaigns is None else min(campaigns, cat.n_campaigns)
    camps = np.sort(rng.choice(cat.n_campaigns, size=n_c, replace=False))
    seg_users = []
    for s in range(pop.n_segments):
        members = np.flatnonzero(pop.users.segment == s)
        seg_users.append(
            rng.choice(members, size=min(users_per_segment, members.size), replace=False)
        )
    # seg_ctr[s, c, k]: mean first-impression CTR of slot k of campaign c for segment s
    k = cat.max_candidates
    seg_ctr = np.zeros((pop.n_segments, n_c, k))
    for s, members in enumerate(seg_users):
        for j, c in enumerate(camps):
            seg_ctr[s, j] = world.first_ctr(members, np.full(members.size, c)).mean(0)
    mask = cat.slots[camps] >= 0  # (n_c, K)
    rows = []
    shares = np.bincount(pop.users.segment, minlength=pop.n_segments) / len(pop.users)
    for s, name in enumerate(pop.segment_names):
        vals = seg_ctr[s][mask]
        rows.append(
            SegmentRow(
                segment=name,
                share=float(shares[s]),
                base_ctr=float(vals.mean()),
                oracle_ctr=float(np.where(mask, seg_ctr[s], -1).max(1).mean()),
                ctr_p05=float(np.percentile(vals, 5)),
                ctr_p95=float(np.percentile(vals, 95)),
            )
        )
    masked = np.where(mask[None], seg_ctr, np.nan)
    best_over_worst = np.nanmax(masked, 2) / np.nanmin(masked, 2)
    best = np.nanargmax(masked, axis=2)  # (S, n_c)
    differs = np.mean([len(set(best[:, j].tolist())) > 1 for j in range(n_c)])
    pairs = [(a, b) for a in range(pop.n_segments) for b in range(a + 1, pop.n_segments)]
    disagree = np.mean([np.mean(best[a] != best[b]) for a, b in pairs]) if pairs else 0.0

    # Crafted copy (cue combinations) and the audit's good lines (the product's own facts) vs
    # the catalog's best, per (campaign, segment).
    crafted_texts = [
        [
            t.format(
                short=short_title(p.title),
                benefit=BENEFIT_PHRASE[p.category_name],
                brand=f"{p.brand} " if p.brand else "",
            )
            for t in CRAFTED
        ]
        for p in (cat.products[c] for c in camps)
    ]
    good = audit_lines(cat.products, camps, seed)["good"]
    crafted_wins, crafted_lift = _beats_best(market, camps, crafted_texts, seg_users, masked)
    good_wins, good_lift = _beats_best(market, camps, good, seg_users, masked)
    overall = float(np.sum([r.share * r.base_ctr for r in rows]))
    return WorldReport(
        segments=rows,
        mean_ctr=overall,
        mean_best_over_worst=float(np.mean(best_over_worst)),
        campaigns_best_differs=float(differs),
        pairwise_best_disagreement=float(disagree),
        crafted_beats_corpus=crafted_wins,
        crafted_lift=crafted_lift,
        good_beats_corpus=good_wins,
        good_lift=good_lift,
        campaigns=n_c,
        users_per_segment=users_per_segment,
    )


def _beats_best(
    market: Market,
    camps: npt.NDArray[np.int64],
    texts: list[list[str]],
    seg_users: list[npt.NDArray[np.int64]],
    seg_ctr: npt.NDArray[np.float64],
) -> tuple[float, float]:
    """Share of (campaign, segment) pairs where the best of a campaign's ``texts`` beats every
    catalog variant (``seg_ctr`` (S, n_c, K), NaN in unused slots), and the median lift."""
    emb = default_encoder().encode([t for ts in texts for t in ts])
    wins, lifts = [], []
    start = 0
    for j, c in enumerate(camps.tolist()):
        e = emb[start : start + len(texts[j])]
        start += len(texts[j])
        for s, members in enumerate(seg_users):
            best = market.world.ctr_of_texts(texts[j], c, members, embeddings=e).mean(0).max()
            corpus = np.nanmax(seg_ctr[s, j])
            wins.append(best > corpus)
            lifts.append(best / corpus - 1.0)
    return float(np.mean(wins)), float(np.median(lifts))
