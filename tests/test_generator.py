"""Tests of the copy generator: loading, prompts, sampling, filters, rewards, tuning, the loop.

Fast tests use a tiny random Llama with the real SmolLM2 tokenizer; tests with the real
SmolLM2-135M are marked ``slow``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gen_helpers import OPEN, mean_reward, side_reward

from copyloop.generator.filters import CopyFilter, FilterConfig, clean, name_words
from copyloop.generator.generate import (
    CopyGenerator,
    SamplingConfig,
    _draw,
    _draw_rejection,
    distinct_n,
    sample,
)
from copyloop.generator.models import (
    ModelLoadError,
    load_model,
    resolve_model_dir,
    save_model,
    tiny_model,
)
from copyloop.generator.prompts import CopyRequest, Style, build_messages, render_prompt
from copyloop.generator.tune import (
    TuneConfig,
    completion_logprobs,
    offline_tune,
    online_tune,
    rloo_advantages,
    variant_feedback,
)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)


def _fresh_tiny(tok):
    return tiny_model(seed=0, tokenizer=tok)


# ---- filters ------------------------------------------------------------------------------------
NAMES = ("acme", "mower", "blade")


@pytest.mark.parametrize(
    ("text", "kwargs", "reason"),
    [
        ("Save on the Acme mower blade today!", {}, None),
        ("", {}, "empty"),
        ("Acme", {"min_words": 3}, "too short"),
        ("Acme " + "great " * 40, {}, "too long: 41 words"),
        ("Acme blade " + "x" * 300, {"max_words": 100}, "too long: 3"),
        ("Guaranteed to last: the Acme blade.", {}, "banned claim: guaranteed"),
        ("The Acme blade cures lawn envy.", {}, "banned claim: cures"),
        ("The #1 Acme blade for your lawn.", {}, "banned claim: #1"),
        ("A miracle for your lawn, Acme.", {}, "banned claim: miracle"),
        ("Secure your curb appeal with Acme.", {}, None),  # "cure" only as a whole word
        ("Shop the best lawn gear today.", {}, "does not name the product"),
        ("Shop the best lawn gear today.", {"require_name": False}, None),
        ("Acme: totally risk-free!", {"banned": ("totally",)}, "banned claim: totally"),
        ("Acme: totally risk-free!", {"banned": ()}, None),
    ],
)
def test_filter_rules(text, kwargs, reason):
    got = CopyFilter(FilterConfig(**kwargs)).check(text, names=NAMES)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason), got


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ('"Shop the Acme blade now!"', "Shop the Acme blade now!"),
        ("Ad: Shop the Acme blade.\nSecond line", "Shop the Acme blade."),
        ("\n\n  **Acme  blades,   sharp.**  ", "Acme blades, sharp."),
        ("Headline - Acme blade", "Acme blade"),
        ("", ""),
    ],
)
def test_clean(raw, cleaned):
    assert clean(raw) == cleaned


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min_words": 0}, ValueError),
        ({"min_words": 10, "max_words": 5}, ValueError),
        ({"dedup_threshold": 0.0}, ValueError),
        ({"max_chars": 0}, ValueError),
        ({"banned": "cure"}, TypeError),
    ],
)
def test_filter_config_rejects_bad_settings(kwargs, error):
    with pytest.raises(error):
        FilterConfig(**kwargs)


def test_dedup_removes_exact_and_near_duplicates():
    texts = ["Acme blade A", "acme blade a", "Acme blade B", "Acme blade C"]
    emb = np.array([[1, 0, 0], [1, 0, 0], [0.999, 0.0447, 0], [0, 1, 0]], np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = CopyFilter(FilterConfig(dedup_threshold=0.99)).apply(texts, names=NAMES, embeddings=emb)
    assert got[0] is None and got[3] is None
    assert got[1] is not None and got[1].startswith("duplicate of #0")
    assert got[2] is not None and got[2].startswith("near-duplicate of #0")


def test_name_words_use_brand_and_title(market):
    p = market.catalog.products[0]
    words = name_words(p)
    assert words and all(w == w.lower() for w in words)
    if p.brand:
        assert words[0] == p.brand.lower()


def test_distinct_n():
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n([], 2) == 0.0


# ---- prompts and sampling -----------------------------------------------------------------------
def test_prompt_carries_product_segment_and_style(market):
    p = market.catalog.products[2]
    segs = market.population.config.segments
    a = build_messages(p, segs[0], Style(tone="urgent", urgency=True))[1]["content"]
    b = build_messages(p, segs[1], Style(tone="premium", cta=False, max_words=9))[1]["content"]
    assert a != b
    assert segs[0].name.replace("_", " ") in a and segs[1].name.replace("_", " ") in b
    assert "urgent" in a and "act now" in a and "call to action" in a
    assert "premium" in b and "call to action" not in b and "Max 9 words" in b
    with pytest.raises(ValueError, match="tone"):
        Style(tone="sarcastic")


def test_sampling_is_seeded_and_conditioned(tiny, market):
    gen = CopyGenerator(tiny, market, sampling=SamplingConfig(max_new_tokens=8), filters=OPEN)
    p0 = gen.prompt(CopyRequest(1, 0))
    p1 = gen.prompt(CopyRequest(1, 3))
    a = sample(tiny, [p0], 4, config=gen.sampling, seed=5)
    b = sample(tiny, [p0], 4, config=gen.sampling, seed=5)
    c = sample(tiny, [p0], 4, config=gen.sampling, seed=6)
    d = sample(tiny, [p1], 4, config=gen.sampling, seed=5)
    assert a.texts == b.texts
    assert a.texts != c.texts
    assert a.texts != d.texts  # the segment changes the prompt, and so the output


def test_left_padding_and_shared_prefill_match_a_plain_forward(tiny, market):
    """Completion log-probs from the cached, left-padded, prefix-shared path equal those of one
    plain forward over each (prompt + completion) alone."""
    gen = CopyGenerator(tiny, market, sampling=SamplingConfig(max_new_tokens=6))
    prompts = [gen.prompt(CopyRequest(0, 0)), gen.prompt(CopyRequest(5, 2))]
    s = sample(tiny, prompts, 3, config=gen.sampling, seed=0)
    with torch.no_grad():
        fast = completion_logprobs(tiny.model, s, gen.sampling.temperature)
        for row in range(6):
            p = s.prompt_ids[row // 3][s.prompt_mask[row // 3].bool()]
            m = s.completion_mask[row].bool()
            c = s.completion_ids[row][m]
            ids = torch.cat([p, c])[None]
            logits = tiny.model(input_ids=ids).logits[0, len(p) - 1 : -1].float()
            lp = torch.log_softmax(logits / gen.sampling.temperature, -1)
            want = lp.gather(-1, c[:, None]).squeeze(-1)
            torch.testing.assert_close(fast[row][m], want, atol=2e-4, rtol=1e-4)


def test_generate_writes_variants_with_origin(tiny, market, tmp_path):
    gen = CopyGenerator(tiny, market, sampling=SamplingConfig(max_new_tokens=8), filters=OPEN)
    reqs = [CopyRequest(3, 1), CopyRequest(0, 4)]
    out = gen.generate(reqs, 4, seed=2)
    assert len(out.variants) == 8 and out.report.total == 8
    vt = gen.variants_table(out)
    path = vt.write(tmp_path / "v.parquet")
    from copyloop.contract import VariantsTable

    back = VariantsTable.read(path)
    assert back.n_variants == len(out.kept)
    attrs = back.attributes()[0]
    assert {"model", "version", "prompt", "seed", "sample", "segment"} <= set(attrs)
    assert back.table.column("origin")[0].as_py() == "generator:tiny-llama@base"
    # campaigns contiguous (the contract's rule), campaign 0 first
    assert back.table.column("campaign_id")[0].as_py() == market.catalog.campaign_ids[0]
    with pytest.raises(ValueError, match="campaign"):
        gen.generate([CopyRequest(10_000, 0)], 2)


# ---- models -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", "not a .gguf"),
        (
            lambda d: (d / "bad.gguf").write_bytes(b"PK\x03\x04junk") and d / "bad.gguf",
            "not a GGUF",
        ),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json"),
    ],
)
def test_bad_model_paths_fail_clearly(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=match) as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_truncated_gguf_fails_clearly(tmp_path):
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 40)
    with pytest.raises(ModelLoadError, match="could not read the GGUF") as e:
        resolve_model_dir(bad)
    assert str(bad) in str(e.value)


def test_save_load_round_trip(tiny, tmp_path):
    out = save_model(tiny, tmp_path / "v1", version="v1", made_by="test")
    back = load_model(out, device="cpu")
    assert (back.name, back.version) == ("tiny-llama", "v1")
    assert json.loads((out / "copyloop_model.json").read_text())["parent"] == "tiny-llama@base"
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, tiny.model(ids).logits)


# ---- tuning -------------------------------------------------------------------------------------
def test_rloo_advantages_leave_one_out():
    adv = rloo_advantages(np.array([3.0, 1.0, 2.0, 2.0]), 2)
    assert adv.tolist() == pytest.approx(np.array([2.0, -2.0, 0.0, 0.0]) / np.std([3, 1, 2, 2]))
    with pytest.raises(ValueError):
        TuneConfig(samples_per_prompt=1)


def test_online_tuning_changes_weights_and_raises_reward(tiny, market, tmp_path):
    lm = tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer)
    reward = side_reward(lm)
    before_w = {k: v.clone() for k, v in lm.model.state_dict().items()}
    before = mean_reward(lm, market, reward)
    cfg = TuneConfig(
        steps=10,
        prompts_per_step=2,
        samples_per_prompt=8,
        lr=1e-2,
        max_new_tokens=4,
        train_layers=None,
        kl_coef=0.0,
        adaptive_kl=False,
        log_reward=False,
        seed=0,
    )
    res = online_tune(
        lm,
        market,
        reward,
        tmp_path / "tuned",
        campaigns=[0, 1],
        segments=[0],
        config=cfg,
        filters=OPEN,
    )
    after = mean_reward(lm, market, reward)
    changed = [k for k, v in lm.model.state_dict().items() if not torch.equal(v, before_w[k])]
    assert changed
    # Seeded (measured 0.48 -> 0.75 here); tolerance: +0.1 on 64 fresh samples of the prompts.
    assert after > before + 0.1, (before, after)
    assert len(res.history) == 10 and {"reward", "kl", "distinct2"} <= set(res.history[0])
    assert (res.out / "tune.png").is_file() and (res.out / "metrics.json").is_file()
    back = load_model(res.out, device="cpu")
    assert back.version == res.version == lm.version


def test_best_of_n_distillation_learns_the_kept_lines(tiny, market, tmp_path):
    from copyloop.generator.tune import best_of_n_tune

    lm = tiny_model(seed=0, init_std=0.2, tokenizer=tiny.tokenizer)
    reward = side_reward(lm)
    cfg = TuneConfig(steps=6, batch_size=4, lr=1e-2, max_new_tokens=4, train_layers=None)
    res = best_of_n_tune(
        lm,
        market,
        reward,
        tmp_path / "bon",
        campaigns=[0, 1],
        segments=[0],
        n=8,
        keep=2,
        config=cfg,
        filters=OPEN,
    )
    assert res.summary["kept_mean_reward"] > res.summary["sampled_valid_mean_reward"]
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0]  # the kept lines became likelier (4 lines, seen 6 times)
    assert load_model(res.out, device="cpu").version.startswith("bon-")
    with pytest.raises(ValueError, match="keep"):
        best_of_n_tune(lm, market, reward, tmp_path / "x", campaigns=[0], n=4, keep=4)


def test_train_layers_freezes_the_rest(tiny):
    from copyloop.generator.tune import trainable_parameters

    lm = _fresh_tiny(tiny.tokenizer)
    params = trainable_parameters(lm.model, 1)
    n_train = sum(p.numel() for p in params)
    assert 0 < n_train < sum(p.numel() for p in lm.model.parameters())
    assert not lm.model.model.embed_tokens.weight.requires_grad
    assert all(p.requires_grad for p in lm.model.model.layers[-1].parameters())


def _toy_log(market, vt, rng, shows=4000):
    """A log where variant 0 of each group has twice the CTR of the others."""
    from copyloop.contract import DecisionLog

    groups = vt.campaign_variants()
    rows = []
    for cid, vids in groups.items():
        k = len(vids)
        probs = np.full(k, 1.0 / k)
        for _ in range(shows):
            a = int(rng.integers(k))
            ctr = 0.04 if a == 0 else 0.02
            rows.append((cid, vids, a, probs, float(rng.random() < ctr)))
    n = len(rows)
    return DecisionLog.from_arrays(
        event_id=[f"e{i}" for i in range(n)],
        campaign_id=[r[0] for r in rows],
        context=np.zeros((n, 2)),
        candidates=[r[1] for r in rows],
        action=[r[1][r[2]] for r in rows],
        action_index=[r[2] for r in rows],
        propensity=[r[3][r[2]] for r in rows],
        reward=[r[4] for r in rows],
    )


def test_variant_feedback_shrinks_and_ranks(tiny, market):
    gen = CopyGenerator(tiny, market, sampling=SamplingConfig(max_new_tokens=6), filters=OPEN)
    out = gen.generate([CopyRequest(0, 0), CopyRequest(1, 0)], 4, seed=0)
    vt = gen.variants_table(out)
    log = _toy_log(market, vt, np.random.default_rng(0))
    fb = variant_feedback(log, vt, prior_strength=300.0)
    first = [vids[0] for vids in vt.campaign_variants().values()]
    is_first = np.array([v in first for v in fb.variant_ids])
    assert (fb.weight[is_first] > 0).all() and (fb.weight[~is_first] < 0).all()
    # shrinkage: posterior between the raw estimate and the group mean
    lo = np.minimum(fb.ctr_ipw, fb.group_mean) - 1e-12
    hi = np.maximum(fb.ctr_ipw, fb.group_mean) + 1e-12
    assert ((fb.posterior >= lo) & (fb.posterior <= hi)).all()
    weak = variant_feedback(log, vt, prior_strength=1e9)
    assert np.abs(weak.weight).max() < 1e-3  # an overwhelming prior tells nothing apart
    with pytest.raises(ValueError, match="tells no variant apart"):
        offline_tune(tiny, market, weak, "unused")


def test_offline_tuning_moves_towards_desirable_variants(tiny, market, tmp_path):
    lm = _fresh_tiny(tiny.tokenizer)
    gen = CopyGenerator(lm, market, sampling=SamplingConfig(max_new_tokens=6), filters=OPEN)
    out = gen.generate([CopyRequest(0, 0), CopyRequest(1, 0)], 4, seed=0)
    vt = gen.variants_table(out)
    fb = variant_feedback(_toy_log(market, vt, np.random.default_rng(1)), vt)
    from copyloop.generator.tune import samples_from_texts

    def margin():
        s = samples_from_texts(lm, fb.prompts, fb.texts)
        with torch.no_grad():
            lp = completion_logprobs(lm.model, s).sum(1).numpy()
        return float(lp[fb.weight > 0].mean() - lp[fb.weight < 0].mean())

    m0 = margin()
    cfg = TuneConfig(steps=6, batch_size=4, lr=3e-3, kl_coef=0.5, train_layers=None, seed=0)
    res = offline_tune(lm, market, fb, tmp_path / "off", config=cfg)
    assert margin() > m0 + 0.5  # desirable lines became likelier relative to undesirable ones
    assert res.summary["desirable"] > 0 and res.summary["undesirable"] > 0


@pytest.mark.parametrize("tuner", ["kto", "dpo"])
def test_loop_runs_end_to_end(tiny, market, tmp_path, tuner):
    from copyloop.generator.loop import LoopConfig, run_loop

    lm = _fresh_tiny(tiny.tokenizer)
    cfg = LoopConfig(
        rounds=2,
        campaigns=(0, 1),
        segments=(0, 2),
        n=4,
        impressions=4000,
        tune=TuneConfig(steps=2, batch_size=2, lr=1e-3, train_layers=None, prior_strength=10.0),
        judge_users=64,
        tuner=tuner,
        min_ratio=1.0,
    )
    res = run_loop(
        lm, market, cfg, tmp_path, sampling=SamplingConfig(max_new_tokens=6), filters=OPEN
    )
    assert [r.round for r in res] == [0, 1]
    assert res[0].impressions == 4000 and res[0].tuned is not None
    assert res[1].model.endswith("@loop-r1")
    assert 0 < res[0].true_ctr < 0.2 and 0 < res[0].served_ctr < 0.2
    from copyloop.contract import DecisionLog

    log = DecisionLog.read(res[0].log)
    assert log.n_rows == 4000 and np.all((log.propensity > 0) & (log.propensity <= 1))
    assert json.loads((tmp_path / "rounds.json").read_text())["rounds"][1]["round"] == 1
    made_by = json.loads((tmp_path / "round0" / "model" / "copyloop_model.json").read_text())
    assert ("DPO" in made_by["made_by"]) == (tuner == "dpo")
    with pytest.raises(ValueError, match="tuner"):
        LoopConfig(tuner="ppo")


def test_world_reward_is_true_ctr(market):
    from copyloop.generator.reward import WorldReward, parse_reward

    r = WorldReward(market, users_per_segment=64, seed=0)
    texts = ["Shop the deal today", "A line"]
    got = r(texts, 0, 1)
    want = market.world.ctr_of_texts(texts, 0, r.users(1)).mean(0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (got > 0).all() and (got < 0.2).all()
    proxy = parse_reward("proxy:7", market, users_per_segment=64)
    assert not np.allclose(proxy(texts, 0, 1), got)
    with pytest.raises(ValueError, match="world, clicksim"):
        parse_reward("magic", market)


# ---- CLI ----------------------------------------------------------------------------------------
def test_cli_generate_with_a_saved_model(tiny, tmp_path, market):
    from typer.testing import CliRunner

    from copyloop.cli import app

    path = save_model(tiny, tmp_path / "m", version="base", made_by="test")
    cfg = tmp_path / "market.toml"
    cfg.write_text(
        "seed = 1\n[catalog]\nn_campaigns = 24\nseed = 3\n[population]\nn_users = 4000\n"
    )
    r = CliRunner().invoke(
        app,
        [
            "generate",
            "--campaign",
            "2",
            "--segment",
            "busy_parent",
            "--n",
            "4",
            "--model",
            str(path),
            "--config",
            str(cfg),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout[r.stdout.index("{") :])
    assert data["segment"] == "busy_parent" and len(data["variants"]) == 4
    bad = CliRunner().invoke(
        app, ["generate", "--campaign", "0", "--segment", "0", "--model", str(tmp_path / "nope")]
    )
    assert bad.exit_code == 2 and "does not exist" in bad.output


# ---- the real model (slow) ----------------------------------------------------------------------
@pytest.mark.slow
def test_real_model_writes_segment_conditioned_copy(market):
    lm = load_model(device="cpu")
    assert lm.name == "SmolLM2-135M-Instruct" and lm.dtype == torch.float32
    gen = CopyGenerator(lm, market)
    a = gen.generate([CopyRequest(4, 0)], 8, seed=0)
    b = gen.generate([CopyRequest(4, 1)], 8, seed=0)
    assert [v.text for v in a.variants] != [v.text for v in b.variants]
    assert a.report.kept >= 2 and b.report.kept >= 2  # the real model names the product
    p = render_prompt(
        lm.tokenizer,
        build_messages(market.catalog.products[4], market.population.config.segments[0], Style()),
    )
    assert p.endswith("<|im_start|>assistant\n")


def test_cli_tune_and_compare_with_tiny_models(tiny, tmp_path, market):
    from typer.testing import CliRunner

    from copyloop.cli import app

    base = save_model(tiny, tmp_path / "base", version="base", made_by="test")
    cfg = tmp_path / "market.toml"
    cfg.write_text(
        "seed = 1\n[catalog]\nn_campaigns = 24\nseed = 3\n[population]\nn_users = 4000\n"
    )
    common = ["--config", str(cfg)]
    r = CliRunner().invoke(
        app,
        [
            "generator",
            "tune",
            "--mode",
            "online",
            "--model",
            str(base),
            "--out",
            str(tmp_path / "t"),
            "--campaigns",
            "0-1",
            "--steps",
            "1",
            "--prompts-per-step",
            "1",
            "--samples-per-prompt",
            "2",
            "--train-layers",
            "0",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t" / "metrics.json").is_file()
    r = CliRunner().invoke(
        app,
        [
            "generator",
            "compare",
            "--base",
            str(base),
            "--tuned",
            str(tmp_path / "t"),
            "--campaigns",
            "0-1",
            "--limit",
            "1",
            "--n",
            "2",
            "--judge-users",
            "16",
            "--json",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert out["tuned"]["model"].endswith("@online-1x2-s0") and out["requests"] == 5
    bad = CliRunner().invoke(app, ["generator", "tune", "--mode", "sideways", "--out", "x"])
    assert bad.exit_code == 2 and "--mode" in bad.output


def _nucleus_probs(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The exact top-p distribution of one row (keep a token when the mass of the tokens
    strictly more probable than it is at most top_p)."""
    p = torch.softmax(logits.double(), -1)
    above = torch.stack([p[p > v].sum() for v in p])
    q = torch.where(above <= top_p, p, torch.zeros_like(p))
    return q / q.sum()


@pytest.mark.parametrize(
    ("shape", "top_p", "max_rounds"),
    [
        ("peaked", 0.9, 64),  # a few tokens carry the mass (a trained model's usual case)
        ("flat", 0.9, 64),  # near uniform: the nucleus is most of the vocabulary
        ("flat", 0.5, 64),
        ("peaked", 0.3, 64),  # only the top token or two
        ("flat", 0.9, 1),  # one round, then the sort filter for the rows still pending
    ],
)
def test_rejection_sampler_draws_the_nucleus(shape, top_p, max_rounds):
    """Seeded: 40,000 draws of one row; every draw is in the nucleus and each token's frequency
    is within 0.01 of its nucleus probability (SE <= 0.0025 at these sizes)."""
    g = torch.Generator().manual_seed(0)
    v = 40
    logits = torch.randn(v, generator=g) * (3.0 if shape == "peaked" else 0.3)
    want = _nucleus_probs(logits, top_p)
    rows = logits.expand(40_000, v).contiguous()
    gen = torch.Generator().manual_seed(1)
    toks = _draw_rejection(rows, top_p, gen, max_rounds=max_rounds)
    freq = torch.bincount(toks, minlength=v).double() / len(toks)
    assert bool((freq[want == 0] == 0).all()), "a token outside the nucleus was drawn"
    assert float((freq - want).abs().max()) <= 0.01
    # and the sort filter's draws agree with the same distribution
    cfg = SamplingConfig(sampler="sort", temperature=1.0, top_p=top_p)
    sort_freq = torch.bincount(_draw(rows, cfg, gen), minlength=v).double() / len(toks)
    assert float((sort_freq - want).abs().max()) <= 0.01


def test_sampler_setting_is_checked():
    with pytest.raises(ValueError, match="sampler"):
        SamplingConfig(sampler="greedy")


def test_static_cache_decodes_what_the_dynamic_cache_does(tiny, market):
    """The static-cache path (fixed shapes, for CUDA graphs) feeds the model the same context:
    same seed and prompts -> the same completions as the dynamic cache."""
    gen = CopyGenerator(tiny, market, sampling=SamplingConfig(max_new_tokens=6))
    prompts = [gen.prompt(CopyRequest(0, 0)), gen.prompt(CopyRequest(5, 2))]
    dyn = sample(tiny, prompts, 1, config=gen.sampling, seed=3)
    sta = sample(tiny, prompts, 1, config=gen.sampling, seed=3, static_cache=True)
    assert dyn.texts == sta.texts
