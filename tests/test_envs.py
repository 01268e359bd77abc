from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from copyloop.envs import ENV_ID, CopyMarketEnv, CopyMarketVectorEnv
from copyloop.envs.vector import SingleVectorEnv


@pytest.mark.parametrize("session_length", [1, 4])
def test_single_env_passes_both_checkers(market, session_length: int) -> None:
    env = CopyMarketEnv(market=market, session_length=session_length)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(CopyMarketEnv(market=market, session_length=session_length), warn=True)


@pytest.mark.parametrize("session_length", [1, 4])
def test_vector_kernel_passes_both_checkers(market, session_length: int) -> None:
    gym_check_env(
        SingleVectorEnv(market=market, session_length=session_length), skip_render_check=True
    )
    sb3_check_env(SingleVectorEnv(market=market, session_length=session_length), warn=True)


def test_registered_and_make_vec_uses_native_vector_env(small_config) -> None:
    env = gym.make(ENV_ID, config=small_config)
    assert isinstance(env.unwrapped, CopyMarketEnv)
    venv = gym.make_vec(ENV_ID, num_envs=16, config=small_config)
    assert isinstance(venv, CopyMarketVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs in venv.observation_space


def rollout_single(env, seed: int, actions: np.ndarray):
    obs, _ = env.reset(seed=seed)
    out = []
    for a in actions:
        obs, r, term, _trunc, info = env.step(a)
        out.append((r, term, info["true_ctr"].copy(), obs["user"].copy(), obs["shown"].copy()))
        if term:
            obs, _ = env.reset()
    return out


def test_single_env_determinism(market) -> None:
    acts = np.random.default_rng(0).integers(0, 6, 600)
    a = rollout_single(CopyMarketEnv(market=market, session_length=3), 11, acts)
    b = rollout_single(CopyMarketEnv(market=market, session_length=3), 11, acts)
    c = rollout_single(CopyMarketEnv(market=market, session_length=3), 12, acts)
    for x, y in zip(a, b, strict=True):
        assert x[0] == y[0] and x[1] == y[1]
        for u, v in zip(x[2:], y[2:], strict=True):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(x[3], y[3]) for x, y in zip(a, c, strict=True))


def test_vector_env_determinism_and_spaces(market) -> None:
    acts = np.random.default_rng(0).integers(0, 6, (30, 64))

    def run(seed: int):
        env = CopyMarketVectorEnv(64, market=market, session_length=3)
        obs, _ = env.reset(seed=seed)
        traj = []
        for a in acts:
            obs, r, term, trunc, info = env.step(a)
            assert obs in env.observation_space
            assert not trunc.any()
            traj.append((r, term, obs["user"], obs["shown"], info["true_ctr"]))
        return traj

    a, b = run(5), run(5)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    # sessions of length 3 end on every third step, all together
    terms = np.array([t[1] for t in a])
    assert terms[2::3].all() and not terms[0::3].any()


def test_vector_final_obs_and_autoreset(market) -> None:
    env = CopyMarketVectorEnv(8, market=market, session_length=2)
    obs, _ = env.reset(seed=0)
    users0 = obs["user"].copy()
    obs, _, term, _, info = env.step(np.zeros(8, np.int64))
    assert not term.any() and "final_obs" not in info
    np.testing.assert_array_equal(obs["user"], users0)  # same session
    obs, _, term, _, info = env.step(np.zeros(8, np.int64))
    assert term.all() and info["_final_obs"].all()
    np.testing.assert_array_equal(info["final_obs"]["user"], users0)
    assert (info["final_obs"]["shown"][:, 0] == 2).all()
    assert (obs["shown"] == 0).all()  # new sessions start fresh


def test_fatigue_lowers_ctr_of_repeated_variant(market) -> None:
    env = CopyMarketEnv(market=market, session_length=5)
    env.reset(seed=3)
    ctrs = []
    for _ in range(4):
        _, _, _, _, info = env.step(0)
        ctrs.append(info["true_ctr"][0])
    f = market.world.config
    np.testing.assert_allclose(ctrs[1] / ctrs[0], f.fatigue_same * f.fatigue_any)
    assert ctrs[0] > ctrs[1] > ctrs[2] > ctrs[3]


def test_masked_action_shows_nothing(market) -> None:
    env = CopyMarketEnv(market=market)
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        if not obs["action_mask"].all():
            bad = int(np.flatnonzero(obs["action_mask"] == 0)[0])
            _, r, _, _, info = env.step(bad)
            assert r == 0.0 and info["invalid_action"]
            assert not env.action_masks()[bad]
            return
    pytest.fail("no campaign with fewer than K variants in 200 sessions")


def test_single_and_vector_agree_statistically(market) -> None:
    """Same dynamics: mean true CTR of slot 0 over many sessions agrees within 4 standard errors."""
    rng = np.random.default_rng(0)
    single = CopyMarketEnv(market=market)
    s_ctr = []
    single.reset(seed=1)
    for _ in range(4000):
        _, _, _, _, info = single.step(0)
        s_ctr.append(info["true_ctr"][0])
        single.reset()
    vec = CopyMarketVectorEnv(500, market=market)
    vec.reset(seed=2)
    v_ctr = []
    for _ in range(8):
        _, _, _, _, info = vec.step(rng.integers(0, 6, 500))
        v_ctr.append(info["true_ctr"][:, 0])
    s, v = np.array(s_ctr), np.concatenate(v_ctr)
    se = np.sqrt(s.var() / s.size + v.var() / v.size)
    assert abs(s.mean() - v.mean()) < 4 * se


def test_clicks_follow_true_ctr(market) -> None:
    """Observed clicks match the env's own true CTRs: |mean(click) − mean(ctr)| < 4 SE."""
    env = CopyMarketVectorEnv(1024, market=market)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    clicks, ctrs = [], []
    for _ in range(100):
        a = rng.integers(0, 6, 1024)
        _, r, _, _, info = env.step(a)
        clicks.append(r)
        ctrs.append(info["true_ctr"][np.arange(1024), a])
    c, p = np.concatenate(clicks), np.concatenate(ctrs)
    assert abs(c.mean() - p.mean()) < 4 * np.sqrt(p.mean() / c.size)


BAD_STEPS = [
    (np.zeros(3, np.int64), "shape \\(4,\\)"),
    (np.zeros(4, np.float32), "integer array"),
    (np.full(4, 99), "slots in \\[0, 8\\)"),
]


@pytest.mark.parametrize(("actions", "match"), BAD_STEPS)
def test_vector_bad_actions(market, actions, match) -> None:
    env = CopyMarketVectorEnv(4, market=market)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(actions)


def test_single_env_misuse(market) -> None:
    env = CopyMarketEnv(market=market)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="slot in \\[0, 8\\)"):
        env.step(8)
    env.step(0)
    with pytest.raises(RuntimeError, match="session has ended"):
        env.step(0)


def test_render_ansi(market) -> None:
    env = CopyMarketEnv(market=market, render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert text is not None and "campaign" in text and "[0]" in text
