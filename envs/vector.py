"""The natively numpy-batched copy market: ``num_envs`` sessions advance in one array step.

Registered as the ``vector_entry_point`` of ``copyloop/CopyMarket-v0`` (click world v1) and
``copyloop/CopyMarket-v1`` (world v2), so ``gym.make_vec("copyloop/CopyMarket-v1",
num_envs=1024)`` returns it. Sessions that end are
reset within the same step (``AutoresetMode.SAME_STEP``): the returned observation is the new
session's first, and ``info["final_obs"]`` holds the ended session's last (its ``user``,
``candidates`` and ``action_mask`` are the arrays returned at the previous step: they did not
change within the session).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from copyloop.envs.market import (
    CopyMarketEnv,
    Market,
    MarketConfig,
    SessionBlock,
    check_action,
    draw_sessions,
    resolve_market,
)
from copyloop.envs.world import WorldVersion

if TYPE_CHECKING:
    from copyloop.envs.clicksim import ClickSimulator


class CopyMarketVectorEnv(
    VectorEnv[dict[str, npt.NDArray[Any]], npt.NDArray[np.int64], npt.NDArray[Any]]
):
    """``num_envs`` copy-market sessions stepped together with numpy (no Python loop per env).

    Same dynamics, spaces and info as :class:`~copyloop.envs.market.CopyMarketEnv`, batched on
    the first axis. ``info`` holds ``true_ctr`` (B, K), ``user``, ``campaign``, ``slot``,
    ``variant``, ``click``, ``session_step``, ``impression`` and ``invalid_action`` (B,), and,
    where sessions ended, ``final_obs`` with the ``_final_obs`` mask.

    Example:
        >>> envs = gym.make_vec("copyloop/CopyMarket-v0", num_envs=1024)  # doctest: +SKIP
        >>> obs, info = envs.reset(seed=0)  # doctest: +SKIP
        >>> obs["candidates"].shape  # doctest: +SKIP
        (1024, 8, 32)
    """

    metadata: dict[str, Any] = {  # noqa: RUF012
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": [],
    }

    def __init__(
        self,
        num_envs: int = 1024,
        config: MarketConfig | None = None,
        *,
        market: Market | None = None,
        session_length: int | None = None,
        click_model: ClickSimulator | str | Path | None = None,
        pessimism: float = 0.0,
        world: WorldVersion | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"`num_envs` must be >= 1, got {num_envs}")
        self.market = resolve_market(config, market, session_length, click_model, pessimism, world)
        self.num_envs = num_envs
        self.session_length = self.market.config.session_length
        k = self.market.max_candidates
        self._k = k
        self.single_observation_space = self.market.observation_space()
        self.single_action_space = gym.spaces.Discrete(k)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        w = self.market.world.config
        self._same_pow = w.fatigue_same ** np.arange(self.session_length + 1, dtype=np.float64)
        self._any_pow = w.fatigue_any ** np.arange(self.session_length + 1, dtype=np.float64)
        self._slots = self.market.catalog.slots
        self._s: SessionBlock | None = None
        self._shown = np.zeros((num_envs, k), np.int64)
        self._step = np.zeros(num_envs, np.int64)
        self._clock = 0
        self._rows = np.arange(num_envs)
        self._row_offsets = self._rows * k

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        if isinstance(seed, list):
            raise TypeError("CopyMarketVectorEnv takes one integer seed for the whole batch")
        super().reset(seed=seed)
        if seed is not None:
            self._clock = 0
        self._s = draw_sessions(self.market, self.num_envs, self.np_random, self._clock)
        self._shown = np.zeros((self.num_envs, self._k), np.int64)
        self._step = np.zeros(self.num_envs, np.int64)
        return self._obs(self._s, self._shown), {"true_ctr": self._s.first_ctr.copy()}

    def step(
        self, actions: npt.ArrayLike
    ) -> tuple[
        dict[str, npt.NDArray[Any]],
        npt.NDArray[np.float64],
        npt.NDArray[np.bool_],
        npt.NDArray[np.bool_],
        dict[str, Any],
    ]:
        s = self._s
        if s is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(
                f"`actions` must be an integer array of shape ({self.num_envs},), got "
                f"{a.dtype} {a.shape}"
            )
        if a.size and (a.min() < 0 or a.max() >= self._k):
            raise ValueError(
                f"`actions` must be slots in [0, {self._k}), got min {a.min()} max {a.max()}"
            )
        rows, step = self._rows, self._step
        L = self.session_length
        if L == 1:  # contextual bandit: no fatigue within the session
            ctr = s.first_ctr
            u = s.uniforms[:, 0]
        else:
            ctr = (s.first_ctr * self._same_pow[self._shown] * self._any_pow[step][:, None]).astype(
                np.float32
            )
            u = s.uniforms[rows, step]
        flat = self._row_offsets + a  # flat index of each chosen slot in (B, K) arrays
        valid = s.mask.ravel()[flat].astype(bool)
        clicks = valid & (u < ctr.ravel()[flat])
        shown = self._shown.copy() if L > 1 else self._shown
        if L > 1:
            shown[rows[valid], a[valid]] += 1
        new_step = step + 1
        done = new_step >= L
        info: dict[str, Any] = {
            "true_ctr": ctr,
            "user": s.users,
            "campaign": s.campaigns,
            "slot": a,
            "variant": self._slots.ravel()[s.campaigns * self._k + a],
            "click": clicks,
            "session_step": step,
            "impression": self._clock + rows,
            "invalid_action": ~valid,
        }
        self._clock += self.num_envs
        if done.any():
            info["final_obs"] = self._obs(s, shown)
            info["_final_obs"] = done
            if done.all():
                nxt = draw_sessions(self.market, self.num_envs, self.np_random, self._clock)
                shown = np.zeros_like(shown)
                new_step = np.zeros_like(new_step)
            else:
                idx = np.flatnonzero(done)
                fresh = draw_sessions(self.market, idx.size, self.np_random, self._clock)
                nxt = _merge(s, fresh, idx)
                shown = shown.copy()
                shown[idx] = 0
                new_step = np.where(done, 0, new_step)
            self._s = nxt
        self._shown, self._step = shown, new_step
        assert self._s is not None
        return (
            self._obs(self._s, shown, copy=not done.any()),
            clicks.astype(np.float64),
            done,
            np.zeros(self.num_envs, bool),
            info,
        )

    def _obs(
        self, s: SessionBlock, shown: npt.NDArray[np.int64], *, copy: bool = False
    ) -> dict[str, npt.NDArray[Any]]:
        """Observation arrays. A block drawn or merged in this step is new memory; a block that
        carries on (no session ended) is copied, so no two steps share observation memory."""
        return {
            "user": s.user_feats.copy() if copy else s.user_feats,
            "candidates": s.cand_feats.copy() if copy else s.cand_feats,
            "shown": shown.astype(np.float32),
            "action_mask": s.mask.copy() if copy else s.mask,
        }

    def action_masks(self) -> npt.NDArray[np.bool_]:
        """Valid actions of the current decisions, shape (num_envs, K)."""
        if self._s is None:
            raise RuntimeError("call reset() before action_masks()")
        return self._s.mask.astype(bool)


def _merge(old: SessionBlock, fresh: SessionBlock, idx: npt.NDArray[np.intp]) -> SessionBlock:
    """A new block: ``old`` with rows ``idx`` replaced by ``fresh`` (old arrays stay intact)."""

    def put(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = a.copy()
        out[idx] = b
        return out

    return SessionBlock(
        users=put(old.users, fresh.users),
        campaigns=put(old.campaigns, fresh.campaigns),
        first_ctr=put(old.first_ctr, fresh.first_ctr),
        user_feats=put(old.user_feats, fresh.user_feats),
        cand_feats=put(old.cand_feats, fresh.cand_feats),
        mask=put(old.mask, fresh.mask),
        uniforms=put(old.uniforms, fresh.uniforms),
    )


class SingleVectorEnv(gym.Env[dict[str, npt.NDArray[Any]], np.int64]):
    """The batched kernel seen as one env (``num_envs=1``), so Gymnasium's and SB3's env checkers
    can exercise the vector code path. Not needed for normal use."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        config: MarketConfig | None = None,
        *,
        market: Market | None = None,
        session_length: int | None = None,
    ) -> None:
        self.vec = CopyMarketVectorEnv(1, config, market=market, session_length=session_length)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space
        self._ended = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
        super().reset(seed=seed)
        obs, info = self.vec.reset(seed=seed)
        self._ended = False
        return {k: v[0] for k, v in obs.items()}, {"true_ctr": info["true_ctr"][0]}

    def step(
        self, action: np.int64 | int
    ) -> tuple[dict[str, npt.NDArray[Any]], float, bool, bool, dict[str, Any]]:
        if self._ended:
            raise RuntimeError("the session has ended; call reset()")
        a = check_action(action, self.vec.market.max_candidates)
        obs, r, term, trunc, info = self.vec.step(np.array([a]))
        self._ended = bool(term[0])
        last = info["final_obs"] if self._ended else obs
        return (
            {k: v[0].copy() for k, v in last.items()},
            float(r[0]),
            self._ended,
            bool(trunc[0]),
            {"true_ctr": info["true_ctr"][0], "invalid_action": bool(info["invalid_action"][0])},
        )

    def action_masks(self) -> npt.NDArray[np.bool_]:
        return self.vec.action_masks()[0]


__all__ = ["CopyMarketEnv", "CopyMarketVectorEnv", "SingleVectorEnv"]
