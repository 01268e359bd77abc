"""PPO (Stable-Baselines3) as a copyloop policy, trained on the natively batched copy market.

:class:`PPOPolicy` wraps SB3's ``PPO`` — or sb3-contrib's ``MaskablePPO`` when ``masked=True``
(the default), so invalid slots are never sampled during training — with a
``MultiInputPolicy`` over the market's Dict observation (``user``, ``candidates``, ``shown``,
``action_mask``). Training goes through :meth:`PPOPolicy.train`, which steps all sessions of a
:class:`~copyloop.envs.vector.CopyMarketVectorEnv` in one numpy call behind the
:class:`~copyloop.envs.sb3.CopyMarketSB3VecEnv` adapter; SB3's ``learn`` runs unchanged.

Decisions are drawn from the policy's own softmax over the valid slots with the copyloop
policy's seeded random stream, so ``Decision.probs`` is exactly the distribution sampled from
(a true propensity, usable for off-policy evaluation).

Needs ``stable-baselines3`` and ``sb3-contrib`` (the ``rl`` extra); they are imported on first
use, so importing this module does not require them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from copyloop.agents.base import Policy, sample_from

if TYPE_CHECKING:
    from gymnasium import spaces
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecEnv

OBS_KEYS = ("user", "candidates", "shown", "action_mask")
"""The observation keys the network reads, in the market env's order."""

_SAVE_EXCLUDE = [
    "_last_obs",
    "_last_original_obs",
    "_last_episode_starts",
    "ep_info_buffer",
    "ep_success_buffer",
]
"""Rollout leftovers not worth persisting (a later train() resets the env anyway)."""


def _require_sb3(masked: bool) -> type[PPO]:
    """The SB3 algorithm class, with an actionable error when the ``rl`` extra is missing."""
    try:
        if masked:
            from sb3_contrib import MaskablePPO

            return MaskablePPO  # type: ignore[return-value]
        from stable_baselines3 import PPO

        return PPO
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(
            f"PPOPolicy needs stable-baselines3 and sb3-contrib ({e.name} is missing) — "
            "install the `rl` extra: pip install 'copyloop[rl]'"
        ) from None


class PPOPolicy(Policy):
    """Proximal Policy Optimisation over the copy market, via Stable-Baselines3.

    The SB3 model is built on the first :meth:`train` (or, untrained, on the first
    :meth:`act`, from the observation widths) on CPU, with SB3's ``MultiInputPolicy`` and
    ``policy_kwargs={"net_arch": list(net_arch)}`` (separate actor and critic MLPs). SB3 seeds
    Python's, numpy's and torch's global generators with ``seed`` when it builds the model.

    The defaults are tuned for :meth:`train`'s 1,024 batched sessions (see
    ``bench/ppo_fps.py``): rollouts of 16 × 1,024 = 16,384 samples, 4 epochs of 4 minibatches
    of 4,096, Adam at 3e-3, two 64-unit layers — well over 20,000 env steps per second on one
    CPU thread while learning (SB3's defaults — n_steps 2048, batch 64, 10 epochs — are tuned
    for a handful of envs and run ~20× slower here).

    Args:
        n_steps: steps per env per rollout (a rollout holds ``n_steps × num_envs`` samples).
        batch_size: minibatch size of the PPO update.
        n_epochs: passes over each rollout.
        learning_rate: Adam step size.
        gamma: discount factor (matters only for sessions longer than one impression).
        ent_coef: entropy bonus.
        net_arch: hidden layer widths of the actor and of the critic (stored as a tuple).
        masked: train with sb3-contrib's MaskablePPO (invalid slots are never sampled and
            get no probability). With plain PPO the network may put mass on invalid slots
            (the env answers them with no click); decisions then renormalise over valid slots.
        seed: seed of SB3 (network initialisation, env) and of the decisions.
        exploration_floor: see :class:`~copyloop.agents.base.Policy`.

    Example:
        >>> from copyloop.envs import Market
        >>> pol = PPOPolicy(seed=0).train(Market.get(), 200_000)  # doctest: +SKIP
        >>> pol.act(obs).propensity  # doctest: +SKIP
    """

    policy_id = "ppo"
    learns_from_rows = False
    how_it_learns = (
        "PPO learns on-policy, from its own rollouts in an env — call train(market, "
        "total_timesteps=...) (or `train_steps` in an experiment config); it cannot learn from "
        "single rows, delayed rewards or another policy's log"
    )

    def __init__(
        self,
        n_steps: int = 16,
        batch_size: int = 4096,
        n_epochs: int = 4,
        learning_rate: float = 3e-3,
        gamma: float = 0.99,
        ent_coef: float = 0.0,
        net_arch: Sequence[int] = (64, 64),
        masked: bool = True,
        *,
        seed: int | None = None,
        exploration_floor: float = 0.0,
    ) -> None:
        super().__init__(seed=seed, exploration_floor=exploration_floor)
        if n_steps < 1:
            raise ValueError(f"`n_steps` must be >= 1, got {n_steps}")
        if batch_size < 2:
            raise ValueError(
                f"`batch_size` must be >= 2 (PPO normalises advantages), got {batch_size}"
            )
        if n_epochs < 1:
            raise ValueError(f"`n_epochs` must be >= 1, got {n_epochs}")
        if not learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {learning_rate}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"`gamma` must be in [0, 1], got {gamma}")
        if ent_coef < 0:
            raise ValueError(f"`ent_coef` must be >= 0, got {ent_coef}")
        arch = tuple(int(w) for w in net_arch)
        if any(w < 1 for w in arch):
            raise ValueError(f"`net_arch` widths must be >= 1, got {net_arch}")
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.gamma = gamma
        self.ent_coef = ent_coef
        self.net_arch = arch
        self.masked = masked
        self._model: PPO | None = None

    # ---- training ------------------------------------------------------------------------------
    @property
    def model(self) -> PPO | None:
        """The SB3 model (``PPO`` or ``MaskablePPO``); None until built."""
        return self._model

    @property
    def trained_timesteps(self) -> int:
        """Env steps (impressions) the model has been trained on."""
        return 0 if self._model is None else int(self._model.num_timesteps)

    def train(
        self,
        market_or_env: Any,
        total_timesteps: int,
        *,
        num_envs: int = 1024,
        session_length: int | None = None,
        callback: BaseCallback | list[BaseCallback] | None = None,
        progress: bool = False,
    ) -> PPOPolicy:
        """Train (or keep training) with SB3's ``learn`` on the batched market.

        Args:
            market_or_env: a :class:`~copyloop.envs.market.Market` or
                :class:`~copyloop.envs.market.MarketConfig` (a
                :class:`~copyloop.envs.sb3.CopyMarketSB3VecEnv` of ``num_envs`` sessions is
                built over it), a :class:`~copyloop.envs.vector.CopyMarketVectorEnv`, or any
                SB3 ``VecEnv`` with the market's spaces (e.g. the adapter inside
                ``VecMonitor`` to log episode returns).
            total_timesteps: env steps to train for (impressions: steps × ``num_envs``).
            num_envs: sessions stepped together, when building the env.
            session_length: impressions per session when building the env (None = the
                market's own).
            callback: SB3 callback(s), passed to ``learn``.
            progress: show SB3's progress bar.

        Returns:
            self, trained.
        """
        from copyloop.envs.sb3 import as_sb3_env

        if total_timesteps < 1:
            raise ValueError(f"`total_timesteps` must be >= 1, got {total_timesteps}")
        env = as_sb3_env(market_or_env, num_envs=num_envs, session_length=session_length)
        self._check_widths(env.observation_space)
        algo = _require_sb3(self.masked)
        model = self._model
        if model is None or model.num_timesteps == 0:
            # Fresh (or only built for act()): build on this env. Same seed, same initial net.
            model = self._build(env)
        elif model.env is not env:
            if model.observation_space != env.observation_space:
                raise ValueError(
                    "the env's observation space differs from the one the model was trained "
                    f"on ({env.observation_space} vs {model.observation_space}) — train a new "
                    "policy for a different market layout or session length"
                )
            if model.n_envs != env.num_envs:
                # SB3 sizes the rollout buffer by n_envs: reload the model onto the new env.
                model = algo.load(io.BytesIO(self._zip_bytes(model)), env=env, device="cpu")
            else:
                model.set_env(env)
        self._model = model
        model.learn(
            total_timesteps,
            callback=callback,
            reset_num_timesteps=False,
            progress_bar=progress,
        )
        self._updates += 1  # a new model version: decisions' randomness follows it
        return self

    def _build(self, env: VecEnv) -> PPO:
        algo = _require_sb3(self.masked)
        return algo(
            "MultiInputPolicy",
            env,
            learning_rate=self.learning_rate,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
            n_epochs=self.n_epochs,
            gamma=self.gamma,
            ent_coef=self.ent_coef,
            policy_kwargs={"net_arch": list(self.net_arch)},
            seed=self.seed,
            device="cpu",
            verbose=0,
        )

    def _check_widths(self, space: spaces.Space[Any]) -> None:
        """The env's observation widths must match what the policy has already seen."""
        from gymnasium import spaces as sp

        if not isinstance(space, sp.Dict) or set(space.spaces) != set(OBS_KEYS):
            raise ValueError(
                f"expected the market's Dict observation space {OBS_KEYS}, got {space}"
            )
        widths = {
            k: int(np.prod(space[k].shape or ())) for k in ("user", "candidates", "action_mask")
        }
        known = getattr(self, "_space_widths", None)
        if known is not None and known != widths:
            raise ValueError(
                f"observation widths {widths} differ from the policy's {known} — "
                "one policy serves one market layout"
            )
        self._space_widths = widths

    # ---- deciding ----------------------------------------------------------------------------
    def _decide(
        self,
        obs: dict[str, npt.NDArray[Any]],
        mask: npt.NDArray[np.bool_],
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        import torch as th

        b, k = mask.shape
        if self._model is None:
            self._model = self._build(_spaces_env(obs))
        policy = self._model.policy
        x = {key: obs[key] for key in OBS_KEYS if key in obs}
        if "shown" not in x:  # no session history given: a session's first impression
            x["shown"] = np.zeros((b, k), np.float32)
        policy.set_training_mode(False)
        obs_t, _ = policy.obs_to_tensor(x)
        with th.no_grad():
            if self.masked:
                dist = policy.get_distribution(obs_t, action_masks=mask)  # type: ignore[call-arg]
            else:
                dist = policy.get_distribution(obs_t)
            probs = dist.distribution.probs  # type: ignore[union-attr]
            p = probs.cpu().numpy().astype(np.float64)
        p = np.where(mask, p.reshape(b, k), 0.0)
        total = p.sum(axis=1, keepdims=True)
        # A row whose valid slots all underflowed to 0 (never seen in practice): uniform.
        p = np.where(
            total > 0, p / np.where(total > 0, total, 1.0), mask / mask.sum(1, keepdims=True)
        )
        return sample_from(p, rng), p

    def _decide_request(
        self,
        user: npt.NDArray[np.float32],
        cand: npt.NDArray[np.float32],
        key: int,
        ids: Sequence[str],
    ) -> npt.NDArray[np.float64]:
        """One request through the policy network: the candidates fill the first of the K slots
        it was trained on (the rest masked)."""
        widths = getattr(self, "_space_widths", None)
        if widths is None:
            raise ValueError("PPOPolicy must be trained (train(market, ...)) before it decides")
        k_model = int(widths["action_mask"])
        k, dc = cand.shape
        if k > k_model or dc * k_model != widths["candidates"]:
            per = widths["candidates"] // k_model
            raise ValueError(
                f"this PPO policy was trained on {k_model} slots of {per} features; got {k} "
                f"candidates of {dc} — use at most {k_model} candidates from its market"
            )
        slots = np.zeros((k_model, dc), np.float32)
        slots[:k] = cand
        mask = np.zeros((1, k_model), bool)
        mask[0, :k] = True
        obs: dict[str, npt.NDArray[Any]] = {
            "user": user[None, :],
            "candidates": slots.reshape(1, -1),
            "shown": np.zeros((1, k_model), np.float32),
            "action_mask": mask.astype(np.int8),
        }
        _, probs = self._decide(obs, mask, np.random.default_rng(key))
        out = np.asarray(probs[0, :k], np.float64)
        return out / out.sum()

    def _learn(
        self,
        obs: dict[str, npt.NDArray[Any]],
        actions: npt.NDArray[np.int64],
        rewards: npt.NDArray[np.float64],
    ) -> None:
        """PPO does not learn from rows: refuse, saying how it learns."""
        raise ValueError(f"{type(self).__name__} cannot learn from rows: {self.how_it_learns}")

    # ---- persistence ---------------------------------------------------------------------------
    @staticmethod
    def _zip_bytes(model: PPO) -> bytes:
        buf = io.BytesIO()
        model.save(buf, exclude=_SAVE_EXCLUDE)
        return buf.getvalue()

    def _get_state(self) -> dict[str, npt.NDArray[Any]]:
        """SB3's own zip (``model.save``) as a uint8 array; empty before the model exists.

        Note: SB3's zip holds cloudpickled objects (e.g. the learning-rate schedule), which
        ``load`` unpickles — load policy files only from sources you trust.
        """
        if self._model is None:
            return {}
        return {"sb3_zip": np.frombuffer(self._zip_bytes(self._model), np.uint8).copy()}

    def _set_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        if "sb3_zip" not in state:
            self._model = None
            return
        data = np.asarray(state["sb3_zip"], np.uint8).tobytes()
        self._model = _require_sb3(self.masked).load(io.BytesIO(data), device="cpu")


def _spaces_env(obs: Mapping[str, npt.NDArray[Any]]) -> VecEnv:
    """A one-env SB3 ``VecEnv`` that only carries the spaces of ``obs`` (it cannot step): lets an
    untrained policy build its network for :meth:`PPOPolicy.act` before any training."""
    import gymnasium as gym
    from gymnasium import spaces as sp
    from stable_baselines3.common.vec_env import VecEnv

    from copyloop.envs.market import CANDIDATE_BOUND, USER_FEATURE_MAX

    k = int(np.shape(obs["action_mask"])[1])
    space = sp.Dict(
        {
            "user": sp.Box(-1.0, USER_FEATURE_MAX, (int(np.shape(obs["user"])[1]),), np.float32),
            "candidates": sp.Box(
                -CANDIDATE_BOUND,
                CANDIDATE_BOUND,
                (int(np.shape(obs["candidates"])[1]),),
                np.float32,
            ),
            "shown": sp.Box(0.0, 1000.0, (k,), np.float32),
            "action_mask": sp.MultiBinary(k),
        }
    )

    class _SpacesOnly(VecEnv):
        def __init__(self) -> None:
            super().__init__(1, space, gym.spaces.Discrete(k))

        def reset(self) -> Any:
            raise RuntimeError("a spaces-only env cannot be stepped — call PPOPolicy.train()")

        def step_async(self, actions: Any) -> None:
            self.reset()

        def step_wait(self) -> Any:
            return self.reset()

        def close(self) -> None:
            return None

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            if attr_name == "render_mode":
                return [None]
            raise AttributeError(attr_name)

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            raise AttributeError(attr_name)

        def env_method(
            self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any
        ) -> list[Any]:
            raise AttributeError(method_name)

        def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
            return [False]

        def seed(self, seed: int | None = None) -> list[int | None]:
            return [seed]

    return _SpacesOnly()


__all__ = ["PPOPolicy"]
