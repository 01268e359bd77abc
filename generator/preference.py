"""Preference tuning of the copy generator: scored sample pools, preference pairs and DPO.

Best-of-n distillation (``tune.best_of_n_tune``) raises the likelihood of every token of a good
line — mostly the product's own name and wording, which the line shares with the bad lines of
the same prompt. What separates a line that gets clicked from one that does not (its length,
a benefit the audience cares about, a value cue, a call to action) is a small part of it.
Direct preference optimisation (Rafailov et al. 2023) trains on *pairs* of lines for the same
prompt, one better than the other, with the loss

    −log σ(β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]),

so whatever the two lines share cancels and the gradient goes to what differs. The reference
model's log-probabilities are computed once, before training; β bounds how far the tuned model
moves from it (the KL budget is also enforced as an early stop).

The pipeline, each step usable on its own:

1. :func:`collect_pool` — sample ``n`` lines per (campaign, segment) prompt from a model, clean
   and filter them, score the valid ones with a :class:`RewardFn`; a :class:`SamplePool` saves
   to / loads from Parquet, so one expensive sampling pass feeds many tuning runs.
2. :func:`preference_pairs` — within each prompt, the best valid lines against the worst, kept
   when the better line's reward is at least ``min_ratio`` times the worse one's (pairs whose
   rewards are within noise teach nothing).
3. :func:`dpo_tune` — DPO steps on the pairs; saves a new model version like the other modes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.generator.evaluate import kl_between
from copyloop.generator.filters import CopyFilter, FilterConfig
from copyloop.generator.generate import SamplingConfig, sample
from copyloop.generator.models import LoadedModel
from copyloop.generator.prompts import CopyRequest
from copyloop.generator.reward import RewardFn
from copyloop.generator.tune import (
    TuneConfig,
    TuneResult,
    _eval_due,
    _finish,
    _prompt,
    _requests,
    completion_logprobs,
    eval_metrics,
    samples_from_texts,
    score_lines,
    trainable_parameters,
)

POOL_VERSION = 1


@dataclass
class SamplePool:
    """Scored samples: ``n`` lines for each of ``P`` (campaign, segment) prompts (``N = P·n``).

    Attributes:
        campaigns, segments: the request of each prompt, (P,).
        prompts: rendered prompt texts, (P,).
        group: prompt index of each line, (N,).
        texts: cleaned lines, (N,).
        reward: reward of each valid line (0 for rejected ones), (N,).
        valid: whether the line passed the post-filters, (N,).
        meta: where the pool came from (model, reward, sampling settings, seed; a click pool's
            ``provenance``, :func:`copyloop.generator.clicks.provenance`).
        impressions, clicks: a click pool's simulated impressions and clicks per line, (N,)
            (None for a pool scored by a reward function).
        stderr: standard error of each line's click estimate, (N,) (None likewise).
    """

    campaigns: npt.NDArray[np.int64]
    segments: npt.NDArray[np.int64]
    prompts: list[str]
    group: npt.NDArray[np.int64]
    texts: list[str]
    reward: npt.NDArray[np.float64]
    valid: npt.NDArray[np.bool_]
    meta: dict[str, Any]
    impressions: npt.NDArray[np.int64] | None = None
    clicks: npt.NDArray[np.int64] | None = None
    stderr: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def save(self, path: str | Path) -> Path:
        """Write the pool as one Parquet file (written to a temporary name, then renamed)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        cols = {
            "group": pa.array(self.group, pa.int64()),
            "campaign": pa.array(self.campaigns[self.group], pa.int64()),
            "segment": pa.array(self.segments[self.group], pa.int64()),
            "prompt": pa.array([self.prompts[g] for g in self.group], pa.string()),
            "text": pa.array(self.texts, pa.string()),
            "reward": pa.array(self.reward, pa.float64()),
            "valid": pa.array(self.valid, pa.bool_()),
        }
        if self.impressions is not None and self.clicks is not None:
            cols["impressions"] = pa.array(self.impressions, pa.int64())
            cols["clicks"] = pa.array(self.clicks, pa.int64())
        if self.stderr is not None:
            cols["stderr"] = pa.array(self.stderr, pa.float64())
        table = pa.table(cols)
        meta = {"copyloop_pool": json.dumps({"version": POOL_VERSION, **self.meta})}
        table = table.replace_schema_metadata(meta)
        tmp = p.with_name(p.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> SamplePool:
        """Read a pool written by :meth:`save`; a file that is not one raises ``ValueError``."""
        import pyarrow.parquet as pq

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"sample pool {p} does not exist — collect one first")
        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{p} is not a readable Parquet file ({e})") from e
        raw = (table.schema.metadata or {}).get(b"copyloop_pool")
        need = {"group", "campaign", "segment", "prompt", "text", "reward", "valid"}
        if raw is None or not need <= set(table.column_names):
            raise ValueError(
                f"{p} is not a copyloop sample pool (needs columns {sorted(need)} and the "
                "copyloop_pool metadata) — write it with SamplePool.save / collect_pool"
            )
        meta = json.loads(raw)
        meta.pop("version", None)
        group = np.asarray(table.column("group").to_numpy(), np.int64)
        n_p = int(group.max()) + 1 if group.size else 0
        first = np.full(n_p, -1, np.int64)
        for i in range(group.size - 1, -1, -1):
            first[group[i]] = i
        if (first < 0).any():
            raise ValueError(f"{p}: prompt groups are not numbered 0..P-1 without gaps")
        camp = np.asarray(table.column("campaign").to_numpy(), np.int64)
        seg = np.asarray(table.column("segment").to_numpy(), np.int64)
        prompts = table.column("prompt").to_pylist()

        def opt(name: str, dtype: Any) -> Any:
            if name not in table.column_names:
                return None
            return np.asarray(table.column(name).to_numpy(), dtype)

        return cls(
            campaigns=camp[first],
            segments=seg[first],
            prompts=[str(prompts[i]) for i in first],
            group=group,
            texts=[str(t) for t in table.column("text").to_pylist()],
            reward=np.asarray(table.column("reward").to_numpy(), np.float64),
            valid=np.asarray(table.column("valid").to_numpy(zero_copy_only=False), bool),
            meta=meta,
            impressions=opt("impressions", np.int64),
            clicks=opt("clicks", np.int64),
            stderr=opt("stderr", np.float64),
        )

    def summary(self) -> dict[str, float]:
        """Lines, prompts, share valid and mean reward of the valid lines (and a click pool's
        impressions and clicks)."""
        out = {
            "lines": float(len(self)),
            "prompts": float(len(self.prompts)),
            "valid": float(self.valid.mean()) if len(self) else 0.0,
            "mean_reward": float(self.reward[self.valid].mean()) if self.valid.any() else 0.0,
        }
        if self.impressions is not None and self.clicks is not None:
            out["impressions"] = float(self.impressions.sum())
            out["clicks"] = float(self.clicks.sum())
        return out


def collect_pool(
    lm: LoadedModel,
    market: Any,
    reward: RewardFn,
    *,
    campaigns: Sequence[int],
    segments: Sequence[int] | None = None,
    n: int = 16,
    sampling: SamplingConfig | None = None,
    filters: FilterConfig | None = None,
    seed: int = 0,
    reward_name: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> SamplePool:
    """Sample ``n`` lines for every (campaign, segment) prompt and score them.

    Prompts go through :func:`sample` ``sampling.batch_size // n`` at a time (one prefill per
    prompt, shared by its ``n`` samples); ``progress(prompts done, prompts)`` after each batch.
    """
    if not campaigns:
        raise ValueError("`campaigns` is empty — give at least one campaign to sample for")
    if n < 2:
        raise ValueError(f"`n` must be >= 2 (pairs need two lines per prompt), got {n}")
    cfg = sampling or SamplingConfig()
    segs = list(range(market.population.n_segments)) if segments is None else list(segments)
    reqs = _requests(market, campaigns, segs)
    prompts = [_prompt(lm, market, r) for r in reqs]
    filt = CopyFilter(filters)
    per = max(1, cfg.batch_size // n)
    texts: list[str] = []
    rewards: list[float] = []
    valid: list[bool] = []
    group: list[int] = []
    for j, start in enumerate(range(0, len(reqs), per)):
        idx = list(range(start, min(start + per, len(reqs))))
        s = sample(lm, [prompts[i] for i in idx], n, config=cfg, seed=seed * 100_003 + j)
        row_reqs = [reqs[idx[r // n]] for r in range(len(s.texts))]
        r, ok, cleaned = score_lines(s.texts, row_reqs, market, reward, filt)
        texts.extend(cleaned)
        rewards.extend(r.tolist())
        valid.extend(ok.tolist())
        group.extend(idx[r // n] for r in range(len(s.texts)))
        if progress is not None:
            progress(idx[-1] + 1, len(reqs))
    return SamplePool(
        campaigns=np.array([r.campaign for r in reqs], np.int64),
        segments=np.array([r.segment for r in reqs], np.int64),
        prompts=prompts,
        group=np.array(group, np.int64),
        texts=texts,
        reward=np.array(rewards, np.float64),
        valid=np.array(valid, bool),
        meta={
            "model": f"{lm.name}@{lm.version}",
            "reward": reward_name,
            "n": n,
            "seed": seed,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens,
        },
    )


def feedback_pool(feedback: Any) -> SamplePool:
    """A DecisionLog's per-variant feedback (:func:`~copyloop.generator.tune.variant_feedback`)
    as a pool: each (campaign, segment) group is a prompt, each variant's shrunk IPW CTR its
    reward; variants the log never showed are left out (``valid`` False). Preference pairs
    then come from logged clicks instead of a reward model."""
    group = np.asarray(feedback.group, np.int64)
    n_p = int(group.max()) + 1 if group.size else 0
    first = np.full(n_p, -1, np.int64)
    for i in range(group.size - 1, -1, -1):
        first[group[i]] = i
    prompts = [str(feedback.prompts[i]) for i in first]
    return SamplePool(
        campaigns=np.full(n_p, -1, np.int64),
        segments=np.full(n_p, -1, np.int64),
        prompts=prompts,
        group=group,
        texts=list(feedback.texts),
        reward=np.asarray(feedback.posterior, np.float64),
        valid=np.asarray(feedback.n_eff, np.float64) > 0,
        meta={"reward": "logged clicks (shrunk IPW CTR per variant)"},
    )


@dataclass(frozen=True)
class Pair:
    """One preference: ``chosen`` beats ``rejected`` for ``prompt``; ``log_ratio`` of rewards."""

    prompt: str
    chosen: str
    rejected: str
    log_ratio: float


def preference_pairs(
    pool: SamplePool,
    *,
    pairs_per_prompt: int = 4,
    min_ratio: float = 1.1,
    invalid_rejected: int = 0,
    pairing: str = "extremes",
    min_z: float = 0.0,
) -> list[Pair]:
    """Preference pairs from a pool, per prompt (distinct valid texts only), kept when the
    better line's reward is at least ``min_ratio`` times the worse one's:

    - ``pairing="extremes"``: the i-th best line against the i-th worst, at most
      ``pairs_per_prompt`` pairs;
    - ``pairing="all"``: every ordered pair of lines, the ``pairs_per_prompt`` with the largest
      reward ratios (a prompt's lines share one prefill in :func:`pair_logprobs`, so more
      pairs per prompt are cheap);

    plus up to ``invalid_rejected`` pairs of the best valid line against a line the filters
    rejected (their ``log_ratio`` is set to log 2).

    For a click pool (``stderr`` set), a pair also needs its two estimates ``min_z`` standard
    errors apart, ``(r_w − r_l) / sqrt(se_w² + se_l²) >= min_z``: with ~2 % CTRs a ratio alone
    is often noise."""
    if pairs_per_prompt < 1:
        raise ValueError(f"`pairs_per_prompt` must be >= 1, got {pairs_per_prompt}")
    if not min_ratio >= 1.0:
        raise ValueError(f"`min_ratio` must be >= 1, got {min_ratio}")
    if pairing not in ("extremes", "all"):
        raise ValueError(f"`pairing` must be 'extremes' or 'all', got {pairing!r}")
    if min_z < 0:
        raise ValueError(f"`min_z` must be >= 0, got {min_z}")
    if min_z > 0 and pool.stderr is None:
        raise ValueError(
            "`min_z` needs a click pool (per-line standard errors) — this pool was scored by "
            f"{pool.meta.get('reward')!r}; use --min-z 0"
        )
    se = pool.stderr
    out: list[Pair] = []
    for g, prompt in enumerate(pool.prompts):
        rows = np.flatnonzero(pool.group == g)
        ok = [int(i) for i in rows if pool.valid[i] and pool.reward[i] > 0]
        seen: dict[str, int] = {}
        for i in ok:  # one row per distinct text
            seen.setdefault(pool.texts[i].lower(), i)
        ok = sorted(seen.values(), key=lambda i: -pool.reward[i])
        if pairing == "extremes":
            cand = [
                (ok[a], ok[len(ok) - 1 - a]) for a in range(min(pairs_per_prompt, len(ok) // 2))
            ]
        else:
            cand = [(ok[a], ok[b]) for a in range(len(ok)) for b in range(a + 1, len(ok))]
            cand.sort(key=lambda wl: -(pool.reward[wl[0]] / pool.reward[wl[1]]))
        kept = 0
        for w, lo in cand:
            lr = float(np.log(pool.reward[w] / pool.reward[lo]))
            if se is not None and min_z > 0:
                z = (pool.reward[w] - pool.reward[lo]) / max(np.hypot(se[w], se[lo]), 1e-12)
                if z < min_z:
                    continue
            if lr >= np.log(min_ratio) and kept < pairs_per_prompt:
                out.append(Pair(prompt, pool.texts[w], pool.texts[lo], lr))
                kept += 1
        bad = [int(i) for i in rows if not pool.valid[i] and pool.texts[i]]
        if ok and invalid_rejected > 0:
            for i in bad[:invalid_rejected]:
                out.append(Pair(prompt, pool.texts[ok[0]], pool.texts[i], float(np.log(2.0))))
    return out


def _by_prompt(pairs: Sequence[Pair]) -> list[list[int]]:
    """Indices of ``pairs`` grouped by prompt, groups in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.prompt, []).append(i)
    return list(groups.values())


def pair_logprobs(
    model: Any, lm: LoadedModel, pairs: Sequence[Pair], *, lengths: bool = False
) -> Any:
    """Summed log-probabilities (chosen, rejected) of each pair under ``model``, ``(B, 2)``;
    with ``lengths``, also their token counts (end-of-sequence included), ``(B, 2)``.

    Each distinct prompt is run once and its KV cache shared by all its distinct lines, so the
    pairs of one prompt cost one prompt forward (the prompt is ~6× longer than a line)."""
    import torch

    prompts: list[str] = []
    texts: list[str] = []
    counts: list[int] = []
    where = np.zeros((len(pairs), 2), np.int64)
    for group in _by_prompt(pairs):
        rows: dict[str, int] = {}
        for i in group:
            for j, t in enumerate((pairs[i].chosen, pairs[i].rejected)):
                if t not in rows:
                    rows[t] = len(texts)
                    texts.append(t)
                where[i, j] = rows[t]
        prompts.append(pairs[group[0]].prompt)
        counts.append(len(rows))
    s = samples_from_texts(lm, prompts, texts, per_prompt=counts)
    lp = completion_logprobs(model, s, 1.0).sum(1)
    at = torch.as_tensor(where, device=lp.device)
    if lengths:
        return lp[at], s.completion_mask.sum(1).to(lp.dtype)[at]
    return lp[at]


def _batches(groups: list[list[int]], size: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch of batches: prompts in random order, each batch whole prompts' pairs until it
    holds at least ``size`` pairs."""
    out: list[list[int]] = []
    cur: list[int] = []
    for g in rng.permutation(len(groups)).tolist():
        cur.extend(groups[g])
        if len(cur) >= size:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _trainable_state(model: Any) -> dict[str, Any]:
    """CPU copies of the trainable parameters, by name."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def _restore(model: Any, state: dict[str, Any]) -> None:
    """Put back parameters saved by :func:`_trainable_state` (every one of them, by name)."""
    import torch

    params = dict(model.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise RuntimeError(f"cannot restore parameters the model does not have: {missing[:3]}")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def _kl_sampling(cfg: TuneConfig) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)


def dpo_tune(
    lm: LoadedModel,
    market: Any,
    pairs: Sequence[Pair],
    out: str | Path,
    *,
    config: TuneConfig | None = None,
    beta: float = 0.1,
    reward: RewardFn | None = None,
    eval_requests: Sequence[CopyRequest] = (),
    version: str | None = None,
    extra: dict[str, Any] | None = None,
    reference: LoadedModel | None = None,
    kl_anchor: LoadedModel | None = None,
    kl_prompts: int = 16,
    nll_coef: float = 0.0,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TuneResult:
    """DPO on preference pairs; trains ``lm.model`` in place and saves a new version.

    The KL budget: with evaluation on (``reward`` and ``eval_requests`` given), every evaluation
    also measures the *sampled* KL(π ‖ anchor) — 4 lines of π for each of ``kl_prompts`` fixed
    evaluation requests, scored under both models — and when it passes ``config.kl_budget`` the
    run stops and keeps the weights of the last evaluation inside the budget (or the start's),
    so the saved version is within budget as measured — unless the start already is not, which
    the summary's ``within_budget`` says. Without evaluation the mean log-ratio of the batch's
    chosen lines is the (cruder) early-stop stand-in.

    Args:
        lm: the model (its current weights are the frozen reference).
        market: the market (for the optional evaluation prompts).
        pairs: from :func:`preference_pairs`.
        out: folder of the new version.
        config: ``steps``, ``batch_size`` (pairs per step), ``lr``, ``train_layers``,
            ``kl_budget`` (stop when the mean log-ratio of the chosen lines passes it), ...
        beta: DPO's β (smaller lets the model move further from the reference).
        reward: if given, every ``eval_every`` steps ``eval_prompts`` of ``eval_requests`` are
            sampled and scored with it (reward, validity and distinct-2 curves).
        eval_requests: requests to evaluate on.
        version: version id (default ``dpo-<steps>x<batch>-s<seed>``).
        extra: more fields for the run's summary (e.g. the pool's provenance).
        reference: the frozen reference (default: ``lm`` as it starts). Over rounds of
            iterated DPO, passing the base model keeps β's pull — and the ``kl_budget`` early
            stop — anchored at the base instead of at the previous round.
        kl_anchor: the model the sampled KL budget is measured against (default: the
            reference). Iterated DPO can keep the previous round as β's reference and still
            hold the whole chain within budget of the base by passing the base here.
        kl_prompts: evaluation requests of the sampled KL check (fixed for the run).
        nll_coef: weight of a negative log-likelihood term on the chosen lines, per token
            (RPO, Pang et al. 2024). Plain DPO only widens the margin and often lowers the
            chosen lines' likelihood too, moving mass to lines neither side of a pair shows;
            the term holds the chosen lines up. 0 = plain DPO.
        progress: called after each step with (steps done, metrics).
    """
    import torch

    cfg = config or TuneConfig()
    if len(pairs) < 2:
        raise ValueError(
            f"{len(pairs)} preference pair(s) — need at least 2: sample more lines per prompt "
            "or lower min_ratio"
        )
    if not beta > 0:
        raise ValueError(f"`beta` must be > 0, got {beta}")
    if nll_coef < 0:
        raise ValueError(f"`nll_coef` must be >= 0, got {nll_coef}")
    if kl_prompts < 1:
        raise ValueError(f"`kl_prompts` must be >= 1, got {kl_prompts}")
    ref = copy.deepcopy(lm.model).eval() if reference is None else reference.model.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    evaluating = reward is not None and bool(eval_requests)
    anchor: LoadedModel | None = None
    if evaluating:
        anchor = kl_anchor or reference or dataclasses.replace(lm, model=ref)
        kl_reqs = [
            eval_requests[i]
            for i in np.random.default_rng([cfg.seed, 71]).permutation(len(eval_requests))
        ][:kl_prompts]

    def check_kl() -> float:
        """Sampled KL(π ‖ anchor) on the run's fixed prompts and seed."""
        assert anchor is not None
        return kl_between(
            lm, anchor, market, kl_reqs, 4, seed=cfg.seed + 17, sampling=_kl_sampling(cfg)
        )

    bs = min(cfg.batch_size, len(pairs))
    groups = _by_prompt(pairs)
    t0 = time.perf_counter()
    ref_lp = np.zeros((len(pairs), 2))
    with torch.inference_mode():
        for chunk in _batches(groups, 32, np.random.default_rng(0)):
            ref_lp[chunk] = pair_logprobs(ref, lm, [pairs[i] for i in chunk]).cpu().numpy()
    del ref  # (the anchor may still hold the start's copy)
    t_ref = time.perf_counter() - t0
    model = lm.model
    params = trainable_parameters(model, cfg.train_layers)
    # The weights to fall back to when a KL check fails: the start, then each check inside the
    # budget (kept on the CPU). The start is 0 nats from its own copy; from another anchor (the
    # base, in later rounds) it is measured.
    kept: dict[str, Any] = {}
    kept_step, kept_kl = 0, 0.0
    if anchor is not None:
        kept = _trainable_state(model)
        if kl_anchor is not None or reference is not None:
            kept_kl = check_kl()
    start_kl = kept_kl
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng([cfg.seed, 3137])
    filt = CopyFilter()
    history: list[dict[str, float]] = []
    epoch: list[list[int]] = []
    for step in range(cfg.steps):
        t1 = time.perf_counter()
        if not epoch:
            epoch = _batches(groups, bs, rng)
        idx = np.array(epoch.pop(0), np.int64)
        model.train()
        lp, ntok = pair_logprobs(model, lm, [pairs[i] for i in idx], lengths=True)
        ratio = lp - torch.tensor(ref_lp[idx], dtype=lp.dtype, device=lp.device)
        margin = ratio[:, 0] - ratio[:, 1]
        dpo_loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
        nll = -(lp[:, 0] / ntok[:, 0]).mean()
        loss = dpo_loss + nll_coef * nll if nll_coef > 0 else dpo_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        model.eval()
        r = ratio.detach()
        m: dict[str, float] = {
            "step": float(step + 1),
            "loss": float(dpo_loss.detach()),
            "nll_chosen": float(nll.detach()),
            "accuracy": float((margin.detach() > 0).float().mean()),
            "margin": float(margin.detach().mean()),
            "chosen_logratio": float(r[:, 0].mean()),
            "rejected_logratio": float(r[:, 1].mean()),
            "kl": float(r[:, 0].mean().clamp(min=0.0)),
            "grad_norm": gnorm,
        }
        if evaluating and _eval_due(cfg, step):
            assert reward is not None
            m.update(eval_metrics(lm, market, reward, eval_requests, cfg, rng, step, filt))
            m["kl_sampled"] = check_kl()
        m["seconds"] = time.perf_counter() - t1 + (t_ref if step == 0 else 0.0)
        history.append(m)
        if progress is not None:
            progress(step + 1, m)
        if anchor is None:
            if m["chosen_logratio"] > cfg.kl_budget:
                break
        elif "kl_sampled" in m:
            if m["kl_sampled"] > cfg.kl_budget:
                _restore(model, kept)
                break
            kept = _trainable_state(model)
            kept_step, kept_kl = step + 1, m["kl_sampled"]
    ver = version or f"dpo-{cfg.steps}x{bs}-s{cfg.seed}"
    info = {
        "pairs": len(pairs),
        "beta": beta,
        "nll_coef": nll_coef,
        "mean_pair_log_ratio": float(np.mean([p.log_ratio for p in pairs])),
        "reference_seconds": t_ref,
        "reference": "start" if reference is None else f"{reference.name}@{reference.version}",
        **(
            {
                "kl_anchor": f"{anchor.name}@{anchor.version}",
                "kl_sampled_start": start_kl,
                "kept_step": kept_step,
                "kl_sampled_kept": kept_kl,
                "kept_reward": next(
                    (h.get("reward") for h in history if int(h["step"]) == kept_step), None
                ),
                "within_budget": kept_kl <= cfg.kl_budget,
            }
            if anchor is not None
            else {}
        ),
        **(extra or {}),
    }
    return _finish(lm, out, ver, "DPO on reward-ranked pairs", cfg, history, info)
