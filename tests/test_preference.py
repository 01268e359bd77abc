"""Tests of preference tuning: scored sample pools, preference pairs, DPO and their CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gen_helpers import OPEN, mean_reward, side_reward

from copyloop.generator.generate import SamplingConfig
from copyloop.generator.models import load_model, save_model, tiny_model
from copyloop.generator.preference import (
    Pair,
    SamplePool,
    collect_pool,
    dpo_tune,
    pair_logprobs,
    preference_pairs,
)
from copyloop.generator.tune import TuneConfig


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)


def _pool(rewards, valid, texts=None, groups=None):
    n = len(rewards)
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    n_p = int(groups.max()) + 1
    return SamplePool(
        campaigns=np.arange(n_p, dtype=np.int64),
        segments=np.zeros(n_p, np.int64),
        prompts=[f"prompt {g}" for g in range(n_p)],
        group=groups,
        texts=texts or [f"line {i}" for i in range(n)],
        reward=np.asarray(rewards, float),
        valid=np.asarray(valid, bool),
        meta={"model": "test"},
    )


def test_pool_round_trip_and_bad_files(tmp_path):
    pool = _pool([0.02, 0.01, 0.0, 0.03], [True, True, False, True], groups=[0, 0, 1, 1])
    path = pool.save(tmp_path / "p" / "pool.parquet")
    back = SamplePool.load(path)
    assert back.texts == pool.texts and back.prompts == pool.prompts
    assert np.array_equal(back.group, pool.group) and np.array_equal(back.valid, pool.valid)
    assert np.array_equal(back.reward, pool.reward) and back.meta == {"model": "test"}
    assert back.campaigns.tolist() == [0, 1] and back.summary()["valid"] == 0.75
    assert not (tmp_path / "p" / "pool.parquet.tmp").exists()
    with pytest.raises(FileNotFoundError, match="collect one first"):
        SamplePool.load(tmp_path / "missing.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        SamplePool.load(junk)
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["a"]}), other)
    with pytest.raises(ValueError, match="not a copyloop sample pool"):
        SamplePool.load(other)


def test_preference_pairs_rank_within_prompts():
    #                 best  worst  mid   dup-of-best invalid   (group 0) | group 1: flat rewards
    rewards = [0.040, 0.010, 0.020, 0.040, 0.0, 0.020, 0.0201, 0.0199]
    valid = [True, True, True, True, False, True, True, True]
    texts = ["best", "worst", "mid", "BEST", "bad", "a", "b", "c"]
    pool = _pool(rewards, valid, texts, groups=[0, 0, 0, 0, 0, 1, 1, 1])
    pairs = preference_pairs(pool, pairs_per_prompt=4, min_ratio=1.1)
    # group 0: distinct valid texts best/mid/worst -> one pair (best, worst); group 1 is flat
    assert [(p.chosen, p.rejected) for p in pairs] == [("best", "worst")]
    assert pairs[0].log_ratio == pytest.approx(np.log(4.0))
    with_bad = preference_pairs(pool, min_ratio=1.1, invalid_rejected=1)
    assert ("best", "bad") in [(p.chosen, p.rejected) for p in with_bad]
    every = preference_pairs(pool, pairs_per_prompt=2, min_ratio=1.1, pairing="all")
    # ordered pairs of group 0, largest ratio first: best/worst 4×, then best/mid 2× (ties keep
    # rank order, so mid/worst 2× is the one cut by pairs_per_prompt=2)
    assert [(p.chosen, p.rejected) for p in every] == [("best", "worst"), ("best", "mid")]
    loose = preference_pairs(pool, min_ratio=1.0)
    assert len(loose) == 2 and loose[1].prompt == "prompt 1"
    for kwargs, match in (
        ({"pairing": "random"}, "pairing"),
        ({"pairs_per_prompt": 0}, "pairs_per_prompt"),
        ({"min_ratio": 0.5}, "min_ratio"),
    ):
        with pytest.raises(ValueError, match=match):
            preference_pairs(pool, **kwargs)


def test_dpo_prefers_the_chosen_lines_and_raises_reward(tiny, market, tmp_path):
    lm = tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer)
    reward = side_reward(lm)
    samp = SamplingConfig(max_new_tokens=4)
    pool = collect_pool(
        lm, market, reward, campaigns=[0, 1], segments=[0], n=16, sampling=samp, filters=OPEN
    )
    assert len(pool) == 32 and pool.valid.all()
    again = collect_pool(
        lm, market, reward, campaigns=[0, 1], segments=[0], n=16, sampling=samp, filters=OPEN
    )
    assert again.texts == pool.texts  # seeded
    pairs = preference_pairs(pool, pairs_per_prompt=8, min_ratio=1.05)
    assert len(pairs) >= 8
    before_w = {k: v.clone() for k, v in lm.model.state_dict().items()}
    before = mean_reward(lm, market, reward)
    with torch.inference_mode():
        m0 = pair_logprobs(lm.model, lm, pairs)
    cfg = TuneConfig(steps=16, batch_size=4, lr=2e-2, max_new_tokens=4, train_layers=None)
    res = dpo_tune(lm, market, pairs, tmp_path / "dpo", config=cfg, beta=0.5)
    with torch.inference_mode():
        m1 = pair_logprobs(lm.model, lm, pairs)
    after = mean_reward(lm, market, reward)
    assert any(not torch.equal(v, before_w[k]) for k, v in lm.model.state_dict().items())
    # the pairs' margin log π(chosen) − log π(rejected) grew on average (seeded)
    assert float((m1[:, 0] - m1[:, 1]).mean()) > float((m0[:, 0] - m0[:, 1]).mean()) + 0.5
    # Seeded (measured 0.50 -> 0.62); tolerance: +0.05 on 64 fresh samples (reward in [0, 1]).
    assert after > before + 0.05, (before, after)
    assert res.history[-1]["accuracy"] >= res.history[0]["accuracy"]
    assert {"loss", "margin", "kl", "chosen_logratio"} <= set(res.history[0])
    back = load_model(res.out, device="cpu")
    assert back.version == res.version and res.version.startswith("dpo-")
    with pytest.raises(ValueError, match="at least 2"):
        dpo_tune(lm, market, pairs[:1], tmp_path / "x", config=cfg)
    with pytest.raises(ValueError, match="beta"):
        dpo_tune(lm, market, pairs, tmp_path / "x", config=cfg, beta=0.0)


def test_pair_logprobs_match_one_line_at_a_time(tiny):
    lm = tiny
    pairs = [Pair("Write an ad.", "Shop now", "Buy it today please", 0.5)]
    with torch.inference_mode():
        both = pair_logprobs(lm.model, lm, pairs)[0]
        from copyloop.generator.tune import completion_logprobs, samples_from_texts

        one = [
            completion_logprobs(lm.model, samples_from_texts(lm, ["Write an ad."], [t])).sum()
            for t in ("Shop now", "Buy it today please")
        ]
    assert both.tolist() == pytest.approx([float(one[0]), float(one[1])], abs=1e-4)
    with pytest.raises(ValueError, match="completions for"):
        samples_from_texts(lm, ["a", "b"], ["x"], per_prompt=1)


def test_cli_pool_and_dpo(tiny, tmp_path, market):
    from typer.testing import CliRunner

    from copyloop.cli import app

    base = save_model(tiny, tmp_path / "base", version="base", made_by="test")
    cfg = tmp_path / "market.toml"
    cfg.write_text(
        "seed = 1\n[catalog]\nn_campaigns = 24\nseed = 3\n[population]\nn_users = 4000\n"
    )
    common = ["--config", str(cfg), "--model", str(base)]
    r = CliRunner().invoke(
        app,
        [
            "generator",
            "pool",
            "--out",
            str(tmp_path / "pool.parquet"),
            "--campaigns",
            "0",
            "--n",
            "2",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    pool = SamplePool.load(tmp_path / "pool.parquet")
    assert len(pool) == 2 * 5 and "0% valid" in r.stdout  # a random model never names the product
    tune = ["generator", "tune", "--mode", "dpo", "--steps", "1", "--batch-size", "2", *common]
    r = CliRunner().invoke(
        app, [*tune, "--out", str(tmp_path / "t"), "--pool", str(tmp_path / "pool.parquet")]
    )
    assert r.exit_code == 2 and "preference pair" in r.output
    made = _pool(
        [0.04, 0.01, 0.03, 0.01],
        [True] * 4,
        ["Shop now", "Buy", "Save today", "Hmm"],
        groups=[0, 0, 1, 1],
    )
    made.prompts = [pool.prompts[0], pool.prompts[1]]
    made.save(tmp_path / "made.parquet")
    made_args = ["--pool", str(tmp_path / "made.parquet"), "--kl-prompts", "2"]
    r = CliRunner().invoke(
        app, [*tune, "--out", str(tmp_path / "t"), *made_args, "--kl-anchor", str(base)]
    )
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "t", device="cpu").version == "dpo-1x2-s0"
    assert "weights of step" in r.stdout and "budget" in r.stdout
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["summary"]["kl_anchor"].endswith("@base")
    assert "kl_sampled" in metrics["history"][0]
    r = CliRunner().invoke(
        app, [*tune, "--out", str(tmp_path / "v"), *made_args, "--kl-anchor", "no/such/model"]
    )
    assert r.exit_code == 2 and "no/such/model" in r.output and not (tmp_path / "v").exists()
    far = _pool([0.04, 0.01], [True, True], groups=[0, 0])
    far.campaigns = np.array([99])
    far.save(tmp_path / "far.parquet")
    r = CliRunner().invoke(
        app, [*tune, "--out", str(tmp_path / "u"), "--pool", str(tmp_path / "far.parquet")]
    )
    assert r.exit_code == 2 and "same --config" in r.output
    r = CliRunner().invoke(
        app, [*tune, "--out", str(tmp_path / "u"), "--pool", str(tmp_path / "nope.parquet")]
    )
    assert r.exit_code == 2 and "does not exist" in r.output


def test_feedback_pool_pairs_come_from_logged_ctrs():
    from types import SimpleNamespace

    from copyloop.generator.preference import feedback_pool

    fb = SimpleNamespace(
        group=np.array([0, 0, 0, 1, 1]),
        prompts=["p0", "p0", "p0", "p1", "p1"],
        texts=["good", "bad", "unseen", "x", "y"],
        posterior=np.array([0.03, 0.01, 0.02, 0.02, 0.021]),
        n_eff=np.array([500.0, 400.0, 0.0, 300.0, 300.0]),
    )
    pool = feedback_pool(fb)
    assert pool.prompts == ["p0", "p1"] and pool.valid.tolist() == [True, True, False, True, True]
    pairs = preference_pairs(pool, min_ratio=1.2, pairing="all")
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("p0", "good", "bad")]


def test_dpo_reference_defaults_to_the_start_and_can_be_pinned(tiny, tmp_path, market):
    pairs = [
        Pair("Write an ad.", "Shop now", "Buy it today please", 0.5),
        Pair("Write an ad line.", "Save big", "Our product exists", 0.4),
    ]
    cfg = TuneConfig(steps=3, batch_size=2, lr=1e-2, train_layers=None)
    runs = []
    for ref in (None, "same", "other"):
        lm = tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer)
        reference = {
            None: None,
            "same": tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer),
            "other": tiny_model(seed=5, init_std=0.2, tokenizer=tiny.tokenizer),
        }[ref]
        res = dpo_tune(lm, market, pairs, tmp_path / str(ref), config=cfg, reference=reference)
        runs.append(res)
    # pinning a reference equal to the start changes nothing; another reference changes the ratios
    assert [h["loss"] for h in runs[0].history] == pytest.approx(
        [h["loss"] for h in runs[1].history], abs=1e-6
    )
    assert runs[0].summary["reference"] == "start" and runs[1].summary["reference"] != "start"
    assert runs[2].history[0]["chosen_logratio"] != pytest.approx(0.0, abs=1e-3)


def test_dpo_sampled_kl_budget_keeps_the_last_weights_inside_it(tiny, market, tmp_path):
    """With evaluation on, the budget is checked on sampled KL(π ‖ anchor): the run stops at the
    first evaluation past it and saves the weights of the evaluation before (deterministic, so a
    run that simply ends at that step must give the same weights)."""
    from copyloop.generator.prompts import CopyRequest

    start = tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer)
    reward = side_reward(start)
    samp = SamplingConfig(max_new_tokens=4)
    pool = collect_pool(
        start, market, reward, campaigns=[0, 1], segments=[0], n=16, sampling=samp, filters=OPEN
    )
    pairs = preference_pairs(pool, pairs_per_prompt=8, min_ratio=1.05)
    reqs = [CopyRequest(c, 0) for c in (0, 1)]

    def run(name, steps, budget, anchor=None):
        lm = tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer)
        cfg = TuneConfig(
            steps=steps, batch_size=4, lr=2e-2, max_new_tokens=4, train_layers=None,
            eval_every=2, eval_prompts=2, samples_per_prompt=4, kl_budget=budget,
        )  # fmt: skip
        res = dpo_tune(
            lm, market, pairs, tmp_path / name, config=cfg, beta=0.5, reward=reward,
            eval_requests=reqs, kl_anchor=anchor,
        )  # fmt: skip
        return lm, res

    _, free = run("free", 12, 1e9)
    evals = [(int(h["step"]), h["kl_sampled"]) for h in free.history if "kl_sampled" in h]
    assert [s for s, _ in evals] == [1, 2, 4, 6, 8, 10, 12]
    assert evals[-1][1] > 0.5  # the tiny model does move (seeded)
    # a budget between the first new maximum and the maximum before it
    j = next(i for i in range(1, len(evals)) if evals[i][1] > max(k for _, k in evals[:i]))
    budget = (max(k for _, k in evals[:j]) + evals[j][1]) / 2
    lm_b, capped = run("capped", 12, budget)
    assert len(capped.history) == evals[j][0]  # stopped at that evaluation
    assert capped.summary["kept_step"] == evals[j - 1][0]
    assert capped.summary["kl_sampled_kept"] == pytest.approx(evals[j - 1][1])
    lm_c, _ = run("short", evals[j - 1][0], 1e9)
    for (k, v), (k2, v2) in zip(
        lm_b.model.state_dict().items(), lm_c.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.allclose(v, v2, atol=1e-6), k
    # over budget at the first check: the start's weights come back, bit for bit
    lm_z, zero = run("zero", 12, 1e-9)
    assert zero.summary["kept_step"] == 0 and len(zero.history) == 1
    for k, v in start.model.state_dict().items():
        assert torch.equal(v, lm_z.model.state_dict()[k]), k
    assert capped.summary["within_budget"] and capped.summary["kl_sampled_start"] == 0.0
    kept_row = capped.history[evals[j - 1][0] - 1]  # (nan: a tiny model's lines fail filters)
    assert capped.summary["kept_reward"] == pytest.approx(kept_row["reward"], nan_ok=True)
    # another anchor is measured against, the start included
    other = tiny_model(seed=5, init_std=0.2, tokenizer=tiny.tokenizer)
    _, vs_other = run("other", 2, 1e9, anchor=other)
    assert vs_other.history[0]["kl_sampled"] > evals[0][1] + 3.0  # 14.1 vs 7.8 (seeded)
    assert vs_other.summary["kl_sampled_start"] > 3.0
    # a start already over budget to its anchor: the start is kept, and the summary says so
    lm_o, over = run("over", 12, 1.0, anchor=other)
    assert over.summary["kept_step"] == 0 and not over.summary["within_budget"]
    assert over.summary["kl_sampled_kept"] == over.summary["kl_sampled_start"] > 1.0
    for k, v in start.model.state_dict().items():
        assert torch.equal(v, lm_o.model.state_dict()[k]), k
    with pytest.raises(ValueError, match="eval_every"):
        TuneConfig(eval_every=0)
    with pytest.raises(ValueError, match="kl_prompts"):
        run_cfg = TuneConfig(steps=1, batch_size=4, max_new_tokens=4)
        dpo_tune(start, market, pairs, tmp_path / "bad", config=run_cfg, kl_prompts=0)
    assert not (tmp_path / "bad").exists()


def test_dpo_nll_term_holds_the_chosen_lines_up(tiny, market, tmp_path):
    pairs = [
        Pair("Write an ad.", "Shop now", "Buy it today please", 0.5),
        Pair("Write an ad line.", "Save big", "Our product exists", 0.4),
        Pair("Write a short ad.", "Deals inside", "Nothing to see", 0.3),
    ]
    cfg = TuneConfig(steps=8, batch_size=2, lr=1e-2, train_layers=None)
    chosen = []
    for coef in (0.0, 1.0):
        lm = tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer)
        with torch.inference_mode():
            start = pair_logprobs(lm.model, lm, pairs)
        res = dpo_tune(lm, market, pairs, tmp_path / str(coef), config=cfg, nll_coef=coef)
        with torch.inference_mode():
            end = pair_logprobs(lm.model, lm, pairs)
        assert float((end[:, 0] - end[:, 1]).mean()) > float((start[:, 0] - start[:, 1]).mean())
        assert res.summary["nll_coef"] == coef and "nll_chosen" in res.history[0]
        chosen.append(float((end[:, 0] - start[:, 0]).mean()))
    # both widen the margin; with the NLL term the chosen lines gain more (seeded: +12.5 vs +17.6)
    assert chosen[1] > chosen[0] + 1.0, chosen
    lp, n = pair_logprobs(lm.model, lm, pairs, lengths=True)
    assert lp.shape == n.shape == (3, 2) and bool((n >= 2).all())
    with pytest.raises(ValueError, match="nll_coef"):
        dpo_tune(lm, market, pairs, tmp_path / "x", config=cfg, nll_coef=-1.0)
