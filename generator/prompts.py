"""Chat prompts for conditioned copy generation.

A prompt carries what a copywriter would be told: the campaign's real product (title, brand,
description from the gembench corpus), who the copy is for (the target segment's profile: top
interests, price sensitivity, preferred tones) and style controls (tone, length, urgency, call to
action). It is rendered with the model's own chat template.

Example:
    >>> from copyloop.envs import MarketConfig, Market  # doctest: +SKIP
    >>> m = Market.get(MarketConfig())  # doctest: +SKIP
    >>> req = CopyRequest(campaign=3, segment=0, style=Style(tone="urgent"))  # doctest: +SKIP
    >>> print(build_messages(m.catalog.products[3], m.population.config.segments[0],
    ...                      req.style)[1]["content"])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from copyloop.envs.catalog import first_sentence, short_title
from copyloop.envs.corpus import Product
from copyloop.envs.users import CATEGORIES, TONES, SegmentSpec

SYSTEM_PROMPT = "You are an expert copywriter. Reply with one short, truthful ad line only."

TONE_GUIDE: dict[str, str] = {
    "informative": "clear, factual",
    "urgent": "urgent",
    "friendly": "warm, friendly",
    "premium": "refined, premium",
    "playful": "playful, fun",
}


@dataclass(frozen=True)
class Style:
    """Style controls of a copy request.

    Attributes:
        tone: one of :data:`copyloop.envs.users.TONES`, or None to use the segment's favourite.
        max_words: target length in words.
        urgency: ask for a reason to act now.
        cta: ask for a call to action ("Shop now", "Order today", ...).
    """

    tone: str | None = None
    max_words: int = 14
    urgency: bool = False
    cta: bool = True

    def __post_init__(self) -> None:
        if self.tone is not None and self.tone not in TONES:
            raise ValueError(f"`tone` must be one of {list(TONES)} or None, got {self.tone!r}")
        if not 3 <= self.max_words <= 60:
            raise ValueError(f"`max_words` must be in [3, 60], got {self.max_words}")


@dataclass(frozen=True)
class CopyRequest:
    """Copy for one campaign and target segment.

    Attributes:
        campaign: campaign index in the market's catalog.
        segment: segment index in the market's population.
        style: style controls.
    """

    campaign: int
    segment: int
    style: Style = field(default_factory=Style)


@dataclass(frozen=True)
class SegmentProfile:
    """What a copywriter is told about a segment (means of the segment's distributions)."""

    name: str
    interests: tuple[str, ...]
    price_sensitivity: float
    tones: tuple[str, ...]

    @classmethod
    def of(cls, spec: SegmentSpec) -> SegmentProfile:
        interest = np.asarray(spec.interests, float)
        tone = np.asarray(spec.tone_probs, float)
        a, b = spec.price_sensitivity
        top = [CATEGORIES[i] for i in np.argsort(-interest, kind="stable")[:2]]
        tones = [TONES[i] for i in np.argsort(-tone, kind="stable")[:2]]
        return cls(spec.name, tuple(top), a / (a + b), tuple(tones))

    def describe(self) -> str:
        price = (
            "loves a deal"
            if self.price_sensitivity > 0.6
            else "values quality over price"
            if self.price_sensitivity < 0.3
            else "somewhat price-conscious"
        )
        return (
            f"{self.name.replace('_', ' ')}s who like "
            f"{' and '.join(i.replace('_', ' ') for i in self.interests)}, {price}"
        )


def build_messages(product: Product, segment: SegmentSpec, style: Style) -> list[dict[str, str]]:
    """Chat messages asking for one ad line for ``product`` aimed at ``segment``."""
    prof = SegmentProfile.of(segment)
    tone = style.tone or prof.tones[0]
    name = short_title(product.title, 8)
    lines = [f"Product: {name}" + (f" by {product.brand}" if product.brand else "")]
    if product.description:
        lines.append(f"About: {first_sentence(product.description, 90)}")
    lines.append(f"Audience: {prof.describe()}.")
    asks = [f"Tone: {TONE_GUIDE[tone]}.", f"Max {style.max_words} words."]
    if style.urgency:
        asks.append("Say why to act now.")
    if style.cta:
        asks.append("End with a call to action.")
    asks.append("Name the product.")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines) + "\n" + " ".join(asks)},
    ]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text in the tokenizer's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
    return "\n\n".join(m["content"] for m in messages) + "\n\nAd:"
