"""The batched copy market behind Stable-Baselines3's ``VecEnv`` API.

:class:`CopyMarketSB3VecEnv` adapts :class:`~copyloop.envs.vector.CopyMarketVectorEnv` (all
``num_envs`` sessions stepped in one numpy call) to SB3's vectorised-env protocol, so PPO and
sb3-contrib's MaskablePPO train on it without a Python loop over envs:

- ``reset()`` returns the observation Dict (arrays with a leading ``num_envs`` axis);
- ``step_wait()`` returns ``(obs, rewards float32, dones bool, infos)``; ``infos`` is a list of
  one dict per env, empty except for envs whose session just ended, which hold
  ``terminal_observation`` (taken from the vector env's ``info["final_obs"]``) and
  ``TimeLimit.truncated`` (always False: sessions end by termination);
- ``env_method("action_masks")`` / :meth:`CopyMarketSB3VecEnv.action_masks` give the (B, K)
  bool masks that MaskablePPO's ``get_action_masks`` stacks.

The batched info dict of the last step (``true_ctr``, ``click``, ...) stays available, unsplit,
as :attr:`CopyMarketSB3VecEnv.last_info`, for evaluation code that wants it without the cost of
per-env dicts.

Needs ``stable-baselines3`` (the ``rl`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from copyloop.envs.market import Market, MarketConfig
from copyloop.envs.vector import CopyMarketVectorEnv

MASK_METHOD = "action_masks"
"""The env method sb3-contrib's ``get_action_masks`` calls."""


class CopyMarketSB3VecEnv(VecEnv):
    """A :class:`CopyMarketVectorEnv` seen as an SB3 ``VecEnv`` (``num_envs`` = its batch size).

    The batched env is one object, not ``num_envs`` separate envs: :meth:`get_attr` returns its
    attribute once per requested index, :meth:`set_attr` sets it for all envs at once (a subset
    of indices is refused), :meth:`env_method` calls a method once and repeats the result per
    index — except ``action_masks``, which returns each env's own row. :meth:`seed` stores one
    seed for the whole batch, used at the next :meth:`reset`.

    Args:
        venv: the batched env to adapt.

    Example:
        >>> from copyloop.envs import CopyMarketVectorEnv, Market
        >>> venv = CopyMarketVectorEnv(256, market=Market.get())  # doctest: +SKIP
        >>> env = CopyMarketSB3VecEnv(venv)  # doctest: +SKIP
        >>> obs = env.reset()  # doctest: +SKIP
        >>> obs["action_mask"].shape, env.action_masks().dtype  # doctest: +SKIP
        ((256, 8), dtype('bool'))
    """

    def __init__(self, venv: CopyMarketVectorEnv) -> None:
        if not isinstance(venv, CopyMarketVectorEnv):
            raise TypeError(
                f"`venv` must be a CopyMarketVectorEnv, got {type(venv).__name__} — build one "
                "with CopyMarketVectorEnv(num_envs, market=...) or use CopyMarketSB3VecEnv.make"
            )
        self.venv = venv
        self.last_info: dict[str, Any] = {}
        self._actions: npt.NDArray[np.int64] | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    @classmethod
    def make(
        cls,
        market: Market | MarketConfig | None = None,
        num_envs: int = 1024,
        *,
        session_length: int | None = None,
    ) -> CopyMarketSB3VecEnv:
        """Build the batched env over ``market`` (a built market, a config or None = default).

        Args:
            market: the market, or the config to build (and share) it from.
            num_envs: sessions stepped together.
            session_length: impressions per session (None = the market's own).
        """
        m = market if isinstance(market, Market) else Market.get(market)
        return cls(CopyMarketVectorEnv(num_envs, market=m, session_length=session_length))

    @property
    def market(self) -> Market:
        """The market the env simulates."""
        return self.venv.market

    # ---- stepping -------------------------------------------------------------------------------
    def reset(self) -> dict[str, npt.NDArray[Any]]:
        """Start ``num_envs`` fresh sessions (seeded by the last :meth:`seed`, if any)."""
        seed = self._seeds[0]
        obs, info = self.venv.reset(seed=seed)
        self.last_info = info
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: npt.NDArray[Any]) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64, copy=False)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        self.last_info = info
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if "final_obs" in info:
            final = info["final_obs"]
            items = list(final.items())
            for i in np.flatnonzero(info["_final_obs"]).tolist():
                # Views into the final-observation arrays: no copy per env.
                infos[i] = {
                    "terminal_observation": {k: v[i] for k, v in items},
                    "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                }
        return obs, rewards.astype(np.float32), dones, infos

    def action_masks(self) -> npt.NDArray[np.bool_]:
        """Valid actions of the current decisions, shape (num_envs, K), bool."""
        return self.venv.action_masks()

    def close(self) -> None:
        self.venv.close()

    # ---- per-env attribute protocol -----------------------------------------------------------
    def _index_list(self, indices: VecEnvIndices) -> list[int]:
        idx = [int(i) for i in self._get_indices(indices)]
        bad = [i for i in idx if not 0 <= i < self.num_envs]
        if bad:
            raise IndexError(f"env indices {bad[:5]} out of range [0, {self.num_envs})")
        return idx

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched env's attribute, once per index (they share it)."""
        value = getattr(self.venv, attr_name)
        return [value] * len(self._index_list(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the batched env (all envs at once; subsets are refused)."""
        if sorted(set(self._index_list(indices))) != list(range(self.num_envs)):
            raise ValueError(
                "the batched env shares its attributes between all envs: set_attr() must "
                "address every env (indices=None)"
            )
        setattr(self.venv, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a method of the batched env.

        ``action_masks`` returns each env's own mask row: the whole (B, K) array when
        ``indices`` is None (``np.stack`` of it, as sb3-contrib does, gives it back unchanged).
        Any other method is called once and its result repeated per index.
        """
        if method_name == MASK_METHOD:
            masks = self.action_masks()
            if indices is None:
                return masks  # type: ignore[return-value]  # a (B, K) array: B rows
            return list(masks[self._index_list(indices)])
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * len(self._index_list(indices))

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Always False: the batched env is not a chain of gymnasium wrappers."""
        return [False] * len(self._index_list(indices))

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next :meth:`reset` (one seed for the whole batch; None = random)."""
        if seed is None:
            seed = int(np.random.default_rng().integers(0, np.iinfo(np.uint32).max))
        self._seeds = [seed] * self.num_envs
        return self._seeds

    def get_images(self) -> Sequence[npt.NDArray[Any] | None]:
        return [None] * self.num_envs


def as_sb3_env(
    env: Any,
    *,
    num_envs: int = 1024,
    session_length: int | None = None,
) -> VecEnv:
    """An SB3 ``VecEnv`` from a market, a config, a batched env or an SB3 ``VecEnv``.

    Args:
        env: a :class:`Market`, :class:`MarketConfig`, :class:`CopyMarketVectorEnv` or an SB3
            ``VecEnv`` (returned as is).
        num_envs: batch size when building from a market or config.
        session_length: session length when building from a market or config (None = its own).
    """
    if isinstance(env, VecEnv):
        return env
    if isinstance(env, CopyMarketVectorEnv):
        return CopyMarketSB3VecEnv(env)
    if isinstance(env, Market | MarketConfig):
        return CopyMarketSB3VecEnv.make(env, num_envs, session_length=session_length)
    raise TypeError(
        f"expected a Market, MarketConfig, CopyMarketVectorEnv or SB3 VecEnv, got "
        f"{type(env).__name__}"
    )


__all__ = ["MASK_METHOD", "CopyMarketSB3VecEnv", "as_sb3_env"]
