"""The SB3 adapter of the batched market and PPOPolicy (tiny networks, a few thousand steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

import torch

from copyloop.agents import POLICIES, UniformPolicy
from copyloop.agents.base import Policy
from copyloop.agents.ppo import PPOPolicy
from copyloop.envs import CopyMarketVectorEnv
from copyloop.envs.sb3 import CopyMarketSB3VecEnv, as_sb3_env

torch.set_num_threads(1)

TINY: dict[str, Any] = {"n_steps": 8, "batch_size": 256, "n_epochs": 2, "net_arch": (16,)}
"""A PPO small enough to train 4k steps in about a second."""


@pytest.fixture(scope="module")
def trained(market: Any) -> PPOPolicy:
    return PPOPolicy(**TINY, seed=0).train(market, 4096, num_envs=64)


@pytest.fixture(scope="module")
def obs(market: Any) -> dict[str, np.ndarray]:
    o, _ = CopyMarketVectorEnv(64, market=market).reset(seed=11)
    return o


# ---- the VecEnv adapter ------------------------------------------------------------------------
def test_adapter_follows_the_vecenv_protocol(market: Any) -> None:
    """Shapes and dtypes, session ends with terminal observations, masks, seeding, attributes."""
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

    length, b = 3, 16
    env = CopyMarketSB3VecEnv.make(market, b, session_length=length)
    assert (
        env.num_envs == b
        and env.observation_space == market.with_session_length(length).observation_space()
    )
    env.seed(5)
    o = env.reset()
    for key, space in env.observation_space.spaces.items():
        assert o[key].shape == (b, *space.shape)
        assert all(space.contains(o[key][i].astype(space.dtype)) for i in range(b))
    env.seed(5)
    again = env.reset()
    for key in o:
        np.testing.assert_array_equal(o[key], again[key])

    masks = env.action_masks()
    assert masks.dtype == bool and masks.shape == (b, market.max_candidates)
    np.testing.assert_array_equal(masks, o["action_mask"].astype(bool))
    assert is_masking_supported(env)
    np.testing.assert_array_equal(get_action_masks(env), masks)
    rows = env.env_method("action_masks", indices=[0, 3])
    assert len(rows) == 2
    np.testing.assert_array_equal(rows[1], masks[3])

    for step in range(length):
        actions = env.action_masks().argmax(axis=1)  # a valid slot per env
        o, rewards, dones, infos = env.step(actions)
        assert rewards.dtype == np.float32 and rewards.shape == (b,)
        assert dones.dtype == bool and len(infos) == b
        if step < length - 1:
            assert not dones.any() and all(info == {} for info in infos)
            continue
        assert dones.all()
        for info in infos:
            assert info["TimeLimit.truncated"] is False
            term = info["terminal_observation"]
            assert set(term) == set(env.observation_space.spaces)
            assert term["shown"].sum() == length  # the ended session's impressions
            assert term["user"].shape == env.observation_space["user"].shape
        assert (o["shown"] == 0).all()  # autoreset: the new sessions' first observations
    assert env.last_info["true_ctr"].shape == (b, market.max_candidates)

    assert env.get_attr("render_mode") == [None] * b
    assert env.get_attr("num_envs", indices=[1, 2]) == [b, b]
    assert env.env_is_wrapped(object) == [False] * b  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every env"):
        env.set_attr("foo", 1, indices=[0])
    with pytest.raises(TypeError, match="CopyMarketVectorEnv"):
        CopyMarketSB3VecEnv(env)  # type: ignore[arg-type]
    assert as_sb3_env(env) is env
    assert isinstance(as_sb3_env(market, num_envs=4), CopyMarketSB3VecEnv)


# ---- PPOPolicy ---------------------------------------------------------------------------------
def _check_distribution(d: Any, mask: np.ndarray) -> None:
    np.testing.assert_allclose(d.probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (d.probs[~mask] == 0).all()
    assert mask[np.arange(d.actions.size), d.actions].all()
    np.testing.assert_array_equal(d.propensity, d.probs[np.arange(d.actions.size), d.actions])


def test_trained_policy_gives_true_propensities(trained: PPOPolicy, obs: Any) -> None:
    assert trained.trained_timesteps >= 4096
    mask = obs["action_mask"].astype(bool)
    d = trained.act(obs)
    _check_distribution(d, mask)
    assert (d.probs[mask] > 0).all()
    # action_probs is the distribution of the next act() and does not consume randomness.
    p = trained.action_probs(obs)
    d2 = trained.act(obs)
    np.testing.assert_array_equal(p, d2.probs)
    # a single (unbatched) observation is a batch of one
    one = trained.act({k: v[0] for k, v in obs.items()})
    np.testing.assert_allclose(one.probs[0], d2.probs[0], rtol=1e-6)


def test_save_load_round_trip(
    trained: PPOPolicy, market: Any, obs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(POLICIES, "ppo", PPOPolicy)
    path = trained.save(tmp_path / "ppo.npz")
    loaded = Policy.load(path)
    assert isinstance(loaded, PPOPolicy) and loaded.get_params() == trained.get_params()
    np.testing.assert_array_equal(loaded.action_probs(obs), trained.action_probs(obs))
    np.testing.assert_array_equal(loaded.act(obs).actions, trained.act(obs).actions)
    assert loaded.trained_timesteps == trained.trained_timesteps
    # the loaded policy keeps training, here on a different number of envs
    loaded.train(market, 1024, num_envs=32)
    assert loaded.trained_timesteps >= trained.trained_timesteps + 1024


def test_same_seed_same_decisions(market: Any, obs: Any) -> None:
    a = PPOPolicy(**TINY, seed=4).train(market, 2048, num_envs=64)
    b = PPOPolicy(**TINY, seed=4).train(market, 2048, num_envs=64)
    da, db = a.act(obs), b.act(obs)
    np.testing.assert_array_equal(da.probs, db.probs)
    np.testing.assert_array_equal(da.actions, db.actions)
    fresh = a.clone()
    assert isinstance(fresh, PPOPolicy) and fresh.model is None
    assert repr(fresh) == repr(a)


def test_untrained_policy_acts_and_training_starts_from_the_same_net(market: Any, obs: Any) -> None:
    """Before train(), act() builds the (seeded) network from the observation widths."""
    p = PPOPolicy(**TINY, seed=7)
    q = PPOPolicy(**TINY, seed=7)
    d = p.act(obs)
    _check_distribution(d, obs["action_mask"].astype(bool))
    np.testing.assert_array_equal(d.probs, q.act(obs).probs)
    assert p.trained_timesteps == 0
    p.train(market, 512, num_envs=64)
    assert p.trained_timesteps >= 512


def test_unmasked_ppo_and_exploration_floor(market: Any, obs: Any) -> None:
    mask = obs["action_mask"].astype(bool)
    plain = PPOPolicy(**TINY, masked=False, seed=1).train(market, 1024, num_envs=64)
    _check_distribution(plain.act(obs), mask)
    floored = PPOPolicy(**TINY, seed=1, exploration_floor=0.05).train(market, 1024, num_envs=64)
    d = floored.act(obs)
    _check_distribution(d, mask)
    assert (d.probs[mask] >= 0.05 - 1e-12).all()


def test_update_refuses_saying_how_ppo_learns_and_bad_inputs_are_refused(
    trained: PPOPolicy, market: Any, obs: Any
) -> None:
    before = trained.action_probs(obs)
    d = trained.act(obs)
    with pytest.raises(ValueError, match=r"cannot learn from rows: .*call train\(market"):
        trained.update(obs, d.actions, np.ones(d.actions.size))
    np.testing.assert_array_equal(trained.action_probs(obs), before)
    with pytest.raises(ValueError, match="observation space differs"):
        trained.train(market.with_session_length(3), 512, num_envs=64)
    with pytest.raises(ValueError, match="n_steps"):
        PPOPolicy(n_steps=0)
    with pytest.raises(ValueError, match="net_arch"):
        PPOPolicy(net_arch=(0,))
    with pytest.raises(TypeError, match="VecEnv"):
        PPOPolicy(**TINY).train("not an env", 10)


# ---- learning ----------------------------------------------------------------------------------
def _expected_ctr(policy: Policy, market: Any, length: int, seed: int = 99) -> float:
    env = CopyMarketVectorEnv(2048, market=market, session_length=length)
    o, _ = env.reset(seed=seed)
    rows, total = np.arange(2048), 0.0
    for _ in range(length * 4):
        a = policy.act(o).actions
        o, _, _, _, info = env.step(a)
        total += float(info["true_ctr"][rows, a].mean())
    return total / (length * 4)


@pytest.mark.slow
def test_ppo_learns_with_fatigue(market: Any) -> None:
    """On sessions of 5 impressions, PPO (default hyper-parameters, 1M steps, ~1 minute) clearly
    beats uniform in expected CTR."""
    pol = PPOPolicy(seed=0).train(market, 1_000_000, num_envs=1024, session_length=5)
    ppo = _expected_ctr(pol, market, 5)
    uniform = _expected_ctr(UniformPolicy(seed=0), market, 5)
    assert ppo > 1.08 * uniform, (ppo, uniform)
