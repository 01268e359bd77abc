"""Post-filters for generated copy: clean-up, length limits, product-name presence, banned claims
and near-duplicate removal by embedding cosine similarity.

Every rejection carries a reason, so a run can report what was thrown away and why.

Example:
    >>> f = CopyFilter(FilterConfig(min_words=3, max_words=12))
    >>> f.check("Save on the Acme Mower Blade today!", names=("acme", "mower"))
    >>> f.check("Guaranteed to cure everything, Acme!", names=("acme",))
    'banned claim: guaranteed'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from copyloop.envs.catalog import short_title
from copyloop.envs.corpus import Product
from copyloop.envs.text import word_count

DEFAULT_BANNED: tuple[str, ...] = (
    "guaranteed",
    "guarantee",
    "risk-free",
    "risk free",
    "cure",
    "cures",
    "miracle",
    "clinically proven",
    "no side effects",
    "100% effective",
    "best in the world",
    "#1",
    "number one",
    "lose weight fast",
    "fda approved",
    "free money",
)
"""Claims ad policies commonly forbid or that need substantiation the corpus does not give."""

_STOP = frozenset(
    (
        *("the", "a", "an", "and", "or", "for", "of", "with", "to", "in", "on", "by", "at"),
        *("from", "new", "our", "your", "my", "this", "that", "set", "pack", "pcs"),
    )
)


@dataclass(frozen=True)
class FilterConfig:
    """What a generated line must satisfy.

    Attributes:
        min_words: fewest words.
        max_words: most words.
        max_chars: most characters.
        require_name: the line must name the product (its brand or a distinctive title word).
        banned: phrases (case-insensitive, whole words) the line must not contain.
        dedup_threshold: lines whose MiniLM cosine similarity to an earlier kept line of the same
            request is at least this are dropped as near-duplicates (1.0 = exact duplicates only).
    """

    min_words: int = 3
    max_words: int = 30
    max_chars: int = 200
    require_name: bool = True
    banned: tuple[str, ...] = DEFAULT_BANNED
    dedup_threshold: float = 0.95

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(
                f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}"
            )
        if self.max_chars < 1:
            raise ValueError(f"`max_chars` must be >= 1, got {self.max_chars}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError(f"`dedup_threshold` must be in (0, 1], got {self.dedup_threshold}")
        if isinstance(self.banned, str):
            raise TypeError("`banned` must be a tuple of phrases, not one string")


_PREFIX = re.compile(r"^\s*(?:ad(?: line| copy)?|headline|copy)\s*[:\-–]\s*", re.I)


def clean(text: str) -> str:
    """The ad line in a model's reply: its first non-empty line, without a leading "Ad:" label,
    surrounding quotes or markdown emphasis, whitespace collapsed."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line)
    line = line.strip().strip("*").strip()
    if len(line) >= 2 and line[0] in "\"'“”`" and line[-1] in "\"'“”`":
        line = line[1:-1]
    line = line.strip('"“”`').strip()
    return re.sub(r"\s+", " ", line)


def name_words(product: Product) -> tuple[str, ...]:
    """Words that name the product: its brand and the distinctive words of its short title."""
    words = [
        w
        for w in re.findall(r"[a-z0-9][a-z0-9'&\-]*", short_title(product.title, 5).lower())
        if len(w) >= 3 and w not in _STOP
    ]
    if product.brand:
        words.insert(0, product.brand.lower())
    return tuple(dict.fromkeys(words))


class CopyFilter:
    """Applies a :class:`FilterConfig` to generated lines.

    Args:
        config: the rules.
        embed: text -> unit-norm embeddings ``(n, e)`` for near-duplicate removal (default: the
            packaged MiniLM, memoised in memory); only called when ``dedup_threshold < 1``.
    """

    def __init__(
        self,
        config: FilterConfig | None = None,
        *,
        embed: Callable[[list[str]], npt.NDArray[np.float32]] | None = None,
    ) -> None:
        self.config = config or FilterConfig()
        self.embed = embed
        self._banned = [
            re.compile(rf"(?<![a-z0-9]){re.escape(b.lower())}(?![a-z0-9])")
            for b in self.config.banned
        ]

    def check(self, text: str, *, names: Sequence[str] = ()) -> str | None:
        """Why ``text`` (already cleaned) is rejected, or None when it passes the per-line rules."""
        cfg = self.config
        if not text:
            return "empty"
        n = word_count(text)
        if n < cfg.min_words:
            return f"too short: {n} words < {cfg.min_words}"
        if n > cfg.max_words:
            return f"too long: {n} words > {cfg.max_words}"
        if len(text) > cfg.max_chars:
            return f"too long: {len(text)} chars > {cfg.max_chars}"
        low = text.lower()
        for phrase, pat in zip(cfg.banned, self._banned, strict=True):
            if pat.search(low):
                return f"banned claim: {phrase}"
        if cfg.require_name and names and not any(w in low for w in names):
            return "does not name the product"
        return None

    def dedup(
        self, texts: Sequence[str], embeddings: npt.NDArray[np.float32] | None = None
    ) -> list[str | None]:
        """Near-duplicate reasons per text (None = kept): greedily keeps a text unless its cosine
        similarity to an already kept one reaches ``dedup_threshold``; exact repeats (ignoring
        case) always go."""
        out: list[str | None] = [None] * len(texts)
        seen: dict[str, int] = {}
        for i, t in enumerate(texts):
            key = t.lower()
            if key in seen:
                out[i] = f"duplicate of #{seen[key]}"
            else:
                seen[key] = i
        thr = self.config.dedup_threshold
        live = [i for i, r in enumerate(out) if r is None]
        if thr >= 1.0 or len(live) < 2:
            return out
        if embeddings is None:
            if self.embed is None:
                from copyloop.generator.reward import session_encoder

                self.embed = session_encoder().encode
            embeddings = self.embed([texts[i] for i in live])
        else:
            embeddings = embeddings[live]
        sims = np.asarray(embeddings, np.float64) @ np.asarray(embeddings, np.float64).T
        kept: list[int] = []
        for j, i in enumerate(live):
            if kept and sims[j, kept].max() >= thr:
                k = int(np.argmax(sims[j, kept]))
                out[i] = f"near-duplicate of #{live[kept[k]]} (cosine {sims[j, kept[k]]:.3f})"
            else:
                kept.append(j)
        return out

    def apply(
        self,
        texts: Sequence[str],
        *,
        names: Sequence[str] = (),
        embeddings: npt.NDArray[np.float32] | None = None,
    ) -> list[str | None]:
        """Per-line checks then near-duplicate removal among the lines that passed; the reason
        each text is rejected, or None for kept texts. ``embeddings`` ``(n, e)`` are optional
        precomputed unit-norm embeddings of ``texts``."""
        reasons = [self.check(t, names=names) for t in texts]
        ok = [i for i, r in enumerate(reasons) if r is None]
        dups = self.dedup([texts[i] for i in ok], None if embeddings is None else embeddings[ok])
        for i, d in zip(ok, dups, strict=True):
            reasons[i] = d
        return reasons


@dataclass
class FilterReport:
    """Counts of rejections by reason kind."""

    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, reasons: Sequence[str | None]) -> None:
        for r in reasons:
            if r is None:
                self.kept += 1
            else:
                kind = r.split(":")[0].split(" of #")[0]
                self.rejected[kind] = self.rejected.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return self.kept + sum(self.rejected.values())
