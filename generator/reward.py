"""Rewards for generated copy: plain functions ``(texts, campaign, segment) -> CTRs``.

- :class:`WorldReward`: the ground-truth click world's expected first-impression CTR of each
  text, averaged over a fixed sample of the segment's users (what the issue calls the true
  reward; also the judge of every result).
- :class:`ClickSimReward`: the learned click simulator's ``click_reward``
  (``copyloop.envs.clicksim``, imported lazily).
- ``proxy:SEED``: a *different* click world (same readable cues, other hidden taste directions
  and product appeal) — a deliberately misspecified reward for the reward-hacking check.

Example:
    >>> reward = WorldReward(Market.get(), users_per_segment=200)  # doctest: +SKIP
    >>> reward(["Shop the Acme mower blade today!"], campaign=0, segment=0)  # doctest: +SKIP
    array([0.031...])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from copyloop.envs.embed import TextEncoder


class RewardFn(Protocol):
    """A reward for copy: one value per text, for a campaign index and a segment index."""

    def __call__(
        self, texts: list[str], campaign: int, segment: int
    ) -> npt.NDArray[np.float64]: ...


@lru_cache(maxsize=1)
def session_encoder() -> TextEncoder:
    """A MiniLM encoder that memoises in memory only: generated texts are one-offs, so they stay
    out of the on-disk embedding cache (which is rewritten on every new batch)."""
    return TextEncoder(cache=False)


class WorldReward:
    """Expected CTR of each text in the click world, for a fixed sample of the segment's users.

    Args:
        market: the market (its world is used unless ``world`` is given).
        users_per_segment: users sampled per segment (fixed at construction).
        seed: seed of the user sample (use another seed to judge on held-out users).
        world: a click world to use instead of the market's (e.g. a proxy world).
        pool: the users each segment's sample is drawn from, one array per segment (default:
            all of the segment's users) — e.g. one half of a
            :class:`~copyloop.generator.clicks.UserSplit`.
        replace: draw with replacement (the default, as before) or without (then
            ``users_per_segment`` must not exceed any segment's pool).
    """

    def __init__(
        self,
        market: Any,
        *,
        users_per_segment: int = 256,
        seed: int = 0,
        world: Any = None,
        pool: Sequence[npt.NDArray[np.int64]] | None = None,
        replace: bool = True,
    ) -> None:
        if users_per_segment < 1:
            raise ValueError(f"`users_per_segment` must be >= 1, got {users_per_segment}")
        self.market = market
        self.world = world if world is not None else market.world
        self.users_per_segment = users_per_segment
        self.seed = seed
        rng = np.random.default_rng([seed, 4241])
        seg = market.population.users.segment
        n_seg = market.population.n_segments
        if pool is None:
            pool = [np.flatnonzero(seg == s) for s in range(n_seg)]
        if len(pool) != n_seg:
            raise ValueError(f"`pool` must hold one array per segment ({n_seg}), got {len(pool)}")
        need = 1 if replace else users_per_segment
        small = [s for s in range(n_seg) if len(pool[s]) < need]
        if small:
            raise ValueError(
                f"segment(s) {small} have too few users in `pool` "
                f"({[len(pool[s]) for s in small]}) for {users_per_segment} draws"
                + ("" if replace else " without replacement — lower users_per_segment")
            )
        self._users = [
            rng.choice(np.asarray(pool[s]), size=users_per_segment, replace=replace)
            for s in range(n_seg)
        ]

    def users(self, segment: int) -> npt.NDArray[np.int64]:
        return self._users[segment]

    def ctr_matrix(
        self, texts: Sequence[str], campaign: int, segment: int
    ) -> npt.NDArray[np.float32]:
        """True CTR per (sampled user, text), ``(users_per_segment, len(texts))``."""
        texts = list(texts)
        if not texts:
            return np.zeros((self.users_per_segment, 0), np.float32)
        emb = session_encoder().encode(texts)
        return self.world.ctr_of_texts(texts, campaign, self._users[segment], embeddings=emb)

    def __call__(self, texts: list[str], campaign: int, segment: int) -> npt.NDArray[np.float64]:
        if not 0 <= segment < len(self._users):
            raise ValueError(f"`segment` must be in [0, {len(self._users)}), got {segment}")
        if not texts:
            return np.zeros(0)
        return self.ctr_matrix(texts, campaign, segment).mean(axis=0).astype(np.float64)


class ClickSimReward:
    """The learned click simulator's ``click_reward`` as a :class:`RewardFn`.

    Args:
        path: folder of a saved simulator (``ClickSimulator.load``).
    """

    def __init__(self, path: str | Path) -> None:
        try:
            from copyloop.envs import clicksim  # type: ignore[attr-defined,unused-ignore]
        except ImportError as e:
            raise ValueError(
                "--reward clicksim:DIR needs copyloop.envs.clicksim (the learned click "
                "simulator), which this installation does not have — use --reward world"
            ) from e
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"click simulator folder {p} does not exist — fit one first")
        self.path = p
        self.sim = clicksim.ClickSimulator.load(p)

    def __call__(self, texts: list[str], campaign: int, segment: int) -> npt.NDArray[np.float64]:
        return np.asarray(
            self.sim.click_reward(list(texts), campaign=campaign, segment=segment), np.float64
        )


def proxy_world(market: Any, seed: int) -> Any:
    """A click world over the same catalog and users with other hidden tastes (``seed``)."""
    from copyloop.envs import ClickWorld

    w = market.world
    if seed == w.config.seed:
        raise ValueError(f"proxy seed {seed} equals the true world's seed — pick another")
    return ClickWorld(market.catalog, market.population, replace(w.config, seed=seed))


def parse_reward(spec: str, market: Any, *, users_per_segment: int = 256) -> RewardFn:
    """A reward from its command-line spelling: ``world``, ``clicksim:DIR`` or ``proxy:SEED``."""
    if spec == "world":
        return WorldReward(market, users_per_segment=users_per_segment)
    if spec.startswith("clicksim:"):
        return ClickSimReward(spec.split(":", 1)[1])
    if spec.startswith("proxy:"):
        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"`--reward proxy:SEED` needs an integer seed, got {spec!r}") from None
        return WorldReward(
            market, users_per_segment=users_per_segment, world=proxy_world(market, seed)
        )
    raise ValueError(f"`--reward` must be world, clicksim:DIR or proxy:SEED, got {spec!r}")
