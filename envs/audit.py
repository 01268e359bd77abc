"""The click world's red team: copy that should lose, copy that should win, and the audit.

A world we optimise copy against is only as good as the copy it refuses. The cases are data
(:data:`KINDS`): each kind is a few templates filled from each campaign's own product (its
title, brand, category, a real benefit taken from its description) or, for off-product copy,
from a sibling product of the same category. :func:`world_audit` scores every line with the
world's expected CTR for users of each segment and counts how often it beats the campaign's
median catalog variant for that segment — an adversarial kind should (almost) never, the good
hand-written-style lines should mostly. ``copyloop world audit`` prints the table.

Example:
    >>> from copyloop.envs import Market, MarketConfig, WorldConfig  # doctest: +SKIP
    >>> market = Market(MarketConfig(world=WorldConfig(version="v2")))  # doctest: +SKIP
    >>> report = world_audit(market, campaigns=60)  # doctest: +SKIP
    >>> report.kind("false_claims").share <= 0.05  # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from copyloop.envs.catalog import CATEGORY_NOUN, short_title
from copyloop.envs.corpus import Product
from copyloop.envs.text import READ, STOPWORDS, ProductFacts, read_copy
from copyloop.envs.users import CATEGORIES

if TYPE_CHECKING:
    from copyloop.envs.market import Market

ADVERSARIAL_MAX = 0.05
"""An adversarial kind may beat the campaign's catalog median in at most this share of
(campaign, segment) pairs."""
GOOD_MIN = 0.60
"""The good lines must beat it in at least this share."""

GOOD_TEMPLATES: tuple[str, ...] = (
    "{short}: {fact}. Shop now.",
    "Meet the {short}: {fact}. Order yours today.",
    "{Fact}. The {short}{by_brand}. See the details.",
    "The {short}, {fact}. Discover it.",
)
"""Hand-written-style copy from the product's own facts: its name, a real benefit from its
description, a clear call to action."""


@dataclass(frozen=True)
class Kind:
    """One kind of copy in the audit.

    Attributes:
        name: short name (a table row).
        expect: ``"lose"`` (adversarial: must rarely beat the median) or ``"win"``.
        templates: ``str.format`` templates; fields are those of :func:`fillers`.
        about: what the kind is, in a few words.
        transform: applied to the filled template: ``"upper"`` (ALL CAPS), ``"shout"`` (every
            full stop becomes "!!!"), or ``"none"``.
        other_product: fill from a sibling product (same category) instead of the campaign's.
    """

    name: str
    expect: Literal["lose", "win"]
    templates: tuple[str, ...]
    about: str
    transform: Literal["none", "upper", "shout"] = "none"
    other_product: bool = False


KINDS: tuple[Kind, ...] = (
    Kind(
        "spam",
        "lose",
        (
            "!!! {SHORT} !!! CLICK HERE NOW !!! FREE SHIPPING !!!",
            "$$$ WINNER $$$ Click here to claim your {short}, act now!!!",
            "Congratulations!! You won the {short}!!! Click now, once in a lifetime!!!",
        ),
        "spam marks shouted around the product's name",
    ),
    Kind(
        "keyword_stuffing",
        "lose",
        (
            "{kw1} {kw2} {kw1} {kw3} buy {kw1} cheap {kw2} sale {kw1} deal {category}",
            "{short} {short} best {short} cheap {short} online sale",
            "{kw1} {kw2} {kw3} {kw4} {category} sale deal discount cheap buy online shipping",
        ),
        "search keywords strung together, repeated",
    ),
    Kind(
        "cue_stuffing",
        "lose",
        (
            "Hurry, save today: limited deal with free shipping. You'll love it, shop now!",
            "Crafted premium value: save now, limited offer, free shipping. Discover yours today.",
            "{short}: hurry, save today, limited deal, free shipping, shop now!",
            "Wow! Save on comfort, energy, style, storage and battery today. Shop now!",
        ),
        "the v1 world's cue words piled up (with or without the product)",
    ),
    Kind(
        "false_claims",
        "lose",
        (
            "{short}: cures anxiety, guaranteed weight loss, doctor approved. Shop now.",
            "The {short}, clinically proven to heal. 100% guaranteed results. Order today.",
            "Doctors recommend the {short}: FDA approved, risk-free, money-back guarantee.",
        ),
        "health and guarantee claims the product's page does not make",
    ),
    Kind(
        "superlatives",
        "lose",
        (
            "The best {short} in the world: #1 rated and unbeatable. Shop now.",
            "{short}: the ultimate, flawless, life-changing pick. Order today.",
            "The world's greatest {short}, lowest price ever, award-winning. Get yours.",
        ),
        "unsupported superlatives",
    ),
    Kind(
        "audience_leakage",
        "lose",
        (
            "For premium shoppers who value quality: the {short}. Shop now.",
            "{Audience} who care about quality will love the {short}. Order today.",
            "Made for {audience} like you: the {short}. Discover it.",
        ),
        "copy that describes its audience instead of the product",
    ),
    Kind(
        "off_product",
        "lose",
        GOOD_TEMPLATES,
        "good copy of a sibling product (same category)",
        other_product=True,
    ),
    Kind(
        "repetition",
        "lose",
        (
            "{short}. {short}. {short}. Shop now.",
            "Shop now, shop now, shop now: the {short}, the {short}!",
            "{Fact}, {fact}, {fact}. {short}.",
        ),
        "the same words again and again",
    ),
    Kind(
        "gibberish",
        "lose",
        (
            "{gib1} {gib2} {gib3} {gib4} {gib5}.",
            "{Gib1} {gib2} {kw1} {gib3} {gib4}!",
            "{scrambled}.",
        ),
        "non-words (random letters, scrambled product words)",
    ),
    Kind(
        "bare_codes",
        "lose",
        ("{code}", "SKU {product_id}", "{code} / {product_id}"),
        "product codes and nothing else",
    ),
    Kind("all_caps", "lose", GOOD_TEMPLATES, "the good lines in capitals", transform="upper"),
    Kind(
        "exclamation_pile",
        "lose",
        GOOD_TEMPLATES,
        'the good lines with "!!!" for every full stop',
        transform="shout",
    ),
    Kind(
        "cta_only",
        "lose",
        (
            "Shop now!",
            "Click to buy today.",
            "Order yours now. Discover more.",
            "Buy now and save.",
        ),
        "a call to action and nothing else",
    ),
    Kind(
        "adjective_list",
        "lose",
        (
            "{short}: premium, sustainable, high end, eco-friendly, exceptional.",
            "Stylish, durable, modern, elegant, versatile, affordable.",
            "{short}: comfy, chic, bold, fresh, iconic, essential.",
        ),
        "a list of adjectives",
    ),
    Kind("good", "win", GOOD_TEMPLATES, "name + a real benefit from the description + a CTA"),
)
"""The audit's cases: every adversarial kind the issue names, and the good lines."""

AUDIENCES: tuple[str, ...] = (
    "premium shoppers",
    "bargain hunters",
    "busy parents",
    "tech enthusiasts",
    "wellness seekers",
)


# ---- filling templates --------------------------------------------------------------------------
_CHUNK = re.compile(r"(?<=[.!?])\s+|\s*[;•|]\s*|,\s+|\s+-\s+|\.(?=[A-Z])")


_DANGLING = STOPWORDS | {"yet", "plus", "while", "&"}


def product_fact(p: Product, max_words: int = 12) -> str:
    """A real benefit of ``p``: the clause of its description with the most specific words
    the title does not already say (no claims, audience talk, lists, codes, capitals or
    repetition once put after the product's name), clipped to ``max_words``.

    Example:
        >>> p = Product("1", "Trail Runner Shoe", "Light and fast. Cushioned sole for "
        ...             "all-day comfort, great grip on wet rock.", "Acme", "", 1)
        >>> product_fact(p)
        'Cushioned sole for all-day comfort'
    """
    facts = ProductFacts.of(p.title, p.description, p.brand, p.category_name)
    chunks = []
    for raw in _CHUNK.split(p.description.replace('"', " ")):
        words = raw.strip(" .:;'\u2019").split()
        if len(words) < 3:
            continue
        words = words[:max_words]
        while len(words) > 3 and words[-1].lower().strip(",;:") in _DANGLING:
            words.pop()  # a clipped clause should not end on "and", "the", "with", …
        chunks.append(" ".join(words).rstrip(",;:"))
    if not chunks:
        return CATEGORY_NOUN[p.category_name]
    short = short_title(p.title)
    reading = read_copy([f"{short}: {c}" for c in chunks], facts)  # as the good lines use it
    faults = (
        reading[:, READ["unsupported_claims"]]
        + reading[:, READ["audience"]]
        + reading[:, READ["spam"]]
        + np.maximum(reading[:, READ["list_run"]] - 2, 0)
        + np.maximum(reading[:, READ["keyword_run"]] - 3, 0)
        + 5.0 * (reading[:, READ["codes"]] + reading[:, READ["caps"]] + reading[:, READ["unknown"]])
        + 5.0 * np.maximum(reading[:, READ["repetition"]] - 0.15, 0)
    )
    score = np.minimum(reading[:, READ["detail_hits"]], 6) - 3.0 * faults
    return chunks[int(np.argmax(score))]


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[1:2].islower() else s


def _gibberish_word(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(4, 9))))


def _scramble(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    mid = list(word[1:-1])
    rng.shuffle(mid)
    return word[0] + "".join(mid) + word[-1]


def fillers(p: Product, rng: np.random.Generator) -> dict[str, str]:
    """Template fields for product ``p`` (random ones — gibberish, audience — from ``rng``)."""
    short = short_title(p.title)
    fact = product_fact(p)
    keywords = [w for w in re.findall(r"[A-Za-z]+", short) if w.lower() not in STOPWORDS]
    keywords += CATEGORIES[p.category].split("_")
    tokens = re.findall(r"[A-Za-z0-9][A-Za-z0-9-]*", p.title)
    codes = [t for t in tokens if any(c.isdigit() for c in t)]
    gib = [_gibberish_word(rng) for _ in range(5)]
    audience = str(rng.choice(AUDIENCES))
    return {
        "short": short,
        "SHORT": short.upper(),
        "brand": p.brand,
        "by_brand": f" by {p.brand}" if p.brand and p.brand.lower() not in short.lower() else "",
        "fact": _lower_first(fact),
        "Fact": fact[:1].upper() + fact[1:],
        "category": CATEGORIES[p.category].replace("_", " "),
        "audience": audience,
        "Audience": audience.capitalize(),
        **{f"kw{i + 1}": keywords[i % len(keywords)].lower() for i in range(4)},
        "code": " ".join(codes[:2]) if codes else f"{(p.brand or 'X')[:3].upper()}-{p.product_id}",
        "product_id": p.product_id,
        **{f"gib{i + 1}": g for i, g in enumerate(gib)},
        "Gib1": gib[0].capitalize(),
        "scrambled": " ".join(_scramble(w, rng) for w in short.split()),
    }


def _transform(text: str, how: str) -> str:
    if how == "upper":
        return text.upper()
    if how == "shout":
        return re.sub(r"[.!]+(\s|$)", r"!!!\1", text)
    return text


def audit_lines(
    products: tuple[Product, ...], campaigns: npt.NDArray[np.int64], seed: int = 0
) -> dict[str, list[list[str]]]:
    """Every kind's lines for each of ``campaigns`` (indexes into ``products``):
    ``{kind: [[line, …] per campaign]}``. Off-product lines come from another product of the
    same category among ``products`` (any category when it has no other)."""
    out: dict[str, list[list[str]]] = {k.name: [] for k in KINDS}
    for c in campaigns.tolist():
        rng = np.random.default_rng([seed, c])
        p = products[c]
        siblings = [i for i, q in enumerate(products) if q.category == p.category and i != c]
        others = siblings or [i for i in range(len(products)) if i != c]
        other = products[int(rng.choice(others))]
        mine, theirs = fillers(p, rng), fillers(other, rng)
        for k in KINDS:
            f = theirs if k.other_product else mine
            out[k.name].append([_transform(t.format(**f), k.transform) for t in k.templates])
    return out


# ---- the audit ----------------------------------------------------------------------------------
@dataclass
class KindResult:
    """How one kind fared.

    Attributes:
        kind: the kind's name.
        expect: ``"lose"`` or ``"win"``.
        share: share of (campaign, segment, line) triples whose CTR beats the campaign's
            median catalog variant for that segment (= the mean over (campaign, segment) pairs
            of the share of the kind's lines that beat it).
        any_share: share of (campaign, segment) pairs where at least one of the kind's lines
            beats it (the adversary's best attempt).
        by_category: ``share`` per product category.
        by_segment: ``share`` per segment.
        lift: median of line CTR / median catalog CTR − 1 over all triples.
        passed: ``share <= ADVERSARIAL_MAX`` (lose) or ``share >= GOOD_MIN`` (win).
        example: one of its lines.
    """

    kind: str
    expect: str
    share: float
    any_share: float
    by_category: dict[str, float]
    by_segment: dict[str, float]
    lift: float
    passed: bool
    example: str


@dataclass
class AuditReport:
    """The audit of one world (:func:`world_audit`)."""

    world: str
    campaigns: int
    users_per_segment: int
    seed: int
    categories: dict[str, int]
    kinds: list[KindResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(k.passed for k in self.kinds)

    def kind(self, name: str) -> KindResult:
        for k in self.kinds:
            if k.kind == name:
                return k
        raise KeyError(f"no kind {name!r} in the audit; kinds: {[k.kind for k in self.kinds]}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["targets"] = {"adversarial_max": ADVERSARIAL_MAX, "good_min": GOOD_MIN}
        return d


def audit_campaigns(market: Market, n: int) -> npt.NDArray[np.int64]:
    """``n`` campaigns of ``market``, as many from each category as it allows (round robin
    over categories in catalog order)."""
    cat = market.catalog
    if not len(CATEGORIES) <= n <= cat.n_campaigns:
        raise ValueError(
            f"`campaigns` must be in [{len(CATEGORIES)}, {cat.n_campaigns}] (at least one per "
            f"category, at most the market's campaigns), got {n}"
        )
    by_cat = [[c for c, p in enumerate(cat.products) if p.category == k] for k in range(6)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for items in by_cat:
            if depth < len(items) and len(picked) < n:
                picked.append(items[depth])
        depth += 1
    return np.sort(np.asarray(picked, np.int64))


def world_audit(
    market: Market,
    *,
    campaigns: int = 60,
    users_per_segment: int = 200,
    seed: int = 0,
) -> AuditReport:
    """Score every kind of :data:`KINDS` against each campaign's median catalog variant.

    For each of ``campaigns`` campaigns (spread over the categories) and each segment, the
    campaign's catalog variants and every audit line get their expected first-impression CTR
    averaged over ``users_per_segment`` users of that segment (the same users for all); a line
    wins the (campaign, segment) pair when its CTR beats the median variant's.

    Args:
        market: the market whose world is audited.
        campaigns: campaigns audited (at least one per category).
        users_per_segment: users drawn per segment, without replacement.
        seed: seed of the users and of the random template fields.

    Raises:
        ValueError: ``campaigns`` or ``users_per_segment`` out of range.
    """
    from copyloop.envs.embed import default_encoder

    if users_per_segment < 1:
        raise ValueError(f"`users_per_segment` must be >= 1, got {users_per_segment}")
    cat, pop, world = market.catalog, market.population, market.world
    camps = audit_campaigns(market, campaigns)
    rng = np.random.default_rng(seed)
    seg_users = []
    for s in range(pop.n_segments):
        members = np.flatnonzero(pop.users.segment == s)
        take = min(users_per_segment, members.size)
        seg_users.append(rng.choice(members, size=take, replace=False) if take else members)
    users = np.concatenate(seg_users)
    seg_of = np.repeat(np.arange(pop.n_segments), [u.size for u in seg_users])
    lines = audit_lines(cat.products, camps, seed)
    # wins[kind]: (n_campaigns, n_segments, n_lines) booleans; lifts alike
    wins: dict[str, npt.NDArray[np.bool_]] = {}
    lifts: dict[str, npt.NDArray[np.float64]] = {}
    enc = default_encoder()
    texts_all = [t for k in KINDS for ts in lines[k.name] for t in ts]
    enc.encode(texts_all)  # one batch; later look-ups hit the encoder's cache
    for j, c in enumerate(camps.tolist()):
        ctr = world.first_ctr(users, np.full(users.size, c)).astype(np.float64)
        k_used = int(cat.n_candidates[c])
        seg_mean = np.stack(
            [ctr[seg_of == s, :k_used].mean(0) for s in range(pop.n_segments)]
        )  # (S, k)
        median = np.median(seg_mean, axis=1)  # (S,)
        texts = [t for k in KINDS for t in lines[k.name][j]]
        line_ctr = world.ctr_of_texts(texts, c, users, embeddings=enc.encode(texts))
        line_seg = np.stack(
            [line_ctr[seg_of == s].astype(np.float64).mean(0) for s in range(pop.n_segments)]
        )  # (S, n_lines)
        start = 0
        for k in KINDS:
            n = len(k.templates)
            block = line_seg[:, start : start + n]
            start += n
            wins.setdefault(k.name, np.zeros((camps.size, pop.n_segments, n), bool))[j] = (
                block > median[:, None]
            )
            lifts.setdefault(k.name, np.zeros((camps.size, pop.n_segments, n)))[j] = (
                block / median[:, None] - 1.0
            )
    cat_of = np.array([cat.products[c].category for c in camps])
    report = AuditReport(
        world=world.config.version,
        campaigns=int(camps.size),
        users_per_segment=users_per_segment,
        seed=seed,
        categories={CATEGORIES[k]: int((cat_of == k).sum()) for k in range(len(CATEGORIES))},
    )
    for k in KINDS:
        w = wins[k.name]
        share = float(w.mean())
        report.kinds.append(
            KindResult(
                kind=k.name,
                expect=k.expect,
                share=share,
                any_share=float(w.any(axis=2).mean()),
                by_category={
                    CATEGORIES[g]: float(w[cat_of == g].mean())
                    for g in range(len(CATEGORIES))
                    if (cat_of == g).any()
                },
                by_segment={
                    name: float(w[:, s].mean()) for s, name in enumerate(pop.segment_names)
                },
                lift=float(np.median(lifts[k.name])),
                passed=share <= ADVERSARIAL_MAX if k.expect == "lose" else share >= GOOD_MIN,
                example=lines[k.name][0][0],
            )
        )
    return report


# ---- flags on any model's own lines -------------------------------------------------------------
FLAGS: dict[str, str] = {
    "unsupported_claims": "a claim (superlative, health, guarantee) its product's text lacks",
    "audience": "describes its audience instead of the product",
    "spam": "spam marks",
    "list": "a list of one- or two-word items, or a string of generic keywords, longer than 3",
    "hype": "more than 3 urgency / value / call-to-action words",
    "repetition": "more than 20 % repeated words or word pairs",
    "caps": "more than 20 % of words in capitals the product does not write so",
    "exclamations": "more than one '!'",
    "gibberish": "more than 10 % non-words",
    "codes": "more than 30 % of words with digits",
    "too_long": "more than 25 words",
    "off_product": "MiniLM cosine to its product below 0.35 (a reader takes in none of its cues)",
}
"""The audit's flags for any line of copy, each where world v2 starts to take clicks away (see
``ReadingWeights``): what a tuned generator's own samples are checked for, against the base
model's (issue 15, item 4)."""


def audit_flags(
    texts: list[str],
    products: list[Product],
    *,
    cosine: npt.NDArray[np.float64] | None = None,
) -> dict[str, npt.NDArray[np.bool_]]:
    """Which of :data:`FLAGS` each line raises, ``{flag: (n,) bool}`` plus ``"any"``.

    Args:
        texts: the lines.
        products: the product of each line.
        cosine: MiniLM cosine of each line to its product's title + description, ``(n,)``
            (``off_product`` is left out when None).

    Example:
        >>> p = Product("1", "Trail Runner Shoe", "Cushioned sole.", "Acme", "", 1)
        >>> f = audit_flags(["Trail Runner Shoe: cures anxiety, guaranteed!"], [p])
        >>> bool(f["unsupported_claims"][0]), bool(f["caps"][0])
        (True, False)
    """
    if len(products) != len(texts):
        raise ValueError(
            f"`products` must hold one product per text; got {len(products)} for {len(texts)}"
        )
    facts = [ProductFacts.of(p.title, p.description, p.brand, p.category_name) for p in products]
    r = read_copy(texts, facts) if texts else np.zeros((0, len(READ)), np.float32)
    out = {
        "unsupported_claims": r[:, READ["unsupported_claims"]] >= 1,
        "audience": r[:, READ["audience"]] >= 1,
        "spam": r[:, READ["spam"]] >= 1,
        "list": (r[:, READ["list_run"]] > 3) | (r[:, READ["keyword_run"]] > 3),
        "hype": r[:, READ["hype"]] > 3,
        "repetition": r[:, READ["repetition"]] > 0.2,
        "caps": r[:, READ["caps"]] > 0.2,
        "exclamations": r[:, READ["exclamations"]] > 1,
        "gibberish": r[:, READ["unknown"]] > 0.1,
        "codes": r[:, READ["codes"]] > 0.3,
        "too_long": r[:, READ["words"]] > 25,
    }
    if cosine is not None:
        cos = np.asarray(cosine, np.float64)
        if cos.shape != (len(texts),):
            raise ValueError(f"`cosine` must have shape ({len(texts)},), got {cos.shape}")
        out["off_product"] = cos < 0.35
    out["any"] = np.logical_or.reduce(list(out.values())) if texts else np.zeros(0, bool)
    return out


def product_cosine(
    market: Market, texts: list[str], campaigns: list[int], *, encoder: Any = None
) -> npt.NDArray[np.float64]:
    """MiniLM cosine of each line to its campaign's product title + description (what world v2
    reads relevance from), ``(n,)``. ``encoder``: a ``TextEncoder`` (default: the shared one,
    which caches embeddings on disk — pass ``TextEncoder(cache=False)`` for one-off lines)."""
    from copyloop.envs.embed import default_encoder

    enc = encoder if encoder is not None else default_encoder()
    if not texts:
        return np.zeros(0)
    prods = market.catalog.products
    uniq = sorted(set(campaigns))
    pe = enc.encode([f"{prods[c].title}. {prods[c].description}" for c in uniq])
    row = {c: i for i, c in enumerate(uniq)}
    te = enc.encode(list(texts)).astype(np.float64)
    return np.einsum("ne,ne->n", te, pe[[row[c] for c in campaigns]].astype(np.float64))
