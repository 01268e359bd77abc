"""User profiles: a seeded, configurable population, or one imported from a table.

A population is a mixture of segments. Each segment sets the distribution of a user's interests
over the six product categories of the ad corpus, price sensitivity, preferred tone, device,
time of day and purchase history. Users are drawn as a struct of arrays (:class:`UserBatch`) so
the vector env can draw thousands at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

CATEGORIES: tuple[str, ...] = (
    "lawn_garden_parts",
    "slip_on_footwear",
    "home_furnishings",
    "nutrition_supplements",
    "android_devices",
    "womens_dresses",
)
"""Product categories: the six clusters of gembench's CA_Prod corpus, in cluster-id order."""

TONES: tuple[str, ...] = ("informative", "urgent", "friendly", "premium", "playful")
"""Copy tones a user may prefer and the click world recognises in text."""

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")


@dataclass(frozen=True)
class SegmentSpec:
    """One user segment.

    Attributes:
        name: segment name.
        weight: share of the population (weights are normalised).
        interests: Dirichlet concentration over :data:`CATEGORIES` (length 6).
        price_sensitivity: Beta(a, b) parameters; higher mean = more price driven.
        tone_probs: probabilities of each preferred tone in :data:`TONES`.
        device_probs: probabilities of each device in :data:`DEVICES`.
        peak_hour: hour of day around which the segment is active.
        purchases_per_year: mean purchases per year, spread over categories by interest.
    """

    name: str
    weight: float
    interests: tuple[float, ...]
    price_sensitivity: tuple[float, float]
    tone_probs: tuple[float, ...]
    device_probs: tuple[float, ...]
    peak_hour: float
    purchases_per_year: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("`name` must be a non-empty segment name")
        if not self.weight > 0:
            raise ValueError(f"segment {self.name!r}: `weight` must be > 0, got {self.weight}")
        for attr, n in (
            ("interests", len(CATEGORIES)),
            ("tone_probs", len(TONES)),
            ("device_probs", len(DEVICES)),
        ):
            v = np.asarray(getattr(self, attr), float)
            if v.shape != (n,) or np.any(v < 0) or not np.isfinite(v).all() or v.sum() <= 0:
                raise ValueError(
                    f"segment {self.name!r}: `{attr}` must be {n} non-negative numbers with a "
                    f"positive sum, got {getattr(self, attr)}"
                )
        a, b = self.price_sensitivity
        if not (a > 0 and b > 0):
            raise ValueError(
                f"segment {self.name!r}: `price_sensitivity` must be Beta parameters (a, b) > 0, "
                f"got {self.price_sensitivity}"
            )
        if not 0 <= self.peak_hour < 24:
            raise ValueError(f"segment {self.name!r}: `peak_hour` must be in [0, 24)")
        if self.purchases_per_year < 0:
            raise ValueError(f"segment {self.name!r}: `purchases_per_year` must be >= 0")


DEFAULT_SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(
        "bargain_hunter",
        0.30,
        (1.5, 2.0, 1.5, 1.5, 2.0, 2.0),
        (6.0, 2.0),
        (0.15, 0.45, 0.20, 0.02, 0.18),
        (0.70, 0.20, 0.10),
        20.0,
        14.0,
    ),
    SegmentSpec(
        "premium_shopper",
        0.15,
        (0.6, 1.5, 3.0, 1.0, 1.5, 3.0),
        (1.5, 6.0),
        (0.25, 0.02, 0.13, 0.55, 0.05),
        (0.35, 0.45, 0.20),
        13.0,
        9.0,
    ),
    SegmentSpec(
        "busy_parent",
        0.20,
        (1.0, 2.5, 2.5, 3.0, 1.0, 1.0),
        (3.0, 3.0),
        (0.35, 0.15, 0.35, 0.05, 0.10),
        (0.75, 0.15, 0.10),
        21.5,
        11.0,
    ),
    SegmentSpec(
        "tech_enthusiast",
        0.15,
        (2.0, 0.6, 0.8, 1.0, 5.0, 0.5),
        (3.0, 4.0),
        (0.60, 0.10, 0.10, 0.10, 0.10),
        (0.40, 0.50, 0.10),
        23.0,
        7.0,
    ),
    SegmentSpec(
        "wellness_seeker",
        0.20,
        (0.8, 1.5, 1.2, 5.0, 0.8, 2.0),
        (2.5, 3.5),
        (0.25, 0.05, 0.45, 0.10, 0.15),
        (0.60, 0.25, 0.15),
        7.5,
        8.0,
    ),
)


@dataclass(frozen=True)
class UserBatch:
    """A batch of users as a struct of arrays (``n`` users).

    Attributes:
        user_index: population-wide user number, shape (n,).
        segment: segment index, shape (n,).
        interests: interest share per category, shape (n, 6), rows sum to 1.
        price_sensitivity: in [0, 1], shape (n,).
        preferred_tone: index into :data:`TONES`, shape (n,).
        device: index into :data:`DEVICES`, shape (n,).
        hour: hour of day in [0, 24), shape (n,).
        history: purchases per category in the last year, shape (n, 6).
    """

    user_index: npt.NDArray[np.int64]
    segment: npt.NDArray[np.int64]
    interests: npt.NDArray[np.float64]
    price_sensitivity: npt.NDArray[np.float64]
    preferred_tone: npt.NDArray[np.int64]
    device: npt.NDArray[np.int64]
    hour: npt.NDArray[np.float64]
    history: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.segment.shape[0])

    def take(self, idx: npt.NDArray[np.int64]) -> UserBatch:
        """The users at ``idx``."""
        return UserBatch(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})


@dataclass(frozen=True)
class PopulationConfig:
    """Configuration of a seeded user population.

    Attributes:
        segments: the segment mixture (set in code, not from a config file: the click world's
            tastes are keyed by these names).
        n_users: size of the population (users are reused across sessions; ids are stable).
    """

    segments: tuple[SegmentSpec, ...] = field(
        default=DEFAULT_SEGMENTS, metadata={"from_file": False}
    )
    n_users: int = 100_000

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("`segments` must name at least one segment")
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"segment names must be unique, got {names}")
        if self.n_users < 1:
            raise ValueError(f"`n_users` must be >= 1, got {self.n_users}")


@dataclass
class UserPopulation:
    """A fixed population of users drawn once from a :class:`PopulationConfig` and a seed.

    Sessions sample users from the population with :meth:`sample`; the same seed always gives the
    same population. :meth:`from_table` builds one from real profiles instead.

    Example:
        >>> pop = UserPopulation(PopulationConfig(n_users=1000), seed=0)
        >>> batch = pop.sample(4, np.random.default_rng(1))
        >>> pop.features(batch).shape
        (4, 28)
    """

    config: PopulationConfig = field(default_factory=PopulationConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self._users = _draw_population(self.config, np.random.default_rng(self.seed))
        self._features = self._compute_features(self._users)

    # ---- construction from a table ------------------------------------------------------------
    @classmethod
    def from_table(
        cls, table: Any, *, segments: tuple[SegmentSpec, ...] | None = None
    ) -> UserPopulation:
        """Build a population from a table of real profiles (pandas DataFrame or a file path).

        Required columns: ``segment`` (name), ``interest_<category>`` for each of
        :data:`CATEGORIES`, ``price_sensitivity``, ``preferred_tone`` (name), ``device`` (name),
        ``hour``; optional ``history_<category>`` columns (default 0).
        """
        import pandas as pd

        if isinstance(table, str | os.PathLike):
            path = os.fspath(table)
            df = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
        else:
            df = pd.DataFrame(table)
        segs = segments or DEFAULT_SEGMENTS
        seg_names = [s.name for s in segs]
        required = [
            "segment",
            *[f"interest_{c}" for c in CATEGORIES],
            "price_sensitivity",
            "preferred_tone",
            "device",
            "hour",
        ]
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise ValueError(
                f"user table is missing column(s) {missing}; it has {list(df.columns)}"
            )
        if len(df) == 0:
            raise ValueError("user table is empty — give at least one profile")

        def codes(col: str, names: list[str] | tuple[str, ...]) -> npt.NDArray[np.int64]:
            vals = df[col].astype(str).to_numpy()
            lookup = {n: i for i, n in enumerate(names)}
            bad = [i for i, v in enumerate(vals) if v not in lookup]
            if bad:
                raise ValueError(
                    f"user table column `{col}`: rows {bad[:5]} have "
                    f"{[vals[i] for i in bad[:5]]}, not one of {list(names)}"
                )
            return np.array([lookup[v] for v in vals], np.int64)

        interests = df[[f"interest_{c}" for c in CATEGORIES]].to_numpy(float)
        if (
            np.any(interests < 0)
            or np.any(interests.sum(1) <= 0)
            or not np.isfinite(interests).all()
        ):
            raise ValueError("user table: interest_* columns must be finite, >= 0, positive sum")
        interests = interests / interests.sum(1, keepdims=True)
        price = df["price_sensitivity"].to_numpy(float)
        if np.any((price < 0) | (price > 1)) or not np.isfinite(price).all():
            raise ValueError("user table column `price_sensitivity` must be in [0, 1]")
        hour = df["hour"].to_numpy(float)
        if np.any((hour < 0) | (hour >= 24)) or not np.isfinite(hour).all():
            raise ValueError("user table column `hour` must be in [0, 24)")
        hist_cols = [f"history_{c}" for c in CATEGORIES]
        history = (
            df[hist_cols].to_numpy(float)
            if all(c in df.columns for c in hist_cols)
            else np.zeros((len(df), len(CATEGORIES)))
        )
        users = UserBatch(
            user_index=np.arange(len(df), dtype=np.int64),
            segment=codes("segment", seg_names),
            interests=interests,
            price_sensitivity=price,
            preferred_tone=codes("preferred_tone", TONES),
            device=codes("device", DEVICES),
            hour=hour,
            history=history,
        )
        pop = cls.__new__(cls)
        pop.config = PopulationConfig(segments=segs, n_users=len(df))
        pop.seed = 0
        pop._users = users
        pop._features = pop._compute_features(users)
        return pop

    # ---- use ----------------------------------------------------------------------------------
    @property
    def users(self) -> UserBatch:
        """All users of the population."""
        return self._users

    @property
    def n_segments(self) -> int:
        return len(self.config.segments)

    @property
    def segment_names(self) -> list[str]:
        return [s.name for s in self.config.segments]

    @property
    def feature_dim(self) -> int:
        return int(self._features.shape[1])

    @property
    def feature_names(self) -> list[str]:
        return (
            [f"segment={s}" for s in self.segment_names]
            + [f"interest_{c}" for c in CATEGORIES]
            + ["price_sensitivity"]
            + [f"tone={t}" for t in TONES]
            + [f"device={d}" for d in DEVICES]
            + ["hour_sin", "hour_cos"]
            + [f"log1p_history_{c}" for c in CATEGORIES]
        )

    @property
    def all_features(self) -> npt.NDArray[np.float32]:
        """Features of every user, shape ``(n_users, feature_dim)`` (read-only)."""
        return self._features

    def sample_index(self, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Indices of ``n`` users drawn uniformly (with replacement)."""
        return rng.integers(0, len(self._users), size=n)

    def sample(self, n: int, rng: np.random.Generator) -> UserBatch:
        """``n`` users drawn uniformly with replacement."""
        return self._users.take(self.sample_index(n, rng))

    def features(self, users: UserBatch) -> npt.NDArray[np.float32]:
        """The policy-visible feature vector of each user, shape ``(n, feature_dim)``."""
        return self._features[users.user_index]

    def _compute_features(self, u: UserBatch) -> npt.NDArray[np.float32]:
        n = len(u)
        s = self.n_segments
        out = np.zeros((n, s + 6 + 1 + len(TONES) + len(DEVICES) + 2 + 6), np.float32)
        out[np.arange(n), u.segment] = 1.0
        out[:, s : s + 6] = u.interests
        out[:, s + 6] = u.price_sensitivity
        j = s + 7
        out[np.arange(n), j + u.preferred_tone] = 1.0
        j += len(TONES)
        out[np.arange(n), j + u.device] = 1.0
        j += len(DEVICES)
        ang = 2 * np.pi * u.hour / 24.0
        out[:, j] = np.sin(ang)
        out[:, j + 1] = np.cos(ang)
        out[:, j + 2 :] = np.log1p(u.history)
        out.setflags(write=False)
        return out


def _draw_population(cfg: PopulationConfig, rng: np.random.Generator) -> UserBatch:
    segs = cfg.segments
    n = cfg.n_users
    w = np.array([s.weight for s in segs], float)
    segment = rng.choice(len(segs), size=n, p=w / w.sum())
    interests = np.empty((n, len(CATEGORIES)))
    price = np.empty(n)
    tone = np.empty(n, np.int64)
    device = np.empty(n, np.int64)
    hour = np.empty(n)
    history = np.empty((n, len(CATEGORIES)))
    for k, spec in enumerate(segs):
        m = segment == k
        nk = int(m.sum())
        if not nk:
            continue
        interests[m] = rng.dirichlet(np.asarray(spec.interests, float), size=nk)
        price[m] = rng.beta(*spec.price_sensitivity, size=nk)
        tp = np.asarray(spec.tone_probs, float)
        tone[m] = rng.choice(len(TONES), size=nk, p=tp / tp.sum())
        dp = np.asarray(spec.device_probs, float)
        device[m] = rng.choice(len(DEVICES), size=nk, p=dp / dp.sum())
        hour[m] = np.mod(spec.peak_hour + rng.normal(0.0, 2.5, size=nk), 24.0)
        rate = spec.purchases_per_year * interests[m]
        history[m] = rng.poisson(rate)
    return UserBatch(
        user_index=np.arange(n, dtype=np.int64),
        segment=segment.astype(np.int64),
        interests=interests,
        price_sensitivity=price,
        preferred_tone=tone,
        device=device,
        hour=hour,
        history=history,
    )
