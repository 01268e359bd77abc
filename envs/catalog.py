"""Campaigns and their copy variants, built from the real ad corpus.

Each campaign is one real product of the corpus. Its variants are rewritten around the product's
own title and description with a small set of copywriting styles (the corpus's own title, a
description-led line, urgency, value, premium, friendly, playful, benefit-led, call-to-action,
question). Each style carries at most two of the cues the click world rewards, so copy better
than any catalog variant exists and a generator has room to win.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from copyloop.contract import VariantsTable
from copyloop.envs.corpus import Product, load_products
from copyloop.envs.embed import TextEncoder, default_encoder
from copyloop.envs.featurize import CANDIDATE_BOUND as CANDIDATE_BOUND
from copyloop.envs.featurize import CopyFeaturizer
from copyloop.envs.text import text_features, tone_of
from copyloop.envs.users import CATEGORIES, TONES

CATEGORY_NOUN: dict[str, str] = {
    "lawn_garden_parts": "a part that fits your mower",
    "slip_on_footwear": "shoes you can slip on",
    "home_furnishings": "a new look for your home",
    "nutrition_supplements": "a daily boost",
    "android_devices": "a new tablet or phone",
    "womens_dresses": "the perfect dress",
}
BENEFIT_PHRASE: dict[str, str] = {
    "lawn_garden_parts": "a reliable, durable replacement that fits",
    "slip_on_footwear": "all-day comfort with an easy slip-on fit",
    "home_furnishings": "timeless design and solid craftsmanship for your home",
    "nutrition_supplements": "natural daily energy and immune support",
    "android_devices": "a fast, portable screen with long battery life",
    "womens_dresses": "a flattering, versatile style in soft fabric",
}


def short_title(title: str, max_words: int = 7) -> str:
    """The product name without trailing sizes/colours: text before the first comma, clipped."""
    head = re.split(r",| - | \| ", title, maxsplit=1)[0].strip()
    words = head.split()
    return " ".join(words[:max_words]) if words else title.strip()


def first_sentence(text: str, max_chars: int = 110) -> str:
    s = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0].strip()
    if len(s) > max_chars:
        s = s[:max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    return s


Template = Callable[[Product], str]

STYLES: dict[str, Template] = {
    "original": lambda p: p.title,
    "description": lambda p: (
        f"{short_title(p.title)}. {first_sentence(p.description)}"
        if p.description
        else f"{short_title(p.title)} by {p.brand or 'our makers'}."
    ),
    "urgent": lambda p: f"{short_title(p.title)}: limited stock, order today!",
    "value": lambda p: (
        f"Save on the {short_title(p.title)}{' from ' + p.brand if p.brand else ''}. Great value."
    ),
    "premium": lambda p: (
        f"{p.brand + ' ' if p.brand else ''}{short_title(p.title)}: crafted "
        "quality, timeless and refined."
    ),
    "friendly": lambda p: f"You'll love the {short_title(p.title)}. Made for your everyday.",
    "playful": lambda p: f"Wow, the {short_title(p.title)} just dropped. Ready to treat yourself?",
    "benefit": lambda p: f"{short_title(p.title)}: {BENEFIT_PHRASE[p.category_name]}.",
    "cta": lambda p: f"Shop the {short_title(p.title)}{' from ' + p.brand if p.brand else ''}.",
    "question": lambda p: (
        f"Looking for {CATEGORY_NOUN[p.category_name]}? Meet the {short_title(p.title)}."
    ),
}
"""Copy styles of the catalog, each a function of the real product."""

OPENERS: tuple[str, ...] = ("", "New: ", "Hurry: ", "Just for you: ", "Wow, ", "Meet the ")
BODIES: dict[str, Template] = {
    "name": lambda p: short_title(p.title),
    "benefit": lambda p: f"{short_title(p.title)}, {BENEFIT_PHRASE[p.category_name]}",
    "brand": lambda p: f"{p.brand + ' ' if p.brand else ''}{short_title(p.title, 5)}",
}
CLOSERS: tuple[str, ...] = (
    ".",
    ". Shop now.",
    ". Order today!",
    ". Great value.",
    ". Crafted to last.",
    ". Free shipping.",
    ". You'll love it.",
)
COMBINATIONS: tuple[tuple[int, str, int], ...] = tuple(
    (o, b, c) for o in range(len(OPENERS)) for b in BODIES for c in range(len(CLOSERS))
)
"""(opener, body, closer) combinations for campaigns with more variants than base styles."""

MAX_VARIANTS = len(STYLES) + len(COMBINATIONS)


def combination_text(p: Product, combo: tuple[int, str, int]) -> str:
    o, b, c = combo
    return f"{OPENERS[o]}{BODIES[b](p)}{CLOSERS[c]}"


@dataclass(frozen=True)
class CatalogConfig:
    """How to build the catalog.

    Attributes:
        n_campaigns: number of products to turn into campaigns (None = the whole corpus,
            2,215 products); drawn stratified by category with ``seed``.
        min_variants: fewest variants per campaign.
        max_variants: most variants per campaign (also the env's candidate slots K), at most
            :data:`MAX_VARIANTS`. Beyond the 10 base styles, variants are combinations of an
            opener, a body and a closer (:data:`OPENERS`, :data:`BODIES`, :data:`CLOSERS`).
        pca_dim: embedding components kept in the candidate features the policy sees.
        seed: seed for product and style draws.
    """

    n_campaigns: int | None = 120
    min_variants: int = 6
    max_variants: int = 8
    pca_dim: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_campaigns is not None and self.n_campaigns < 1:
            raise ValueError(f"`n_campaigns` must be >= 1 or None, got {self.n_campaigns}")
        if not 2 <= self.min_variants <= self.max_variants <= MAX_VARIANTS:
            raise ValueError(
                f"need 2 <= min_variants <= max_variants <= {MAX_VARIANTS} (the copy styles "
                f"plus their combinations); got min_variants={self.min_variants}, "
                f"max_variants={self.max_variants}"
            )
        if self.pca_dim < 0:
            raise ValueError(f"`pca_dim` must be >= 0, got {self.pca_dim}")


@dataclass
class Catalog:
    """Campaigns × copy variants with everything the world and the envs need, as arrays.

    Attributes (V variants, C campaigns, K = ``config.max_variants``):
        products: the product of each campaign, length C.
        variants: the variants table (ids, texts, attributes, embeddings, origin).
        variant_campaign: campaign index of each variant, (V,).
        embeddings: MiniLM embeddings, (V, 384), unit norm.
        text_feats: readable text features, (V, N_TEXT_FEATURES).
        candidate_feats: what a policy sees of each variant, (V + 1, pca_dim + N_TEXT_FEATURES);
            the last row is all zeros (padding for unused slots).
        slots: variant index of each campaign's candidate slot, (C, K), -1 where unused.
        n_candidates: variants per campaign, (C,).
        campaign_ids: id of each campaign.
        featurizer: the fitted map from copy to ``candidate_feats`` (new lines use it too).
    """

    config: CatalogConfig
    products: tuple[Product, ...]
    variants: VariantsTable
    variant_campaign: npt.NDArray[np.int64]
    embeddings: npt.NDArray[np.float32]
    text_feats: npt.NDArray[np.float32]
    candidate_feats: npt.NDArray[np.float32]
    slots: npt.NDArray[np.int64]
    n_candidates: npt.NDArray[np.int64]
    campaign_ids: list[str] = field(default_factory=list)
    featurizer: CopyFeaturizer | None = None

    @property
    def n_campaigns(self) -> int:
        return len(self.products)

    @property
    def n_variants(self) -> int:
        return int(self.variant_campaign.shape[0])

    @property
    def max_candidates(self) -> int:
        return int(self.slots.shape[1])

    @property
    def candidate_dim(self) -> int:
        return int(self.candidate_feats.shape[1])

    @property
    def variant_ids(self) -> list[str]:
        return self.variants.variant_ids


def build_catalog(
    config: CatalogConfig | None = None,
    *,
    encoder: TextEncoder | None = None,
    products: Sequence[Product] | None = None,
) -> Catalog:
    """Build campaigns and variants from the real corpus and embed every variant.

    Args:
        config: catalog settings (default :class:`CatalogConfig`).
        encoder: text encoder (default: the packaged MiniLM with its on-disk cache).
        products: products to draw from (default: the whole corpus).
    """
    cfg = config or CatalogConfig()
    rng = np.random.default_rng(cfg.seed)
    pool = tuple(products) if products is not None else load_products()
    if not pool:
        raise ValueError("no products to build a catalog from")
    chosen = _stratified(pool, cfg.n_campaigns, rng)
    names = list(STYLES)
    rows: list[dict[str, object]] = []
    variant_campaign: list[int] = []
    n_cand = np.zeros(len(chosen), np.int64)
    for c, p in enumerate(chosen):
        k = int(rng.integers(cfg.min_variants, cfg.max_variants + 1))
        # The corpus's own title is always among the variants; the rest are drawn from the
        # base styles, then (for large campaigns) from opener/body/closer combinations.
        n_base = min(k, len(STYLES))
        styles = ["original", *rng.choice(names[1:], size=n_base - 1, replace=False).tolist()]
        if k > n_base:
            picks = rng.choice(len(COMBINATIONS), size=k - n_base, replace=False)
            styles += [f"mix-{o}-{b}-{cl}" for o, b, cl in (COMBINATIONS[i] for i in picks)]
        n_cand[c] = k
        for style in styles:
            if style.startswith("mix-"):
                _, o, b, cl = style.split("-")
                text = combination_text(p, (int(o), b, int(cl)))
            else:
                text = STYLES[style](p)
            rows.append(
                {
                    "variant_id": f"p{p.product_id}-{style}",
                    "campaign_id": f"p{p.product_id}",
                    "text": text,
                    "attributes": {
                        "style": style,
                        "tone": TONES[tone_of(text)],
                        "category": p.category_name,
                        "brand": p.brand,
                    },
                    "origin": "corpus:gembench/CA_Prod"
                    if style == "original"
                    else f"template:{style}",
                }
            )
            variant_campaign.append(c)
    texts = [str(r["text"]) for r in rows]
    enc = encoder or default_encoder()
    emb = enc.encode(texts, progress=len(texts) > 2000)
    for r, e in zip(rows, emb, strict=True):
        r["embedding"] = e
        r["attributes"] = json.dumps(r["attributes"], sort_keys=True)
    variants = VariantsTable.from_records(rows)
    tf = text_features(texts)
    featurizer = CopyFeaturizer.fit(emb, cfg.pca_dim)
    cand = _candidate_features(featurizer, emb, texts)
    slots = np.full((len(chosen), cfg.max_variants), -1, np.int64)
    vc = np.asarray(variant_campaign, np.int64)
    start = 0
    for c, k in enumerate(n_cand.tolist()):
        slots[c, :k] = np.arange(start, start + k)
        start += k
    return Catalog(
        config=cfg,
        products=tuple(chosen),
        variants=variants,
        variant_campaign=vc,
        embeddings=emb,
        text_feats=tf,
        candidate_feats=cand,
        slots=slots,
        n_candidates=n_cand,
        campaign_ids=[f"p{p.product_id}" for p in chosen],
        featurizer=featurizer,
    )


def _stratified(pool: Sequence[Product], n: int | None, rng: np.random.Generator) -> list[Product]:
    if n is None or n >= len(pool):
        return list(pool)
    by_cat = [[p for p in pool if p.category == k] for k in range(len(CATEGORIES))]
    by_cat = [b for b in by_cat if b]
    per = [n // len(by_cat) + (1 if i < n % len(by_cat) else 0) for i in range(len(by_cat))]
    out: list[Product] = []
    for items, m in zip(by_cat, per, strict=True):
        idx = rng.choice(len(items), size=min(m, len(items)), replace=False)
        out.extend(items[i] for i in sorted(idx.tolist()))
    return out


def _candidate_features(
    featurizer: CopyFeaturizer, emb: npt.NDArray[np.float32], texts: Sequence[str]
) -> npt.NDArray[np.float32]:
    """The featurizer's features of every variant, plus a zero padding row at the end."""
    feats = featurizer.transform(emb, texts)
    out = np.vstack([feats, np.zeros((1, feats.shape[1]), np.float32)])
    out.setflags(write=False)
    return out
