"""The copy market: users, catalog and click world in one object, and its Gymnasium env.

:class:`Market` is built once (embedding the catalog is the expensive part) and shared by every
env made from the same :class:`MarketConfig`. :class:`CopyMarketEnv` is the single env
registered as ``copyloop/CopyMarket-v0`` (click world v1) and ``copyloop/CopyMarket-v1`` (click
world v2); :mod:`copyloop.envs.vector` holds the natively batched version registered as their
``vector_entry_point``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from copyloop.config import ConfigError, config_from_dict, config_to_dict, read_toml
from copyloop.envs.catalog import CANDIDATE_BOUND, Catalog, CatalogConfig, build_catalog
from copyloop.envs.embed import TextEncoder
from copyloop.envs.users import PopulationConfig, UserPopulation
from copyloop.envs.world import ClickWorld, WorldConfig, WorldVersion

if TYPE_CHECKING:
    from copyloop.envs.clicksim import BoundSimulator, ClickSimulator

USER_FEATURE_MAX = 20.0
"""Upper bound of user features (log1p purchase counts stay far below it)."""


@dataclass(frozen=True)
class MarketConfig:
    """Everything that defines a copy market; loadable from TOML.

    Attributes:
        catalog: campaigns and variants (see :class:`CatalogConfig`).
        population: the user population (see :class:`PopulationConfig`).
        world: the click world (see :class:`WorldConfig`).
        session_length: impressions per session (1 = contextual bandit). Within a session one
            user sees one campaign's slot repeatedly, so fatigue matters.
        seed: seed of the population; the catalog and world carry their own seeds.
        click_model: directory of a learned click simulator (``copyloop clicksim fit``) to draw
            clicks from instead of the click world; None = the world. Fatigue still follows
            ``world.fatigue_*`` (the simulator models first impressions).
        pessimism: with ``click_model``, subtract this many ensemble standard deviations from
            every CTR (floored at 0), so agents do not exploit the simulator's errors.

    Example:
        >>> cfg = MarketConfig.from_dict({"session_length": 5, "world": {"drift_period": 10000}})
        >>> cfg.session_length, cfg.world.drift_period
        (5, 10000)
    """

    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    session_length: int = 1
    seed: int = 0
    click_model: str | None = None
    pessimism: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.session_length <= 1000:
            raise ValueError(f"`session_length` must be in [1, 1000], got {self.session_length}")
        if not 0.0 <= self.pessimism <= 10.0:
            raise ValueError(
                f"`pessimism` must be in [0, 10] (standard deviations), got {self.pessimism}"
            )
        if self.pessimism and self.click_model is None:
            raise ValueError(
                "`pessimism` needs a `click_model` (it penalises simulator uncertainty)"
            )
        segments = [s.name for s in self.population.segments]
        unknown = [name for name, _ in self.world.tastes if name not in segments]
        if unknown:
            raise ValueError(
                f"`world.tastes` names segment(s) {unknown} the population does not have; "
                f"its segments: {', '.join(segments)}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> MarketConfig:
        """Build from the ``[market]`` table as a nested dict (read from TOML or JSON).

        Types are checked against the field annotations, unknown keys and segment names are
        refused, and a partial ``world.tastes.<segment>`` table is merged over that segment's
        default taste (see :func:`copyloop.config.config_from_dict`).

        Raises:
            ConfigError: the message names ``source`` (when given), the table and the key.
        """
        return config_from_dict(cls, data, "market", source=source)

    @classmethod
    def from_toml(cls, path: str | Path) -> MarketConfig:
        """Read a market TOML file: one ``[market]`` table (or its keys at the top level).

        Example file::

            [market]
            session_length = 5
            [market.world]
            drift_period = 50_000
            [market.world.tastes.bargain_hunter]
            urgency = 0.8            # the rest of this segment's taste keeps its defaults

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ConfigError: invalid TOML (with its line), a wrong type, an unknown key or segment
                name, or an out-of-range value; the message names the file and the key.
        """
        data = read_toml(path, what="market config")
        if "market" in data:
            stray = sorted(set(data) - {"market"})
            if stray:
                raise ConfigError(
                    f"{path}: key(s) {stray} outside [market]; a market file holds one [market] "
                    "table (or only its keys, at the top level)"
                )
            data = data["market"]
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The nested dict :meth:`from_dict` reads back to an equal config (None values and the
        code-level ``population.segments`` left out)."""
        return config_to_dict(self)


class Market:
    """A built market: population, catalog and click world.

    Args:
        config: what to build.
        encoder: text encoder for the catalog (default: packaged MiniLM, cached on disk).

    Use :meth:`get` to share one build between envs with the same config.
    """

    _cache: ClassVar[dict[MarketConfig, Market]] = {}

    def __init__(self, config: MarketConfig | None = None, *, encoder: TextEncoder | None = None):
        self.config = config or MarketConfig()
        self.population = UserPopulation(self.config.population, seed=self.config.seed)
        self.catalog: Catalog = build_catalog(self.config.catalog, encoder=encoder)
        self.world = ClickWorld(self.catalog, self.population, self.config.world)
        self.click_model: BoundSimulator | None = None
        if self.config.click_model is not None:
            from copyloop.envs.clicksim import ClickSimulator

            self.click_model = self._bind(ClickSimulator.load(self.config.click_model))
        cat = self.catalog
        pad = np.where(cat.slots >= 0, cat.slots, cat.n_variants)  # zero row for unused slots
        # Per-campaign observation tables, so a batch of sessions gathers whole rows.
        self.slot_features = cat.candidate_feats[pad].reshape(cat.n_campaigns, -1)
        self.slot_mask = (cat.slots >= 0).astype(np.int8)
        self.user_pack = self._pack_users()

    def _pack_users(self) -> npt.NDArray[np.float32]:
        # A user's observation features and the world's per-user terms side by side: drawing a
        # batch of random users is then one gather of contiguous rows.
        pack = np.hstack([self.population.all_features, self.world.user_table])
        # Rows padded to whole 64-byte cache lines: the random-row gather is ~3× faster.
        return np.pad(pack, ((0, 0), (0, -pack.shape[1] % 16)))

    @classmethod
    def get(cls, config: MarketConfig | None = None) -> Market:
        """The market for ``config``, built on first use and then shared."""
        cfg = config or MarketConfig()
        if cfg not in cls._cache:
            cls._cache[cfg] = cls(cfg)
        return cls._cache[cfg]

    def with_world(self, version: WorldVersion) -> Market:
        """The same users and catalog judged by click world ``version`` (``"v1"`` or ``"v2"``);
        shared like :meth:`get` when this market is the shared one for its config."""
        if version == self.config.world.version:
            return self
        cfg = replace(self.config, world=replace(self.config.world, version=version))
        shared = Market._cache.get(self.config) is self
        if shared and cfg in Market._cache:
            return Market._cache[cfg]
        other = object.__new__(Market)
        other.__dict__.update(self.__dict__)
        other.config = cfg
        other.world = ClickWorld(self.catalog, self.population, cfg.world)
        other.user_pack = other._pack_users()
        if shared:
            Market._cache[cfg] = other
        return other

    def with_session_length(self, session_length: int) -> Market:
        """The same market (shared catalog and world) with another session length."""
        if session_length == self.config.session_length:
            return self
        if not 1 <= session_length <= 1000:
            raise ValueError(f"`session_length` must be in [1, 1000], got {session_length}")
        other = object.__new__(Market)
        other.config = replace(self.config, session_length=session_length)
        other.population, other.catalog, other.world = self.population, self.catalog, self.world
        other.slot_features, other.slot_mask = self.slot_features, self.slot_mask
        other.user_pack = self.user_pack
        other.click_model = self.click_model
        return other

    def _bind(self, sim: ClickSimulator) -> BoundSimulator:
        if sim.context_dim != self.user_dim:
            raise ValueError(
                f"the click simulator reads {sim.context_dim} context features but this market's "
                f"users have {self.user_dim} — fit it on a log of this market"
            )
        return sim.bind_catalog(self.catalog)

    def with_click_model(
        self, click_model: ClickSimulator | str | Path | None, pessimism: float = 0.0
    ) -> Market:
        """The same market (shared users and catalog) with clicks drawn from a learned click
        simulator (an object or its directory) instead of the world; None = back to the world."""
        from copyloop.envs.clicksim import ClickSimulator

        sim = (
            ClickSimulator.load(click_model)
            if isinstance(click_model, (str, Path))
            else click_model
        )
        path = None
        if sim is not None:
            path = str(sim.path) if sim.path is not None else f"<in-memory {id(sim):x}>"
        other = object.__new__(Market)
        other.__dict__.update(self.__dict__)
        other.config = replace(self.config, click_model=path, pessimism=pessimism)
        other.click_model = None if sim is None else self._bind(sim)
        return other

    def first_ctr_rows(
        self,
        user_feats: npt.NDArray[np.float32],
        world_rows: npt.NDArray[np.float32],
        campaigns: npt.NDArray[np.int64],
        t: float | npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float32]:
        """First-impression CTRs ``(n, K)`` of users (their features and world rows) for their
        campaigns' slots: from the click simulator when the market has one, else the world."""
        if self.click_model is None:
            return self.world.first_ctr_rows(world_rows, campaigns, t)
        pred = self.click_model.predict(user_feats, self.catalog.slots[campaigns])
        return pred.pessimistic(self.config.pessimism)

    @property
    def user_dim(self) -> int:
        return self.population.feature_dim

    @property
    def max_candidates(self) -> int:
        return self.catalog.max_candidates

    @property
    def candidate_dim(self) -> int:
        return self.catalog.candidate_dim

    def observation_space(self) -> spaces.Dict:
        """The single-env observation space (a one-level Dict)."""
        k, length = self.max_candidates, self.config.session_length
        return spaces.Dict(
            {
                # user features: one-hots, shares, sin/cos (in [-1, 1]) and log1p counts
                "user": spaces.Box(-1.0, USER_FEATURE_MAX, (self.user_dim,), np.float32),
                # K candidate slots × dv features, flattened row-major (SB3 wants 1-D Boxes)
                "candidates": spaces.Box(
                    -CANDIDATE_BOUND, CANDIDATE_BOUND, (k * self.candidate_dim,), np.float32
                ),
                "shown": spaces.Box(0.0, float(length), (k,), np.float32),
                "action_mask": spaces.MultiBinary(k),
            }
        )


@dataclass
class SessionBlock:
    """A block of sessions drawn at once (n sessions, K slots, L steps)."""

    users: npt.NDArray[np.int64]  # (n,)
    campaigns: npt.NDArray[np.int64]  # (n,)
    first_ctr: npt.NDArray[np.float32]  # (n, K), first-impression CTR, 0 in unused slots
    user_feats: npt.NDArray[np.float32]  # (n, du)
    cand_feats: npt.NDArray[np.float32]  # (n, K·dv): K slots of dv features, row-major
    mask: npt.NDArray[np.int8]  # (n, K)
    uniforms: npt.NDArray[np.float64]  # (n, L) click draws


def draw_sessions(market: Market, n: int, rng: np.random.Generator, clock: float) -> SessionBlock:
    """Draw ``n`` sessions (user, campaign, true CTRs, observations, click uniforms).

    The drift clock of session ``j`` is ``clock + j · session_length`` impressions.
    """
    cat, world, length = market.catalog, market.world, market.config.session_length
    users = market.population.sample_index(n, rng)
    campaigns = rng.integers(0, cat.n_campaigns, size=n)
    uniforms = rng.random((n, length))
    t = clock + length * np.arange(n, dtype=np.float64) if world.config.drift_period else clock
    rows = np.take(market.user_pack, users, axis=0)
    du = market.user_dim
    return SessionBlock(
        users=users,
        campaigns=campaigns,
        first_ctr=market.first_ctr_rows(
            rows[:, :du], rows[:, du : du + world.user_table.shape[1]], campaigns, t
        ),
        user_feats=rows[:, :du],
        cand_feats=np.take(market.slot_features, campaigns, axis=0),
        mask=np.take(market.slot_mask, campaigns, axis=0),
        uniforms=uniforms,
    )


def resolve_market(
    config: MarketConfig | None,
    market: Market | None,
    session_length: int | None,
    click_model: ClickSimulator | str | Path | None,
    pessimism: float,
    world: WorldVersion | None = None,
) -> Market:
    """The market an env runs on, from its constructor arguments."""
    if market is not None and config is not None and market.config != config:
        raise ValueError("pass either `config` or `market`, not both with different configs")
    base = market if market is not None else Market.get(config)
    if world is not None:
        if world not in ("v1", "v2"):
            raise ValueError(f"`world` must be 'v1', 'v2' or None, got {world!r}")
        base = base.with_world(world)
    if session_length is not None:
        base = base.with_session_length(session_length)
    if click_model is not None:
        base = base.with_click_model(click_model, pessimism)
    elif pessimism:
        raise ValueError("`pessimism` needs a `click_model` (it penalises simulator uncertainty)")
    return base


def check_action(action: Any, n: int) -> int:
    """The slot a single env's ``action`` names: a Python or numpy integer, or a 0-d integer
    array (as Gymnasium's ``Discrete`` accepts), in ``[0, n)``.

    Raises:
        ValueError: a float, str, bool or other non-integer (the vector env refuses the same as
            an array of the wrong dtype), or a slot out of range.
    """
    if isinstance(action, np.ndarray):
        ok = action.ndim == 0 and action.dtype.kind in "iu"
        shown, kind = f"array({action})", f"{action.dtype} array of shape {action.shape}"
    else:
        ok = isinstance(action, (int, np.integer)) and not isinstance(action, bool)
        shown, kind = repr(action), type(action).__name__
    if not ok:
        raise ValueError(
            f"`action` must be an integer slot in [0, {n}), got {shown} ({kind}) — pass an int "
            "or a numpy integer"
        )
    a = int(action)
    if not 0 <= a < n:
        raise ValueError(f"`action` must be a slot in [0, {n}), got {a}")
    return a


class CopyMarketEnv(gym.Env[dict[str, npt.NDArray[Any]], np.int64]):
    """A user session on a campaign's ad slot: choose which copy variant to show.

    ## Description
    Each episode is one session: a user drawn from the population visits pages on which one
    campaign (a real product from the gembench corpus) has a slot; at each of the session's
    impressions the agent picks one of the campaign's copy variants. Clicks come from the
    ground-truth click world (text- and segment-dependent CTR, realistic 0.5–5 % base rates,
    optional drift) and repeated exposure wears a variant out (fatigue). With
    ``session_length=1`` this is a contextual bandit.

    ## Action Space
    ``Discrete(K)``: a candidate slot, ``K`` = most variants of any campaign. Campaigns with
    fewer variants mask the rest (``obs["action_mask"]`` and :meth:`action_masks` for
    sb3-contrib's MaskablePPO). A masked action shows nothing: reward 0 and
    ``info["invalid_action"] = True``.

    ## Observation Space
    A one-level ``Dict``:

    - ``user`` ``Box(du,)`` float32: segment one-hot, interests, price sensitivity, preferred tone,
      device, hour (sin/cos), log purchase history.
    - ``candidates`` ``Box(K, dv)`` float32: per slot, PCA components of the copy's MiniLM
      embedding and its readable text features (tone, urgency, CTA, value, benefits, length);
      zeros in unused slots. Text itself stays out of the observation.
    - ``shown`` ``Box(K,)`` float32: times each slot was shown earlier in this session.
    - ``action_mask`` ``MultiBinary(K)``: 1 for real candidates.

    ## Rewards
    1 for a click, 0 otherwise.

    ## Episode End
    The episode terminates when the session ends after ``session_length`` impressions (the
    user leaves: a real end, not a time limit). It is never truncated by the env itself.

    ## Info
    ``true_ctr`` (K,): each candidate's true CTR at this decision (for regret; never give it to
    an agent); ``event``: the logged event (user, campaign, slot, variant, click, impression
    clock); ``invalid_action``.

    ## Arguments
    ``gym.make("copyloop/CopyMarket-v1", config=MarketConfig(...))`` or ``market=Market(...)``;
    ``world`` (``"v1"``/``"v2"``) overrides the config's click world (the registered IDs set
    it: ``CopyMarket-v0`` runs world v1, ``CopyMarket-v1`` world v2); ``session_length``
    overrides the config's; ``click_model`` (a fitted
    :class:`~copyloop.envs.clicksim.ClickSimulator` or its directory) draws clicks from the
    learned simulator instead of the world, with ``pessimism`` ensemble standard deviations
    taken off every CTR. ``info["true_ctr"]`` is then the simulator's CTR.

    ## Version History
    * v1: click world v2 (``world="v2"``): CTR follows the copy's relevance to its own product,
      the specific benefits its description backs, and clarity; unsupported claims, audience
      descriptions, off-product copy, lists, repetition, capitals, "!" piles and spam cost
      clicks, and every cue saturates. Spaces, rewards and episode ends are unchanged.
    * v0: initial version (click world v1: word-list cues, which copy can game).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012
    _BLOCK = 256

    def __init__(
        self,
        config: MarketConfig | None = None,
        *,
        market: Market | None = None,
        session_length: int | None = None,
        click_model: ClickSimulator | str | Path | None = None,
        pessimism: float = 0.0,
        render_mode: str | None = None,
        world: WorldVersion | None = None,
    ) -> None:
        self.market = resolve_market(config, market, session_length, click_model, pessimism, world)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"`render_mode` must be one of {self.metadata['render_modes']} or None"
            )
        self.render_mode = render_mode
        self.session_length = self.market.config.session_length
        k = self.market.max_candidates
        self.observation_space = self.market.observation_space()  # type: ignore[assignment]
        self.action_space = spaces.Discrete(k)
        w = self.market.world.config
        self._same_pow = w.fatigue_same ** np.arange(self.session_length + 1, dtype=np.float64)
        self._any_pow = w.fatigue_any ** np.arange(self.session_length + 1, dtype=np.float64)
        self._block: SessionBlock | None = None
        self._i = self._BLOCK
        self._clock = 0
        self._step = 0
        self._shown = np.zeros(k, np.float32)
        self._k = k

    # ---- gym API -------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._block, self._i, self._clock = None, self._BLOCK, 0
        self._i += 1
        if self._block is None or self._i >= self._BLOCK:
            self._block = draw_sessions(self.market, self._BLOCK, self.np_random, self._clock)
            self._i = 0
        self._step = 0
        self._shown = np.zeros(self._k, np.float32)
        return self._obs(), {"true_ctr": self._block.first_ctr[self._i].copy()}

    def step(
        self, action: np.int64 | int
    ) -> tuple[dict[str, npt.NDArray[Any]], float, bool, bool, dict[str, Any]]:
        b = self._block
        if b is None:
            raise RuntimeError("call reset() before step()")
        if self._step >= self.session_length:
            raise RuntimeError("the session has ended (terminated=True); call reset()")
        a = check_action(action, self._k)
        i, step = self._i, self._step
        ctr = b.first_ctr[i] * self._same_pow[self._shown.astype(np.int64)] * self._any_pow[step]
        invalid = not b.mask[i, a]
        click = (not invalid) and bool(b.uniforms[i, step] < ctr[a])
        if not invalid:
            self._shown[a] += 1.0
        self._step += 1
        self._clock += 1
        terminated = self._step >= self.session_length
        info = {
            "true_ctr": ctr,
            "invalid_action": invalid,
            "event": {
                "impression": self._clock - 1,
                "user": int(b.users[i]),
                "campaign": int(b.campaigns[i]),
                "slot": a,
                "variant": int(self.market.catalog.slots[b.campaigns[i], a]),
                "click": click,
                "session_step": step,
            },
        }
        return self._obs(), float(click), terminated, False, info

    def _obs(self) -> dict[str, npt.NDArray[Any]]:
        b, i = self._block, self._i
        assert b is not None
        # Fresh arrays on every call: callers may keep (and modify) what they are given.
        return {
            "user": b.user_feats[i].copy(),
            "candidates": b.cand_feats[i].copy(),
            "shown": self._shown.copy(),
            "action_mask": b.mask[i].copy(),
        }

    def action_masks(self) -> npt.NDArray[np.bool_]:
        """Valid actions of the current decision (for sb3-contrib's MaskablePPO)."""
        if self._block is None:
            raise RuntimeError("call reset() before action_masks()")
        return self._block.mask[self._i].astype(bool)

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._block is None:
            return None
        b, i = self._block, self._i
        cat = self.market.catalog
        c = int(b.campaigns[i])
        seg = self.market.population.segment_names[
            int(self.market.population.users.segment[b.users[i]])
        ]
        lines = [
            f"user {int(b.users[i])} ({seg}) · campaign {cat.campaign_ids[c]} · "
            f"step {self._step}/{self.session_length}"
        ]
        texts = cat.variants.texts
        for k in range(self._k):
            v = int(cat.slots[c, k])
            if v >= 0:
                lines.append(f"  [{k}] shown {int(self._shown[k])}× · {texts[v]}")
        return "\n".join(lines)
