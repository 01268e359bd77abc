"""The closed loop in one call: generate variants, let an agent allocate simulated traffic, log
the decisions, fine-tune the generator on those clicks, regenerate, repeat.

Each round:

1. the current generator writes ``n`` variants per (campaign, target segment);
2. an agent (Bernoulli TS per segment by default) allocates ``impressions`` of that segment's
   users among each group's kept variants; clicks are drawn from the true click world;
3. the decisions are written as a DecisionLog (explicit candidates, true propensities) with the
   variants table;
4. the generator is tuned offline on the log: KTO on each variant's shrunk CTR
   (:func:`~copyloop.generator.tune.offline_tune`) or DPO on pairs of variants of the same
   group whose logged CTRs differ (:func:`~copyloop.generator.preference.dpo_tune`);
5. the round's variants are judged in the true world on held-out users.

Example:
    >>> cfg = LoopConfig(rounds=2)
    >>> rounds = run_loop(load_model(), Market.get(), cfg, "runs/loop")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from copyloop.contract import DecisionLog, DecisionLogWriter, VariantsTable
from copyloop.generator.evaluate import Evaluation, GroupScore
from copyloop.generator.filters import FilterConfig
from copyloop.generator.generate import CopyGenerator, Generation, SamplingConfig, distinct_n
from copyloop.generator.models import LoadedModel
from copyloop.generator.preference import dpo_tune, feedback_pool, preference_pairs
from copyloop.generator.prompts import CopyRequest
from copyloop.generator.reward import WorldReward
from copyloop.generator.tune import TuneConfig, offline_tune, variant_feedback

AGENTS = ("bernoulli_ts", "linear_ts", "uniform")


@dataclass(frozen=True)
class LoopConfig:
    """Settings of :func:`run_loop`.

    Attributes:
        rounds: generate → allocate → tune rounds.
        campaigns: campaign indices in the loop.
        segments: target segments (None = all).
        n: variants sampled per (campaign, segment) each round.
        impressions: simulated impressions per round (split evenly over the groups).
        agent: ``bernoulli_ts`` (per segment), ``linear_ts`` or ``uniform``.
        tune: offline tuning settings per round.
        tuner: ``kto`` or ``dpo`` (pairs of one group's variants, logged CTRs ≥ ``min_ratio``
            apart; ``tune.kl_coef`` is DPO's β).
        min_ratio: ``dpo``: how much higher the better variant's shrunk logged CTR must be.
        judge_users: held-out users per segment that judge each round's variants.
        seed: seed of generation, traffic and tuning.
    """

    rounds: int = 3
    campaigns: tuple[int, ...] = tuple(range(0, 24, 2))
    segments: tuple[int, ...] | None = None
    n: int = 8
    impressions: int = 300_000
    agent: str = "bernoulli_ts"
    tune: TuneConfig = field(default_factory=lambda: TuneConfig(steps=20, lr=3e-5))
    tuner: str = "kto"
    min_ratio: float = 1.1
    judge_users: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"`rounds` must be >= 1, got {self.rounds}")
        if not self.campaigns:
            raise ValueError("`campaigns` is empty")
        if self.n < 2:
            raise ValueError(f"`n` must be >= 2 variants per group, got {self.n}")
        if self.impressions < 1:
            raise ValueError(f"`impressions` must be >= 1, got {self.impressions}")
        if self.tuner not in ("kto", "dpo"):
            raise ValueError(f"`tuner` must be 'kto' or 'dpo', got {self.tuner!r}")
        if self.agent not in AGENTS:
            raise ValueError(f"`agent` must be one of {list(AGENTS)}, got {self.agent!r}")


@dataclass
class RoundResult:
    """One round of the loop."""

    round: int
    model: str
    true_ctr: float  # mean true CTR of the round's kept variants (uniform over variants)
    best_ctr: float  # mean over groups of the best kept variant's true CTR
    served_ctr: float  # expected CTR of the traffic the agent served (true CTRs of its picks)
    clicks: int
    impressions: int
    valid: float
    distinct2: float
    log: str
    tuned: str | None = None
    tune_summary: dict[str, Any] = field(default_factory=dict)


def _candidate_features(
    market: Any, gen: Generation, idx: Sequence[int]
) -> npt.NDArray[np.float32]:
    """The generated lines in the catalog's feature space (its saved featurizer, no refit), so
    agents see new copy exactly as they see the catalog's."""
    texts = [gen.variants[i].text for i in idx]
    if gen.embeddings is not None:
        emb = gen.embeddings[list(idx)]
    else:
        from copyloop.envs.embed import default_encoder

        emb = default_encoder().encode(texts)
    featurizer = market.catalog.featurizer
    if featurizer is None:
        raise ValueError("the market's catalog has no featurizer — rebuild the market")
    return featurizer.transform(emb, texts)


def _make_policy(name: str, n_segments: int, seed: int) -> Any:
    from copyloop.agents import POLICIES, BernoulliTSPolicy

    if name == "bernoulli_ts":
        return BernoulliTSPolicy(seed=seed, segment_columns=(0, n_segments))
    return POLICIES[name](seed=seed)


def allocate(
    market: Any,
    gen: Generation,
    vt: VariantsTable,
    policy: Any,
    impressions: int,
    out: Path,
    *,
    seed: int = 0,
    model_version: str = "0",
    batch: int = 1024,
) -> tuple[int, float, int]:
    """Let ``policy`` allocate ``impressions`` among each group's kept variants, clicks from the
    true world; writes the DecisionLog to ``out``. Returns (clicks, expected clicks, rows)."""
    cat, pop, world = market.catalog, market.population, market.world
    rng = np.random.default_rng([seed, 31337])
    vid_of = {}
    for row, i in enumerate(
        sorted(
            (i for i, v in enumerate(gen.variants) if v.rejected is None),
            key=lambda i: (gen.variants[i].campaign, gen.variants[i].segment, i),
        )
    ):
        vid_of[i] = vt.variant_ids[row]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, v in enumerate(gen.variants):
        if v.rejected is None:
            groups.setdefault((v.campaign, v.segment), []).append(i)
    groups = {g: idx for g, idx in groups.items() if len(idx) >= 1}
    if not groups:
        raise ValueError("the generator kept no variant in any group — nothing to allocate")
    k_max = max(len(idx) for idx in groups.values())
    per_group = max(impressions // len(groups), 1)
    seg_users = [np.flatnonzero(pop.users.segment == s) for s in range(pop.n_segments)]
    clicks, expected, rows = 0, 0.0, 0
    with DecisionLogWriter(out, pop.feature_dim, variants=vt) as writer:
        for (c, s), idx in groups.items():
            k = len(idx)
            texts = [gen.variants[i].text for i in idx]
            emb = gen.embeddings[idx] if gen.embeddings is not None else None
            pool = rng.choice(seg_users[s], size=min(2048, seg_users[s].size), replace=False)
            ctr = world.ctr_of_texts(texts, c, pool, embeddings=emb)  # (pool, k)
            feats = _candidate_features(market, gen, idx)
            cand = np.zeros((k_max, feats.shape[1]), np.float32)
            cand[:k] = feats
            mask = np.zeros(k_max, np.int8)
            mask[:k] = 1
            vids = [vid_of[i] for i in idx]
            done = 0
            while done < per_group:
                b = min(batch, per_group - done)
                u = rng.integers(0, pool.size, size=b)
                users = pool[u]
                obs = {
                    "user": pop.all_features[users],
                    "candidates": np.broadcast_to(cand.ravel(), (b, cand.size)).copy(),
                    "shown": np.zeros((b, k_max), np.float32),
                    "action_mask": np.broadcast_to(mask, (b, k_max)).copy(),
                }
                d = policy.act(obs)
                p_true = ctr[u, d.actions]
                r = (rng.random(b) < p_true).astype(np.float64)
                policy.update(obs, d.actions, r)
                clicks += int(r.sum())
                expected += float(p_true.sum())
                start = rows + done
                writer.write(
                    DecisionLog.from_arrays(
                        event_id=[f"loop-{seed}-{start + j}" for j in range(b)],
                        campaign_id=[cat.campaign_ids[c]] * b,
                        user_id=[f"u{x}" for x in users.tolist()],
                        context=obs["user"],
                        candidates=[vids] * b,
                        action=[vids[a] for a in d.actions.tolist()],
                        action_index=d.actions,
                        propensity=d.propensity,
                        action_probs=d.probs[:, :k],
                        reward=r,
                        policy_id=policy.policy_id,
                        model_version=model_version,
                    )
                )
                done += b
            rows += done
    return clicks, expected, rows


def judge_generation(
    market: Any, gen: Generation, requests: Sequence[CopyRequest], judge: WorldReward, name: str
) -> Evaluation:
    """True-world scores of a generation's kept variants per request."""
    ev = Evaluation(model=name, generation=gen)
    for r in requests:
        texts = gen.texts_for(r.campaign, r.segment)
        total = len(gen.texts_for(r.campaign, r.segment, kept_only=False))
        ctr = judge(texts, r.campaign, r.segment) if texts else np.zeros(0)
        ev.groups.append(
            GroupScore(
                r.campaign,
                r.segment,
                len(texts),
                total,
                float(ctr.mean()) if ctr.size else float("nan"),
                float(ctr.max()) if ctr.size else float("nan"),
                distinct_n(texts, 2),
            )
        )
    return ev


def run_loop(
    lm: LoadedModel,
    market: Any,
    config: LoopConfig,
    out: str | Path,
    *,
    sampling: SamplingConfig | None = None,
    filters: FilterConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[RoundResult]:
    """Run the loop; ``lm`` is tuned in place. Writes ``round<r>/`` folders (log, variants,
    tuned model version) and ``rounds.json`` under ``out``."""
    cfg = config
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    segs = list(range(market.population.n_segments)) if cfg.segments is None else list(cfg.segments)
    requests = [CopyRequest(c, s) for c in cfg.campaigns for s in segs]
    judge = WorldReward(market, users_per_segment=cfg.judge_users, seed=cfg.seed + 1000)
    results: list[RoundResult] = []

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    for rnd in range(cfg.rounds):
        rdir = out_p / f"round{rnd}"
        rdir.mkdir(parents=True, exist_ok=True)
        say(f"round {rnd}: generating {cfg.n} variants × {len(requests)} requests")
        g = CopyGenerator(lm, market, sampling=sampling, filters=filters)
        gen = g.generate(requests, cfg.n, seed=cfg.seed + 7919 * rnd)
        vt = g.variants_table(gen)  # written with the round's log, as one unit
        ev = judge_generation(market, gen, requests, judge, f"{lm.name}@{lm.version}")
        say(f"round {rnd}: allocating {cfg.impressions:,} impressions with {cfg.agent}")
        policy = _make_policy(cfg.agent, market.population.n_segments, cfg.seed + rnd)
        log_path = rdir / "log.parquet"
        clicks, expected, rows = allocate(
            market,
            gen,
            vt,
            policy,
            cfg.impressions,
            log_path,
            seed=cfg.seed + rnd,
            model_version=f"{lm.name}@{lm.version}",
        )
        res = RoundResult(
            round=rnd,
            model=f"{lm.name}@{lm.version}",
            true_ctr=ev.ctr,
            best_ctr=ev.best_ctr,
            served_ctr=expected / max(rows, 1),
            clicks=clicks,
            impressions=rows,
            valid=ev.valid,
            distinct2=ev.distinct2,
            log=str(log_path),
        )
        if rnd < cfg.rounds - 1:
            say(f"round {rnd}: tuning the generator on {clicks:,} clicks")
            log = DecisionLog.read(log_path)
            fb = variant_feedback(log, vt, prior_strength=cfg.tune.prior_strength)
            tcfg = replace(cfg.tune, seed=cfg.seed + rnd)
            if cfg.tuner == "dpo":
                pairs = preference_pairs(
                    feedback_pool(fb), pairs_per_prompt=16, min_ratio=cfg.min_ratio, pairing="all"
                )
                tr = dpo_tune(
                    lm,
                    market,
                    pairs,
                    rdir / "model",
                    config=tcfg,
                    beta=tcfg.kl_coef,
                    version=f"loop-r{rnd + 1}",
                )
            else:
                tr = offline_tune(
                    lm,
                    market,
                    fb,
                    rdir / "model",
                    config=tcfg,
                    version=f"loop-r{rnd + 1}",
                )
            res.tuned = str(tr.out)
            res.tune_summary = tr.summary
        results.append(res)
        (out_p / "rounds.json").write_text(
            json.dumps(
                {"config": _jsonable(asdict(cfg)), "rounds": [asdict(r) for r in results]},
                indent=2,
                default=str,
            )
        )
    return results


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))
