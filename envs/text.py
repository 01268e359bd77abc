"""Readable text features of marketing copy: tone, urgency, call to action, value, benefits, length.

These are what the click world (and a human copywriter) reads off a line of copy. They are
deliberately simple lexicon rules so a user can see why the world prefers one variant: the text
embedding carries the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
