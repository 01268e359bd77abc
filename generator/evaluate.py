"""Judging generated copy in the true click world: mean CTR, validity, diversity, and KL between
two model versions.

The judge is always the ground-truth world (``WorldReward``) on a user sample drawn with its own
seed, so a tuned model is never judged on the users (or the reward) it was trained on.

Example:
    >>> judge = WorldReward(market, users_per_segment=512, seed=99)  # doctest: +SKIP
    >>> ev = evaluate(lm, market, requests, n=8, judge=judge)  # doctest: +SKIP
    >>> ev.ctr, ev.distinct2  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from copyloop.generator.filters import FilterConfig
from copyloop.generator.generate import CopyGenerator, Generation, SamplingConfig, distinct_n
from copyloop.generator.models import LoadedModel
from copyloop.generator.prompts import CopyRequest
from copyloop.generator.reward import WorldReward


@dataclass
class GroupScore:
    """Scores of one (campaign, segment) request."""

    campaign: int
    segment: int
    kept: int
    total: int
    ctr: float  # mean true CTR of the kept variants (nan when none kept)
    best_ctr: float
    distinct2: float


@dataclass
class Evaluation:
    """Scores of a model's variants over a set of requests."""

    model: str
    groups: list[GroupScore] = field(default_factory=list)
    generation: Generation | None = None

    @property
    def ctr(self) -> float:
        """Mean over requests of the mean true CTR of kept variants."""
        v = [g.ctr for g in self.groups if np.isfinite(g.ctr)]
        return float(np.mean(v)) if v else float("nan")

    @property
    def valid(self) -> float:
        return sum(g.kept for g in self.groups) / max(sum(g.total for g in self.groups), 1)

    @property
    def distinct2(self) -> float:
        v = [g.distinct2 for g in self.groups if g.kept >= 2]
        return float(np.mean(v)) if v else float("nan")

    @property
    def best_ctr(self) -> float:
        v = [g.best_ctr for g in self.groups if np.isfinite(g.best_ctr)]
        return float(np.mean(v)) if v else float("nan")

    def by_group(self) -> dict[tuple[int, int], GroupScore]:
        return {(g.campaign, g.segment): g for g in self.groups}


def evaluate(
    lm: LoadedModel,
    market: Any,
    requests: Sequence[CopyRequest],
    n: int,
    *,
    judge: WorldReward,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    filters: FilterConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Generate ``n`` variants per request with ``lm`` and score the kept ones with ``judge``."""
    gen = CopyGenerator(lm, market, sampling=sampling, filters=filters)
    out = gen.generate(requests, n, seed=seed, progress=progress)
    ev = Evaluation(model=f"{lm.name}@{lm.version}", generation=out)
    for r in requests:
        texts = out.texts_for(r.campaign, r.segment)
        total = len(out.texts_for(r.campaign, r.segment, kept_only=False))
        ctr = judge(texts, r.campaign, r.segment) if texts else np.zeros(0)
        ev.groups.append(
            GroupScore(
                campaign=r.campaign,
                segment=r.segment,
                kept=len(texts),
                total=total,
                ctr=float(ctr.mean()) if ctr.size else float("nan"),
                best_ctr=float(ctr.max()) if ctr.size else float("nan"),
                distinct2=distinct_n(texts, 2),
            )
        )
    return ev


def relative_lift(base: Evaluation, other: Evaluation) -> float:
    """Mean over requests scored in both of other's CTR / base's CTR − 1 ... as a ratio of
    means (requests where either kept nothing are left out)."""
    b, o = base.by_group(), other.by_group()
    keys = [k for k in b if k in o and np.isfinite(b[k].ctr) and np.isfinite(o[k].ctr)]
    if not keys:
        return float("nan")
    return float(np.mean([o[k].ctr for k in keys]) / np.mean([b[k].ctr for k in keys]) - 1.0)


def paired_lift_interval(
    base: Evaluation, other: Evaluation, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % bootstrap interval of :func:`relative_lift`, resampling requests (paired)."""
    b, o = base.by_group(), other.by_group()
    keys = [k for k in b if k in o and np.isfinite(b[k].ctr) and np.isfinite(o[k].ctr)]
    if len(keys) < 2:
        return float("nan"), float("nan")
    bb = np.array([b[k].ctr for k in keys])
    oo = np.array([o[k].ctr for k in keys])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    lifts = oo[idx].mean(1) / bb[idx].mean(1) - 1.0
    lo, hi = np.quantile(lifts, [0.025, 0.975])
    return float(lo), float(hi)


def kl_between(
    lm: LoadedModel,
    ref: LoadedModel,
    market: Any,
    requests: Sequence[CopyRequest],
    k: int = 4,
    *,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
) -> float:
    """Mean per-sequence KL(lm ‖ ref) in nats, estimated on ``k`` samples of ``lm`` per request
    (log-probabilities at the sampling temperature, nucleus filtering off)."""
    from copyloop.generator.generate import sample
    from copyloop.generator.tune import sequence_kl

    cfg = sampling or SamplingConfig()
    cfg = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=1.0,
        batch_size=cfg.batch_size,
    )
    gen = CopyGenerator(lm, market, sampling=cfg)
    prompts = [gen.prompt(r) for r in requests]
    per = max(1, cfg.batch_size // k)
    kls: list[float] = []
    for j, start in enumerate(range(0, len(prompts), per)):
        s = sample(lm, prompts[start : start + per], k, config=cfg, seed=seed + j)
        kls.extend(sequence_kl(lm.model, ref.model, s, cfg.temperature).tolist())
    return float(np.mean(kls))
