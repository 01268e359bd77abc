"""Fine-tuning the copy generator from clicks, two ways, both ending in a saved model version.

**Online** (:func:`online_tune`): an RLOO policy-gradient loop. Each step samples ``k`` lines for
each of a few (campaign, segment) prompts, scores them with a :class:`RewardFn` (the click
world's expected CTR, or the learned click simulator's), and takes one AdamW step on

    loss = mean_i[ −A_i · log π(y_i | x_i) + β · KL_i ] / max_new_tokens,

with the leave-one-out advantage ``A_i = (r_i − mean_{j≠i} r_j) / std(r)`` (the other samples of
the same prompt are the baseline) and the per-sequence KL to the frozen reference model
estimated with the non-negative ``k3`` estimator on the sampled tokens. Lines the post-filters
reject (no product name, banned claim, too long) earn reward 0. β adapts so the measured KL
stays under ``kl_budget``.

**Offline** (:func:`offline_tune`): from a DecisionLog's logged clicks on generated variants.
Single clicks are ~2 % positives and mostly noise, so the unit of feedback is the variant: its
CTR is estimated with self-normalised inverse-propensity weights over the rows that offered it
(the logging policy did not show variants uniformly), then shrunk towards its group's mean with
an empirical-Bayes Beta prior of ``prior_strength`` pseudo-impressions; variants seen too little
to tell apart get weight near 0 instead of a spurious label. Each variant above its group's mean
is *desirable*, below is *undesirable*, with weight = |shrunk relative lift|, and the model takes
KTO steps (Ethayarajh et al. 2024: unpaired binary feedback against the reference model).

Only the top ``train_layers`` decoder layers (and the final norm) are trained by default: the
backward pass then stops there, which is what makes a step affordable on a CPU.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.generator.filters import CopyFilter, FilterConfig, clean, name_words
from copyloop.generator.generate import (
    Samples,
    SamplingConfig,
    cache_keyword,
    distinct_n,
    returned_cache,
    sample,
)
from copyloop.generator.models import LoadedModel, save_model
from copyloop.generator.prompts import CopyRequest, Style, build_messages, render_prompt
from copyloop.generator.reward import RewardFn


@dataclass(frozen=True)
class TuneConfig:
    """Settings of a tuning run (both modes).

    Attributes:
        steps: optimiser steps.
        prompts_per_step: (campaign, segment) prompts per online step.
        samples_per_prompt: lines sampled per prompt (the RLOO group, >= 2).
        lr: AdamW learning rate.
        kl_coef: initial β of the KL penalty (online) or KTO's β (offline).
        kl_budget: most KL to the reference, in nats per sequence; online, β is steered so the
            smoothed KL sits at half of it.
        adaptive_kl: adapt β online.
        train_layers: train only the top this many decoder layers (+ final norm); None = all
            parameters.
        max_new_tokens: most tokens per sampled line.
        temperature: sampling temperature (log-probabilities use the same temperature).
        grad_clip: gradient-norm clip.
        invalid_reward: reward of lines the post-filters reject (as reported; see
            :func:`shape_rewards` for what the gradient sees).
        log_reward: policy gradient on log-rewards (relative CTR); see :func:`shape_rewards`.
        batch_size: variants per offline step.
        prior_strength: pseudo-impressions of the offline empirical-Bayes prior.
        eval_every: offline / DPO: steps between evaluations (sampled reward and distinct-2;
            in DPO also the sampled KL checks).
        eval_prompts: prompts per offline / DPO evaluation.
        seed: seed of prompt order, sampling and initialisation.
    """

    steps: int = 40
    prompts_per_step: int = 4
    samples_per_prompt: int = 4
    lr: float = 1e-4
    kl_coef: float = 0.05
    kl_budget: float = 6.0
    adaptive_kl: bool = True
    train_layers: int | None = 8
    max_new_tokens: int = 24
    temperature: float = 0.9
    grad_clip: float = 1.0
    invalid_reward: float = 0.0
    log_reward: bool = True
    batch_size: int = 8
    prior_strength: float = 300.0
    eval_every: int = 5
    eval_prompts: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"`steps` must be >= 1, got {self.steps}")
        if self.prompts_per_step < 1:
            raise ValueError(f"`prompts_per_step` must be >= 1, got {self.prompts_per_step}")
        if self.samples_per_prompt < 2:
            raise ValueError(
                f"`samples_per_prompt` must be >= 2 (RLOO needs a leave-one-out baseline), got "
                f"{self.samples_per_prompt}"
            )
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}")
        if self.kl_coef < 0 or not self.kl_budget > 0:
            raise ValueError("`kl_coef` must be >= 0 and `kl_budget` > 0")
        if self.train_layers is not None and self.train_layers < 1:
            raise ValueError(f"`train_layers` must be >= 1 or None, got {self.train_layers}")
        if self.batch_size < 2:
            raise ValueError(f"`batch_size` must be >= 2, got {self.batch_size}")
        if self.prior_strength < 0:
            raise ValueError(f"`prior_strength` must be >= 0, got {self.prior_strength}")
        if self.eval_every < 1 or self.eval_prompts < 1:
            raise ValueError(
                f"`eval_every` and `eval_prompts` must be >= 1, got {self.eval_every} and "
                f"{self.eval_prompts}"
            )


@dataclass
class TuneResult:
    """What a tuning run produced."""

    out: Path
    version: str
    history: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# ---- model plumbing ---------------------------------------------------------------------
def trainable_parameters(model: Any, train_layers: int | None) -> list[Any]:
    """Freeze all but the top ``train_layers`` decoder layers and the final norm (None = all);
    returns the parameters left trainable."""
    if train_layers is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return [p for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = list(base.layers)
    keep = layers[-min(train_layers, len(layers)) :]
    params = [p for layer in keep for p in layer.parameters()]
    if hasattr(base, "norm"):
        params += list(base.norm.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def completion_logprobs(
    model: Any, s: Samples, temperature: float = 1.0
) -> Any:  # torch.Tensor (B, T)
    """Log-probability of each sampled completion token under ``model`` (0 on padding).

    Each prompt is run once and its KV cache repeated for its samples, so a prompt's cost is
    paid once per group (as in :func:`sample`). Gradients flow when grad mode is on.
    """
    import torch

    rows = s.row_prompt
    pos = (s.prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=s.prompt_ids,
        attention_mask=s.prompt_mask,
        position_ids=pos,
        use_cache=True,
        logits_to_keep=1,
    )
    past = returned_cache(out)
    first = out.logits[:, -1:, :]
    if rows.shape[0] != s.prompt_ids.shape[0] or bool(
        (rows != torch.arange(rows.shape[0], device=rows.device)).any()
    ):
        past.reorder_cache(rows)  # any number of completions per prompt, one prefill each
        first = first.index_select(0, rows)
    comp, cmask = s.completion_ids, s.completion_mask
    t = comp.shape[1]
    if t > 1:
        attn = torch.cat([s.prompt_mask.index_select(0, rows), cmask], 1)
        cpos = pos[:, -1:].index_select(0, rows) + 1 + torch.arange(t, device=comp.device)
        out2 = model(
            input_ids=comp[:, :-1],
            attention_mask=attn[:, :-1],
            position_ids=cpos[:, :-1],
            use_cache=True,
            **{cache_keyword(model): past},
        )
        logits = torch.cat([first, out2.logits], 1)
    else:
        logits = first
    logp = torch.log_softmax(logits.float() / temperature, -1)
    tok = logp.gather(-1, comp[:, :, None]).squeeze(-1)
    return tok * cmask


def sequence_kl(policy: Any, ref: Any, s: Samples, temperature: float = 1.0) -> Any:
    """Per-sequence KL(π‖ref) estimate on samples from π: Σ_t log π − log ref, (B,)."""
    import torch

    with torch.inference_mode():
        return (
            completion_logprobs(policy, s, temperature) - completion_logprobs(ref, s, temperature)
        ).sum(1)


def samples_from_texts(
    lm: LoadedModel,
    prompts: Sequence[str],
    completions: Sequence[str],
    per_prompt: int | Sequence[int] = 1,
) -> Samples:
    """Tokenise given completions of prompts as :class:`Samples`, each completion ending with
    the end-of-sequence token, for scoring logged variants. ``per_prompt`` consecutive
    completions belong to each prompt — one count for all, or one per prompt — and a prompt's
    forward pass is shared by its completions."""
    import torch

    counts = [per_prompt] * len(prompts) if isinstance(per_prompt, int) else list(per_prompt)
    if len(counts) != len(prompts) or min(counts, default=1) < 1:
        raise ValueError(f"need one count >= 1 per prompt, got {counts} for {len(prompts)}")
    if len(completions) != sum(counts):
        raise ValueError(
            f"{len(completions)} completions for {len(prompts)} prompts with {sum(counts)} "
            "completions between them"
        )
    tok = lm.tokenizer
    dev = lm.device
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    eos = int(tok.eos_token_id)
    rows = [tok(c, add_special_tokens=False)["input_ids"] + [eos] for c in completions]
    t = max(len(r) for r in rows)
    pad = int(tok.pad_token_id)
    comp = torch.full((len(rows), t), pad, dtype=torch.long)
    cmask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        comp[i, : len(r)] = torch.tensor(r)
        cmask[i, : len(r)] = 1
    return Samples(
        prompt_ids=enc["input_ids"].to(dev),
        prompt_mask=enc["attention_mask"].to(dev),
        row_prompt=torch.arange(len(prompts), device=dev).repeat_interleave(
            torch.tensor(counts, device=dev)
        ),
        completion_ids=comp.to(dev),
        completion_mask=cmask.to(dev),
        texts=list(completions),
    )


def shape_rewards(
    rewards: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], log: bool = True
) -> npt.NDArray[np.float64]:
    """Rewards as the policy gradient sees them. With ``log``, valid lines score log-CTR (a
    relative scale: +15 % CTR is +0.14 whatever the segment's base rate) and rejected lines the
    log of half the smallest valid reward in the batch, so being valid matters but does not drown
    the differences between valid lines. Without ``log``, rewards pass through.

    Example:
        >>> shape_rewards(np.array([0.02, 0.04, 0.0]), np.array([True, True, False])).round(2)
        array([-3.91, -3.22, -4.61])
    """
    r = np.asarray(rewards, np.float64)
    if not log:
        return r
    ok = valid & (r > 0)
    if not ok.any():
        return np.zeros_like(r)
    floor = 0.5 * float(r[ok].min())
    return np.log(np.where(ok, r, floor))


def rloo_advantages(
    rewards: npt.NDArray[np.float64], k: int, valid: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float64]:
    """Leave-one-out advantages of ``rewards`` laid out as groups of ``k`` consecutive rows,
    divided by the standard deviation of the valid rows' rewards (1 when it is 0).

    Example:
        >>> rloo_advantages(np.array([1.0, 0.0, 0.0, 0.0]), 4).round(3).tolist()
        [2.309, -0.77, -0.77, -0.77]
    """
    r = np.asarray(rewards, np.float64).reshape(-1, k)
    loo = (r.sum(1, keepdims=True) - r) / (k - 1)
    adv = (r - loo).ravel()
    pool = rewards if valid is None or valid.sum() < 2 else rewards[valid]
    sd = float(np.std(pool))
    return adv / sd if sd > 0 else adv


# ---- online -----------------------------------------------------------------------------
def _requests(market: Any, campaigns: Sequence[int], segments: Sequence[int]) -> list[CopyRequest]:
    return [CopyRequest(int(c), int(s), Style()) for c in campaigns for s in segments]


def _prompt(lm: LoadedModel, market: Any, req: CopyRequest) -> str:
    return render_prompt(
        lm.tokenizer,
        build_messages(
            market.catalog.products[req.campaign],
            market.population.config.segments[req.segment],
            req.style,
        ),
    )


def score_lines(
    texts: Sequence[str],
    reqs: Sequence[CopyRequest],
    market: Any,
    reward: RewardFn,
    filt: CopyFilter,
    invalid_reward: float = 0.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], list[str]]:
    """Reward of each raw completion (for the request of its row): cleaned, per-line filtered
    (rejected lines get ``invalid_reward``), scored per (campaign, segment) group."""
    cleaned = [clean(t) for t in texts]
    valid = np.array(
        [
            filt.check(c, names=name_words(market.catalog.products[r.campaign])) is None
            for c, r in zip(cleaned, reqs, strict=True)
        ]
    )
    rewards = np.full(len(texts), float(invalid_reward))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(reqs):
        if valid[i]:
            groups.setdefault((r.campaign, r.segment), []).append(i)
    for (c, sg), idx in groups.items():
        rewards[idx] = reward([cleaned[i] for i in idx], c, sg)
    return rewards, valid, cleaned


def online_tune(
    lm: LoadedModel,
    market: Any,
    reward: RewardFn,
    out: str | Path,
    *,
    campaigns: Sequence[int],
    segments: Sequence[int] | None = None,
    config: TuneConfig | None = None,
    filters: FilterConfig | None = None,
    version: str | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TuneResult:
    """RLOO fine-tuning against ``reward``; trains ``lm.model`` in place and saves a version.

    Args:
        lm: the model to tune (its current weights are also the frozen reference).
        market: the market whose products and segments prompts describe.
        reward: the reward function.
        out: folder of the new model version (weights, config, tokenizer, metrics, plot).
        campaigns: campaign indices to train on (hold others out to test generalisation).
        segments: segment indices (default all).
        config: tuning settings.
        filters: post-filter rules (rejected lines earn ``config.invalid_reward``).
        version: version id (default ``online-<steps>x<batch>-s<seed>``).
        progress: called after each step with (steps done, that step's metrics).
    """
    import torch

    cfg = config or TuneConfig()
    if not campaigns:
        raise ValueError("`campaigns` is empty — give at least one campaign to train on")
    segs = list(range(market.population.n_segments)) if segments is None else list(segments)
    reqs_all = _requests(market, campaigns, segs)
    prompts_all = [_prompt(lm, market, r) for r in reqs_all]
    ref = copy.deepcopy(lm.model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    model = lm.model
    params = trainable_parameters(model, cfg.train_layers)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    filt = CopyFilter(filters)
    samp = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0)
    rng = np.random.default_rng([cfg.seed, 5381])
    k = cfg.samples_per_prompt
    beta = cfg.kl_coef
    kl_ema = 0.0
    history: list[dict[str, float]] = []
    order = rng.permutation(len(reqs_all))
    cursor = 0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        if cursor + cfg.prompts_per_step > len(order):
            order, cursor = rng.permutation(len(reqs_all)), 0
        pick = order[cursor : cursor + cfg.prompts_per_step].tolist()
        cursor += cfg.prompts_per_step
        model.eval()
        s = sample(
            lm,
            [prompts_all[i] for i in pick],
            k,
            config=samp,
            seed=int(rng.integers(2**31)),
        )
        row_reqs = [reqs_all[pick[i // k]] for i in range(len(s.texts))]
        r, valid, cleaned = score_lines(s.texts, row_reqs, market, reward, filt, cfg.invalid_reward)
        adv = torch.tensor(
            rloo_advantages(shape_rewards(r, valid, cfg.log_reward), k, valid),
            dtype=torch.float32,
            device=lm.device,
        )
        with torch.inference_mode():
            ref_lp = completion_logprobs(ref, s, cfg.temperature)
        model.train()
        lp = completion_logprobs(model, s, cfg.temperature)
        diff = (ref_lp.clone() - lp) * s.completion_mask
        k3 = (torch.exp(diff) - diff - 1.0) * s.completion_mask
        seq_lp = lp.sum(1)
        kl_seq = k3.sum(1)
        loss = (-(adv * seq_lp) + beta * kl_seq).mean() / cfg.max_new_tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        model.eval()
        kl = float((lp.detach() - ref_lp).sum(1).mean())
        kl_ema = kl if step == 0 else 0.7 * kl_ema + 0.3 * kl
        if cfg.adaptive_kl:
            # Multiplicative controller towards half the budget on a smoothed KL (one step's
            # estimate from 16 samples is noisy): at most ×1.35 or ÷1.35 per step.
            err = float(np.clip(kl_ema / (0.5 * cfg.kl_budget) - 1.0, -1.0, 1.0))
            beta = float(np.clip(beta * np.exp(0.3 * err), 1e-3, 1.0))
        d2 = float(np.mean([distinct_n(cleaned[g * k : (g + 1) * k], 2) for g in range(len(pick))]))
        m = {
            "step": float(step + 1),
            "reward": float(r[valid].mean()) if valid.any() else float("nan"),
            "reward_all": float(r.mean()),
            "valid": float(valid.mean()),
            "kl": kl,
            "beta": float(beta),
            "distinct2": d2,
            "loss": float(loss.detach()),
            "grad_norm": gnorm,
            "seconds": time.perf_counter() - t0,
        }
        history.append(m)
        if progress is not None:
            progress(step + 1, m)
    ver = version or f"online-{cfg.steps}x{cfg.prompts_per_step * k}-s{cfg.seed}"
    return _finish(
        lm,
        out,
        ver,
        "online RLOO",
        cfg,
        history,
        {"campaigns": [int(c) for c in campaigns], "segments": segs},
    )


def _finish(
    lm: LoadedModel,
    out: str | Path,
    version: str,
    made_by: str,
    cfg: TuneConfig,
    history: list[dict[str, float]],
    extra: dict[str, Any],
) -> TuneResult:
    out_p = Path(out)
    last = history[-max(1, len(history) // 5) :]

    def tail_mean(key: str) -> float | None:
        v = [h[key] for h in last if key in h and math.isfinite(h[key])]
        return float(np.mean(v)) if v else None

    summary = {
        "version": version,
        "made_by": made_by,
        "steps": len(history),
        "first_reward": history[0].get("reward"),
        "final_reward": tail_mean("reward"),
        "final_kl": tail_mean("kl"),
        "kl_budget": cfg.kl_budget,
        "seconds": float(sum(h.get("seconds", 0.0) for h in history)),
        **extra,
    }
    meta_extra: dict[str, Any] = {"tune": asdict(cfg)}
    if "provenance" in extra:  # what trained this round, after every earlier round's
        chain = lm.meta().get("lineage")
        meta_extra["lineage"] = [*(chain if isinstance(chain, list) else []), extra["provenance"]]
    save_model(lm, out_p, version=version, made_by=made_by, extra=meta_extra)
    lm.version, lm.path, lm.source = version, out_p, str(out_p)
    (out_p / "metrics.json").write_text(
        json.dumps({"summary": summary, "history": history, "config": asdict(cfg)}, indent=2)
    )
    plot_history(
        history,
        out_p / "tune.png",
        title=f"{lm.name}@{version} ({made_by})",
        kl_budget=cfg.kl_budget if any("kl_sampled" in h for h in history) else None,
    )
    return TuneResult(out=out_p, version=version, history=history, summary=summary)


def plot_history(
    history: list[dict[str, float]],
    path: Path,
    *,
    title: str = "",
    kl_budget: float | None = None,
) -> None:
    """Reward, KL and distinct-2 per step (PNG). Where the history has ``kl_sampled`` (DPO's
    sampled KL checks against its anchor), the KL panel shows those, with the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(
        axes,
        ("reward", "kl", "distinct2"),
        ("reward (mean CTR of valid lines)", "KL to reference (nats/seq)", "distinct-2"),
        strict=True,
    ):
        pts = [(h["step"], h[key]) for h in history if key in h and math.isfinite(h[key])]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, lw=1)
            if len(ys) >= 8:
                w = max(len(ys) // 8, 2)
                sm = np.convolve(ys, np.ones(w) / w, mode="valid")
                ax.plot(xs[w - 1 :], sm, lw=2)
        if key == "kl":
            chk = [(h["step"], h["kl_sampled"]) for h in history if "kl_sampled" in h]
            if chk:
                xs, ys = zip(*chk, strict=True)
                ax.plot(xs, ys, marker="s", lw=1.5, color="tab:red", label="sampled, to anchor")
                if kl_budget is not None:
                    ax.axhline(kl_budget, ls="--", color="grey", lw=1, label="budget")
                ax.plot([], [], color="tab:blue", label="chosen log-ratio, to reference")
                ax.legend(fontsize=7)
                label = "KL (nats/seq)"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_of_n_tune(
    lm: LoadedModel,
    market: Any,
    reward: RewardFn,
    out: str | Path,
    *,
    campaigns: Sequence[int],
    segments: Sequence[int] | None = None,
    n: int = 8,
    keep: int = 2,
    config: TuneConfig | None = None,
    filters: FilterConfig | None = None,
    version: str | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TuneResult:
    """Best-of-n distillation (expert iteration / ReST): sample ``n`` lines per training prompt
    from the current model, keep the ``keep`` best valid ones by ``reward``, and fine-tune on
    them (likelihood of the kept lines) for ``config.steps`` steps of ``config.batch_size``.

    The cheapest policy improvement there is per sampled line: every line is scored once, and
    the gradient only sees lines the reward ranks at the top of their own prompt's group (so the
    per-prompt base rate cancels, as in RLOO). KL to the starting model is measured on each
    batch (log-ratio of the kept lines) and reported; ``kl_budget`` stops training early when
    it is passed.
    """
    import torch

    cfg = config or TuneConfig()
    if not 1 <= keep < n:
        raise ValueError(f"need 1 <= keep < n, got keep={keep}, n={n}")
    segs = list(range(market.population.n_segments)) if segments is None else list(segments)
    reqs = _requests(market, campaigns, segs)
    prompts = [_prompt(lm, market, r) for r in reqs]
    filt = CopyFilter(filters)
    samp = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    chosen: list[tuple[str, str]] = []
    scored: list[float] = []
    picked: list[float] = []
    per = max(1, 64 // n)
    t_sample = time.perf_counter()
    for j, start in enumerate(range(0, len(reqs), per)):
        idx = list(range(start, min(start + per, len(reqs))))
        s = sample(lm, [prompts[i] for i in idx], n, config=samp, seed=cfg.seed * 1000 + j)
        row_reqs = [reqs[idx[r // n]] for r in range(len(s.texts))]
        r, valid, cleaned = score_lines(s.texts, row_reqs, market, reward, filt)
        for g, i in enumerate(idx):
            rows = [g * n + q for q in range(n) if valid[g * n + q]]
            scored.extend(r[rows].tolist())
            best = sorted(rows, key=lambda q: -r[q])[:keep]
            picked.extend(r[best].tolist())
            chosen.extend((prompts[i], cleaned[q]) for q in best)
    t_sample = time.perf_counter() - t_sample
    if len(chosen) < 2:
        raise ValueError("fewer than 2 valid lines were sampled — nothing to distil")
    ref = copy.deepcopy(lm.model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    model = lm.model
    params = trainable_parameters(model, cfg.train_layers)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng([cfg.seed, 2203])
    history: list[dict[str, float]] = []
    order = rng.permutation(len(chosen))
    cursor = 0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(len(chosen)), 0
        batch = [chosen[i] for i in order[cursor : cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        sm = samples_from_texts(lm, [b[0] for b in batch], [b[1] for b in batch])
        with torch.inference_mode():
            ref_lp = completion_logprobs(ref, sm, 1.0).sum(1)
        model.train()
        lp = completion_logprobs(model, sm, 1.0)
        ntok = sm.completion_mask.sum().clamp(min=1)
        loss = -lp.sum() / ntok
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        model.eval()
        kl = float((lp.detach().sum(1) - ref_lp).mean())
        m = {
            "step": float(step + 1),
            "reward": float(np.mean(picked)),
            "kl": kl,
            "loss": float(loss.detach()),
            "grad_norm": gnorm,
            "distinct2": distinct_n([b[1] for b in batch], 2),
            "seconds": time.perf_counter() - t0 + (t_sample if step == 0 else 0.0),
        }
        history.append(m)
        if progress is not None:
            progress(step + 1, m)
        if kl > cfg.kl_budget:
            break
    ver = version or f"bon-{n}x{keep}-{cfg.steps}x{cfg.batch_size}-s{cfg.seed}"
    extra = {
        "campaigns": [int(c) for c in campaigns],
        "segments": segs,
        "sampled_valid_mean_reward": float(np.mean(scored)) if scored else None,
        "kept_mean_reward": float(np.mean(picked)),
        "kept_lines": len(chosen),
        "sampling_seconds": t_sample,
    }
    return _finish(lm, out, ver, f"best-of-{n} distillation (top {keep})", cfg, history, extra)


def _eval_due(cfg: TuneConfig, step: int) -> bool:
    """Whether step ``step`` (0-based) of an offline / DPO run evaluates."""
    return (step + 1) % cfg.eval_every == 0 or step == 0 or step + 1 == cfg.steps


def eval_metrics(
    lm: LoadedModel,
    market: Any,
    reward: RewardFn,
    eval_requests: Sequence[CopyRequest],
    cfg: TuneConfig,
    rng: np.random.Generator,
    step: int,
    filt: CopyFilter,
) -> dict[str, float]:
    """Reward, validity and distinct-2 of ``cfg.samples_per_prompt`` fresh lines for
    ``cfg.eval_prompts`` random ``eval_requests`` (the curves of an offline or DPO run)."""
    ereq = [eval_requests[i] for i in rng.permutation(len(eval_requests))][: cfg.eval_prompts]
    k = cfg.samples_per_prompt
    samp = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    es = sample(lm, [_prompt(lm, market, r) for r in ereq], k, config=samp, seed=cfg.seed + step)
    row_reqs = [ereq[i // k] for i in range(len(es.texts))]
    r, valid, cleaned = score_lines(es.texts, row_reqs, market, reward, filt)
    return {
        "reward": float(r[valid].mean()) if valid.any() else float("nan"),
        "valid": float(valid.mean()),
        "distinct2": float(
            np.mean([distinct_n(cleaned[g * k : (g + 1) * k], 2) for g in range(len(ereq))])
        ),
    }


# ---- offline ----------------------------------------------------------------------------
@dataclass
class VariantFeedback:
    """Per-variant feedback estimated from a log.

    Attributes (V variants):
        variant_ids, texts, prompts: the variants and the prompts they were generated from.
        group: (campaign_id, target segment) group index of each variant, (V,).
        shows: impressions, (V,); clicks: clicks, (V,).
        ctr_ipw: self-normalised IPW CTR estimate, (V,).
        n_eff: effective impressions of that estimate, (V,).
        posterior: empirically shrunk CTR, (V,); group_mean: its group's mean, (V,).
        weight: signed relative lift (posterior / group mean − 1), (V,).
    """

    variant_ids: list[str]
    texts: list[str]
    prompts: list[str]
    group: npt.NDArray[np.int64]
    shows: npt.NDArray[np.float64]
    clicks: npt.NDArray[np.float64]
    ctr_ipw: npt.NDArray[np.float64]
    n_eff: npt.NDArray[np.float64]
    posterior: npt.NDArray[np.float64]
    group_mean: npt.NDArray[np.float64]
    weight: npt.NDArray[np.float64]


def variant_feedback(log: Any, variants: Any, *, prior_strength: float = 300.0) -> VariantFeedback:
    """Per-variant CTRs from a DecisionLog of generated variants (see module docstring).

    Rows must list their ``candidates`` or refer to campaigns of ``variants``; variants need a
    ``prompt`` in their attributes (as :class:`CopyGenerator` writes them). Rows without an
    observed reward are skipped.
    """
    attrs = variants.attributes()
    vids = variants.variant_ids
    texts = variants.texts
    index = {v: i for i, v in enumerate(vids)}
    missing = [v for v, a in zip(vids, attrs, strict=True) if "prompt" not in a]
    if missing:
        raise ValueError(
            f"variants {missing[:3]} have no `prompt` in attributes — offline tuning needs "
            "variants written by copyloop's generator (origin generator:…)"
        )
    camp = variants.table.column("campaign_id").to_pylist()
    gkey = [(c, str(a.get("segment", ""))) for c, a in zip(camp, attrs, strict=True)]
    gid = {g: i for i, g in enumerate(dict.fromkeys(gkey))}
    group = np.array([gid[g] for g in gkey], np.int64)
    n = len(vids)
    reward = log.reward
    ok = np.isfinite(reward)
    prop = log.propensity
    act = log.column("action")
    cands = log.column("candidates")
    cv = variants.campaign_variants()
    camp_col = log.column("campaign_id")
    w_sum = np.zeros(n)  # Σ over rows offering v of 1[a = v] / p
    wr_sum = np.zeros(n)
    w2_sum = np.zeros(n)
    shows = np.zeros(n)
    clicks = np.zeros(n)
    for i in np.flatnonzero(ok).tolist():
        offered = cands[i] if cands[i] is not None else cv.get(camp_col[i], [])
        if act[i] not in index or not offered:
            continue
        v = index[act[i]]
        w = 1.0 / prop[i]
        w_sum[v] += w
        wr_sum[v] += w * reward[i]
        w2_sum[v] += w * w
        shows[v] += 1
        clicks[v] += reward[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        ctr = np.where(w_sum > 0, wr_sum / w_sum, 0.0)
        n_eff = np.where(w2_sum > 0, w_sum**2 / w2_sum, 0.0)
    post = np.zeros(n)
    gmean = np.zeros(n)
    for g in range(group.max() + 1 if n else 0):
        m = group == g
        seen = m & (n_eff > 0)
        mu = float((ctr[seen] * n_eff[seen]).sum() / max(n_eff[seen].sum(), 1e-12))
        gmean[m] = mu
        post[m] = (ctr[m] * n_eff[m] + prior_strength * mu) / (n_eff[m] + prior_strength + 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(gmean > 0, post / gmean - 1.0, 0.0)
    return VariantFeedback(
        variant_ids=vids,
        texts=texts,
        prompts=[str(a["prompt"]) for a in attrs],
        group=group,
        shows=shows,
        clicks=clicks,
        ctr_ipw=ctr,
        n_eff=n_eff,
        posterior=post,
        group_mean=gmean,
        weight=weight,
    )


def offline_tune(
    lm: LoadedModel,
    market: Any,
    feedback: VariantFeedback,
    out: str | Path,
    *,
    config: TuneConfig | None = None,
    reward: RewardFn | None = None,
    eval_requests: Sequence[CopyRequest] = (),
    version: str | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TuneResult:
    """KTO steps on logged variants weighted by their shrunk relative lift; saves a version.

    Args:
        lm: the model to tune in place (its current weights are the reference).
        market: the market (for evaluation prompts).
        feedback: per-variant feedback from :func:`variant_feedback`.
        out: folder of the new version.
        config: settings (``steps``, ``batch_size``, ``lr``, ``kl_coef`` = KTO β, ...).
        reward: if given, every ``eval_every`` steps a few ``eval_requests`` are sampled and
            scored with it (for the reward / distinct-2 curves).
        eval_requests: requests to evaluate on.
        version: version id (default ``offline-<steps>x<batch>-s<seed>``).
        progress: called after each step with (steps done, metrics).
    """
    import torch

    cfg = config or TuneConfig()
    w = np.asarray(feedback.weight, np.float64)
    use = np.flatnonzero(np.abs(w) > 1e-3)
    if use.size < 2:
        raise ValueError(
            "the log tells no variant apart from its group's mean (after shrinkage every "
            "variant's lift is ~0): log more impressions per variant or lower prior_strength"
        )
    ref = copy.deepcopy(lm.model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    model = lm.model
    params = trainable_parameters(model, cfg.train_layers)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng([cfg.seed, 7723])
    # Sample variants proportionally to |weight|: the gradient is then unbiased for the
    # |weight|-weighted KTO loss without a few tiny weights diluting every batch.
    prob = np.abs(w[use]) / np.abs(w[use]).sum()
    beta = cfg.kl_coef if cfg.kl_coef > 0 else 0.1
    history: list[dict[str, float]] = []
    filt = CopyFilter()
    scale = float(np.abs(w[use]).sum() / use.size)
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        idx = rng.choice(use, size=min(cfg.batch_size, use.size), replace=False, p=prob)
        s = samples_from_texts(
            lm, [feedback.prompts[i] for i in idx], [feedback.texts[i] for i in idx]
        )
        with torch.inference_mode():
            ref_lp = completion_logprobs(ref, s, 1.0).sum(1)
        model.train()
        lp = completion_logprobs(model, s, 1.0).sum(1)
        ratio = lp - ref_lp.clone()
        z0 = ratio.detach().mean().clamp(min=0.0)
        sign = torch.tensor(np.sign(w[idx]), dtype=torch.float32, device=lm.device)
        loss = (1.0 - torch.sigmoid(beta * sign * (ratio - z0))).mean() * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        model.eval()
        m: dict[str, float] = {
            "step": float(step + 1),
            "loss": float(loss.detach()),
            "kl": float(ratio.detach().mean()),
            "desirable_logratio": float(ratio.detach()[sign > 0].mean()) if (sign > 0).any() else 0,
            "grad_norm": gnorm,
        }
        if reward is not None and eval_requests and _eval_due(cfg, step):
            m.update(eval_metrics(lm, market, reward, eval_requests, cfg, rng, step, filt))
        m["seconds"] = time.perf_counter() - t0
        history.append(m)
        if progress is not None:
            progress(step + 1, m)
    ver = version or f"offline-{cfg.steps}x{cfg.batch_size}-s{cfg.seed}"
    extra = {
        "variants_used": int(use.size),
        "variants_logged": len(feedback.variant_ids),
        "desirable": int((w[use] > 0).sum()),
        "undesirable": int((w[use] < 0).sum()),
    }
    return _finish(lm, out, ver, "offline KTO from logged clicks", cfg, history, extra)
