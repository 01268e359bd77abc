"""Readable text features of marketing copy: tone, urgency, call to action, value, benefits, length.

These are what the click world (and a human copywriter) reads off a line of copy. They are
deliberately simple lexicon rules so a user can see why the world prefers one variant: the text
embedding carries the rest.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from copyloop.envs.users import CATEGORIES, TONES

_WORD = re.compile(r"[a-z0-9%']+")

TONE_LEXICON: dict[str, tuple[str, ...]] = {
    "informative": (
        "features",
        "includes",
        "made of",
        "designed",
        "with",
        "inch",
        "size",
        "model",
        "compatible",
        "specs",
    ),
    "urgent": (
        "now",
        "today",
        "hurry",
        "limited",
        "last chance",
        "ends",
        "don't miss",
        "while stocks last",
        "only",
        "before",
    ),
    "friendly": (
        "you'll love",
        "your",
        "we",
        "enjoy",
        "love",
        "easy",
        "family",
        "friends",
        "everyday",
        "treat yourself",
    ),
    "premium": (
        "crafted",
        "premium",
        "luxury",
        "exquisite",
        "finest",
        "elegant",
        "timeless",
        "signature",
        "refined",
        "craftsmanship",
    ),
    "playful": (
        "wow",
        "fun",
        "oh",
        "yay",
        "ready to",
        "level up",
        "just dropped",
        "hello",
        "obsessed",
        "happy dance",
    ),
}

URGENCY_WORDS: tuple[str, ...] = (
    "now",
    "today",
    "hurry",
    "limited",
    "last chance",
    "ends",
    "don't miss",
    "while stocks last",
    "tonight",
    "before",
)
CTA_PHRASES: tuple[str, ...] = (
    "shop",
    "buy",
    "order",
    "get yours",
    "discover",
    "try",
    "grab",
    "explore",
    "add to cart",
    "claim",
    "see the",
)
VALUE_WORDS: tuple[str, ...] = (
    "save",
    "deal",
    "sale",
    "% off",
    "discount",
    "value",
    "affordable",
    "price",
    "free shipping",
    "bargain",
)

BENEFIT_LEXICON: dict[str, tuple[str, ...]] = {
    "lawn_garden_parts": (
        "fits",
        "compatible",
        "easy install",
        "reliable",
        "durable",
        "replacement",
        "starts",
        "power",
    ),
    "slip_on_footwear": (
        "comfort",
        "comfortable",
        "slip on",
        "slip-on",
        "easy on",
        "soft",
        "cushion",
        "all-day",
    ),
    "home_furnishings": (
        "eco-friendly",
        "timeless",
        "craftsmanship",
        "storage",
        "solid wood",
        "modern",
        "design",
        "home",
    ),
    "nutrition_supplements": (
        "energy",
        "immune",
        "daily",
        "natural",
        "wellness",
        "vitamin",
        "health",
        "potency",
    ),
    "android_devices": (
        "fast",
        "storage",
        "battery",
        "screen",
        "4g",
        "lte",
        "bluetooth",
        "portable",
    ),
    "womens_dresses": (
        "flattering",
        "versatile",
        "soft fabric",
        "elegant",
        "breathable",
        "every occasion",
        "inclusive",
        "style",
    ),
}

FEATURE_NAMES: tuple[str, ...] = (
    *(f"tone={t}" for t in TONES),
    "urgency",
    "cta",
    "value",
    *(f"benefit_{c}" for c in CATEGORIES),
    "length_words_over_20",
    "exclamation",
    "question",
)
"""Columns of :func:`text_features`."""

N_TEXT_FEATURES = len(FEATURE_NAMES)
TONE_SLICE = slice(0, len(TONES))
URGENCY_COL = len(TONES)
CTA_COL = URGENCY_COL + 1
VALUE_COL = CTA_COL + 1
BENEFIT_SLICE = slice(VALUE_COL + 1, VALUE_COL + 1 + len(CATEGORIES))
LENGTH_COL = BENEFIT_SLICE.stop


def _hits(text: str, words: str, phrases: Sequence[str]) -> int:
    """Occurrences of lexicon entries (single words match whole words, phrases substrings)."""
    tokens = words
    n = 0
    for p in phrases:
        if " " in p or "%" in p or "-" in p:
            n += text.count(p)
        else:
            n += len(re.findall(rf"(?<![a-z0-9']){re.escape(p)}(?![a-z0-9'])", tokens))
    return n


def tone_of(text: str) -> int:
    """Index into :data:`TONES` of the text's dominant tone (ties favour the earlier tone;
    no cue at all means "informative")."""
    low = text.lower()
    scores = [_hits(low, low, TONE_LEXICON[t]) for t in TONES]
    if "!" in text:
        scores[TONES.index("playful")] += text.count("!") // 2
    best = int(np.argmax(scores))
    return best if scores[best] > 0 else TONES.index("informative")


def word_count(text: str) -> int:
    return len(_WORD.findall(text.lower()))


def text_features(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Readable features of each text, shape ``(n, N_TEXT_FEATURES)`` (see :data:`FEATURE_NAMES`).

    Example:
        >>> f = text_features(["Hurry, limited stock: shop now!"])
        >>> float(f[0, FEATURE_NAMES.index("cta")]), f[0, FEATURE_NAMES.index("urgency")] > 0
        (1.0, np.True_)
    """
    out = np.zeros((len(texts), N_TEXT_FEATURES), np.float32)
    for i, text in enumerate(texts):
        low = text.lower()
        out[i, tone_of(text)] = 1.0
        out[i, URGENCY_COL] = min(_hits(low, low, URGENCY_WORDS) / 2.0, 1.0)
        out[i, CTA_COL] = 1.0 if _hits(low, low, CTA_PHRASES) else 0.0
        out[i, VALUE_COL] = min(_hits(low, low, VALUE_WORDS) / 2.0, 1.0)
        for j, cat in enumerate(CATEGORIES):
            out[i, BENEFIT_SLICE.start + j] = min(_hits(low, low, BENEFIT_LEXICON[cat]) / 2.0, 1.0)
        out[i, LENGTH_COL] = word_count(text) / 20.0
        out[i, LENGTH_COL + 1] = 1.0 if "!" in text else 0.0
        out[i, LENGTH_COL + 2] = 1.0 if "?" in text else 0.0
    return out


# ---- reading copy against its product (click world v2) ------------------------------------------
# World v2 reads what a reader reads: is the line about this product, are its claims backed by
# the product's own page, is it clear. Everything here is a pure function of (copy, product),
# computed once per catalog variant and once per judged line; the world turns it into a logit.

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_RAW_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def stem(word: str) -> str:
    """A light suffix strip so "shoes"/"shoe", "batteries"/"battery" and "dresses"/"dress"
    meet (no dictionary: words that differ in more than that stay different)."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("sses"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS: frozenset[str] = _words(
    """a about above after again all also am an and any are as at be been before being below
    between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it it's its
    itself just let me more my myself no nor not of off on once only or other our ours ourselves
    out over own same she should so some such than that that's the their theirs them themselves
    then there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you you'll you're your yours yourself
    yourselves one every each"""
)
"""Function words: no content of their own (they make a line a sentence, not a keyword list)."""

GLUE_WORDS: frozenset[str] = _words(
    """shop buy order get discover try grab explore add cart claim see meet new now today
    yours love enjoy made make makes ready treat look looking great good quality value save
    deal price sale offer shipping free off stock limited hurry last chance ends miss while
    before tonight everyday day days style styles design designed crafted refined timeless
    premium luxury elegant fun wow oh hello just dropped level feature features includes
    include size model fit fits perfect details detail here available collection brand pick
    picks favorite favourite want need like right way well time first home family friends easy
    set full comfort comfortable upgrade"""
)
"""Generic marketing words a line may use about any product: neither grounded nor ungrounded
(the single words of the tone, urgency, call-to-action and value lexicons are added below)."""

_GLUE_STEMS: frozenset[str] = frozenset(
    stem(w)
    for w in (
        *GLUE_WORDS,
        *(p for ps in TONE_LEXICON.values() for p in ps),
        *URGENCY_WORDS,
        *CTA_PHRASES,
        *VALUE_WORDS,
    )
    if w.replace("'", "").isalpha()
)

CLAIM_TERMS: dict[str, tuple[str, ...]] = {
    "superlative": (
        "best",
        "#1",
        "number one",
        "no. 1",
        "ultimate",
        "unbeatable",
        "unmatched",
        "unrivaled",
        "world's",
        "greatest",
        "revolutionary",
        "miracle",
        "magic",
        "incredible",
        "amazing",
        "lowest price",
        "cheapest",
        "top-rated",
        "top rated",
        "award-winning",
        "exceptional",
        "life-changing",
        "flawless",
    ),
    "health": (
        "cure",
        "cures",
        "heal",
        "heals",
        "healing",
        "anxiety",
        "depression",
        "weight loss",
        "lose weight",
        "burn fat",
        "fat burning",
        "detox",
        "doctor",
        "doctors",
        "clinically",
        "clinical",
        "proven",
        "fda",
        "disease",
        "diabetes",
        "cancer",
        "prescription",
        "medical",
        "anti-aging",
        "immunity",
    ),
    "guarantee": (
        "guaranteed",
        "guarantee",
        "risk-free",
        "risk free",
        "money back",
        "money-back",
        "100%",
        "lifetime warranty",
        "certified",
        "approved",
        "official",
        "award",
    ),
}
"""Claims a reader discounts (and a regulator flags) unless the product's own text makes them."""

SPAM_TERMS: tuple[str, ...] = (
    "click here",
    "click now",
    "act now",
    "call now",
    "buy buy",
    "$$",
    "winner",
    "you won",
    "congratulations",
    "once in a lifetime",
    "limited time only",
    "100% free",
    "no cost",
    "don't wait",
    "urgent",
    "xxx",
    "!!",
)
"""Marks of spam: a reader scrolls past (and filters catch) a line that shouts these."""

_PERSON = (
    r"(?:shoppers?|buyers?|customers?|consumers?|audiences?|demographics?|enthusiasts?|"
    r"seekers?|hunters?|lovers?|fans?|people|parents?|moms?|dads?|families|women|men|folks|"
    r"professionals|millennials|boomers|readers|users|individuals|everyone|anyone|those)"
)
AUDIENCE_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(
        r"\b(?:premium|bargain|budget|value|savvy|busy|discerning|tech|wellness|health|"
        r"style|fashion|smart|modern|active|conscious|quality)[- ]?(?:minded |conscious |"
        r"savvy |focused )?" + _PERSON + r"\b"
    ),
    re.compile(r"\b" + _PERSON + r" (?:who|that|like you)\b"),
    re.compile(
        r"\b(?:who|that) (?:value|values|love|loves|want|wants|need|needs|appreciate|"
        r"appreciates|care|cares|demand|demands|seek|seeks|prefer|prefers|deserve|deserves)\b"
    ),
    re.compile(r"\b(?:if you're|if you are|you're|you are|as) an? (?:\w+ ){0,2}" + _PERSON),
    re.compile(r"\b(?:shoppers?|buyers?|audiences?|demographics?|segments?)\b"),
)
"""Descriptions of the audience ("For premium shoppers who value quality…"): copy that talks
about its reader instead of the product."""

READING_NAMES: tuple[str, ...] = (
    "words",
    "title_hits",
    "detail_hits",
    "ungrounded",
    "unsupported_claims",
    "audience",
    "spam",
    "list_run",
    "keyword_run",
    "hype",
    "repetition",
    "caps",
    "exclamations",
    "unknown",
    "codes",
    "function_share",
    "cta",
)
"""Columns of :func:`read_copy`."""

READ = {name: i for i, name in enumerate(READING_NAMES)}
"""Column index of each reading by name."""


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """Whole-word entries of MiniLM's WordPiece vocabulary (~22,500 lowercase words): the
    world's dictionary for telling words from gibberish."""
    from copyloop.envs.embed import minilm_path

    with open(minilm_path() / "vocab.txt", encoding="utf-8") as f:
        return frozenset(w for w in (line.strip() for line in f) if w.isalpha() and len(w) > 1)


@dataclass(frozen=True)
class ProductFacts:
    """What a product's own page says, in the form :func:`read_copy` checks copy against.

    Attributes:
        text: title, description, brand and category, lowercased (claims are looked up in it).
        title_stems: stems of the content words of the title, brand and category name.
        detail_stems: stems of the description's content words that are not in the title.
        acronyms: what the product's page writes in capitals and is not plain English —
            codes, names, short acronyms ("BM18067", "USB", "LED") — which copy may write in
            capitals too (a page in capitals does not license shouting).

    Example:
        >>> f = ProductFacts.of("Trail Runner Shoe", "Cushioned sole for all-day comfort.")
        >>> sorted(f.detail_stems)
        ['comfort', 'cushioned', 'day', 'sole']
    """

    text: str
    title_stems: frozenset[str]
    detail_stems: frozenset[str]
    acronyms: frozenset[str]

    @classmethod
    def of(
        cls, title: str, description: str = "", brand: str = "", category: str = ""
    ) -> ProductFacts:
        head = f"{title} {brand} {category.replace('_', ' ')}"
        title_stems = frozenset(stem(t) for t in _TOKEN.findall(head.lower()))
        body = description
        detail = frozenset(stem(t) for t in _TOKEN.findall(body.lower()) if t not in STOPWORDS)
        raw = f"{head} {description}"
        vocab = english_words()
        acronyms = frozenset(
            low
            for t in _RAW_TOKEN.findall(raw)
            if len(t) >= 2 and t.isupper()
            for low in [t.lower()]
            if any(ch.isdigit() for ch in t)
            or low not in vocab
            or (len(t) <= 3 and low not in STOPWORDS)
        )
        return cls(
            text=f"{title} {description} {brand} {category.replace('_', ' ')}".lower(),
            title_stems=title_stems - STOPWORDS,
            detail_stems=detail - title_stems - STOPWORDS,
            acronyms=acronyms,
        )


def _count_terms(low: str, terms: Sequence[str]) -> list[str]:
    """The entries of ``terms`` found in ``low`` (whole words; phrases and symbols as substrings),
    once per occurrence."""
    found: list[str] = []
    for p in terms:
        if p.isalpha():
            n = len(re.findall(rf"(?<![a-z0-9']){re.escape(p)}(?![a-z0-9'])", low))
        else:
            n = low.count(p)
        found.extend([p] * n)
    return found


def _list_run(text: str) -> int:
    """Longest run of consecutive one- or two-word items between commas, semicolons, colons,
    slashes or bullets: "premium, sustainable, high end, eco-friendly" is a run of 4."""
    best = run = 0
    for part in re.split(r"[,;:/|•·]+|\s-\s|\band\b", text.lower()):
        n = len(_TOKEN.findall(part))
        if n == 0:
            continue
        run = run + 1 if n <= 2 else 0
        best = max(best, run)
    return best


def _keyword_run(low: str, known: frozenset[str]) -> int:
    """Longest run of consecutive content words, none of them the product's own, with no
    function word or punctuation between them: "sale deal discount cheap buy online" is 6."""
    best = 0
    for part in re.split(r"[,.;:!?()\[\]/|•·-]+", low):
        run = 0
        for t in _TOKEN.findall(part):
            generic = t not in STOPWORDS and stem(t) not in known
            run = run + 1 if generic else 0
            best = max(best, run)
    return best


def _repetition(content: Sequence[str]) -> float:
    """Share of content words that repeat an earlier one, or of repeated word pairs, whichever
    is larger (0 for lines of fewer than three content words)."""
    if len(content) < 3:
        return 0.0
    words = 1.0 - len(set(content)) / len(content)
    pairs = list(itertools.pairwise(content))
    return max(words, 1.0 - len(set(pairs)) / len(pairs))


def read_copy(
    texts: Sequence[str], facts: ProductFacts | Sequence[ProductFacts]
) -> npt.NDArray[np.float32]:
    """Read each line of copy against its product, shape ``(n, len(READING_NAMES))``.

    Columns (see :data:`READING_NAMES`): word count; distinct content words from the product's
    title (naming it) and from its description (specific benefits it has); distinct content
    words from neither (nor generic marketing words, :data:`GLUE_WORDS`); claims
    (:data:`CLAIM_TERMS`) the product's text does not make; audience descriptions
    (:data:`AUDIENCE_PATTERNS`); spam marks (:data:`SPAM_TERMS`); the longest comma-separated
    run of one- or two-word items; the longest run of content words that are not the
    product's, unbroken by function words or punctuation (a keyword string); urgency, value
    and call-to-action hits (hype); repetition share; share of words in capitals the product
    does not write so; number of "!"; share of words that are neither English
    (:func:`english_words`) nor the product's own; share of words with digits; share of
    function words; a call to action (0/1).

    Args:
        texts: the lines.
        facts: the product of every line (one for all, or one per line).

    Example:
        >>> f = ProductFacts.of("Trail Runner Shoe", "Cushioned sole for all-day comfort.")
        >>> r = read_copy(["Trail Runner Shoe: cures anxiety, guaranteed!"], f)
        >>> int(r[0, READ["unsupported_claims"]]), int(r[0, READ["title_hits"]])
        (3, 3)
    """
    per = [facts] * len(texts) if isinstance(facts, ProductFacts) else list(facts)
    if len(per) != len(texts):
        raise ValueError(
            f"`facts` must be one ProductFacts or one per text; got {len(per)} for "
            f"{len(texts)} texts"
        )
    vocab = english_words()
    out = np.zeros((len(texts), len(READING_NAMES)), np.float32)
    for i, (text, f) in enumerate(zip(texts, per, strict=True)):
        low = text.lower()
        tokens = _TOKEN.findall(low)
        content = [stem(t) for t in tokens if t not in STOPWORDS]
        distinct = set(content)
        known = f.title_stems | f.detail_stems
        alpha = [t for t in tokens if t.isalpha() and len(t) >= 3]
        raw_words = [t for t in _RAW_TOKEN.findall(text) if sum(ch.isalpha() for ch in t) >= 2]
        shouted = [t for t in raw_words if t.isupper() and t.lower() not in f.acronyms]
        claims = [
            c
            for terms in CLAIM_TERMS.values()
            for c in _count_terms(low, terms)
            if not _count_terms(f.text, [c])
        ]
        row = out[i]
        row[READ["words"]] = len(tokens)
        row[READ["title_hits"]] = len(distinct & f.title_stems)
        row[READ["detail_hits"]] = len(distinct & f.detail_stems)
        row[READ["ungrounded"]] = len({w for w in distinct - known if w not in _GLUE_STEMS})
        row[READ["unsupported_claims"]] = len(claims)
        row[READ["audience"]] = sum(len(p.findall(low)) for p in AUDIENCE_PATTERNS)
        row[READ["spam"]] = len(_count_terms(low, SPAM_TERMS))
        row[READ["list_run"]] = _list_run(text)
        row[READ["keyword_run"]] = _keyword_run(low, known)
        row[READ["hype"]] = sum(
            _hits(low, low, lex) for lex in (URGENCY_WORDS, VALUE_WORDS, CTA_PHRASES)
        )
        row[READ["repetition"]] = _repetition(content)
        row[READ["caps"]] = len(shouted) / len(raw_words) if raw_words else 0.0
        row[READ["exclamations"]] = text.count("!")
        unknown = [t for t in alpha if not {t, stem(t)} & vocab and stem(t) not in known]
        row[READ["unknown"]] = len(unknown) / len(alpha) if alpha else 0.0
        row[READ["codes"]] = sum(any(ch.isdigit() for ch in t) for t in tokens) / max(
            len(tokens), 1
        )
        row[READ["function_share"]] = (len(tokens) - len(content)) / max(len(tokens), 1)
        row[READ["cta"]] = 1.0 if _hits(low, low, CTA_PHRASES) else 0.0
    return out
