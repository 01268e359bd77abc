"""A tuning run as data: what ``copyloop generator tune`` does, callable from any code.

:class:`TuneJob` names the mode, the model, the signal and the settings; :func:`run_tune`
checks it against the market, loads what it needs and runs the tuner. The CLI only parses flags
and draws progress bars.

Example:
    >>> job = TuneJob(mode="offline", out=Path("runs/gen/v1"), logs=Path("logs.parquet"))
    >>> res = run_tune(job, market)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copyloop.generator.tune import TuneConfig

MODES = ("online", "bon", "dpo", "offline")
"""RLOO on a reward, best-of-n distillation, DPO on reward-ranked pairs, KTO on a DecisionLog."""


@dataclass(frozen=True)
class TuneJob:
    """One tuning run.

    Attributes:
        mode: one of :data:`MODES`.
        out: folder of the new model version (must not be a file).
        config: optimiser settings.
        model: the model to start from (None = the embedded SmolLM2-135M-Instruct).
        reward: online / bon / dpo-sampling reward: ``world``, ``clicksim:DIR`` or ``proxy:SEED``.
        logs: offline: the DecisionLog of generated variants.
        variants: offline: its variants table (default: the log's sidecar).
        campaigns: online / bon / dpo-sampling: training campaigns.
        bon_n: bon and dpo-sampling: samples per prompt.
        bon_keep: bon: best samples kept per prompt.
        pool: dpo: a saved sample pool (None: sample one now, ``bon_n`` lines per prompt).
        pairs_per_prompt: dpo: most pairs per prompt.
        pairing: dpo: ``extremes`` or ``all``.
        min_ratio: dpo: a pair's better line must have this × the reward.
        min_z: dpo on a click pool: a pair's click estimates must be this many standard errors
            apart.
        reference: dpo: frozen reference model (None: the start; ``base``: the embedded model).
        kl_anchor: dpo: model the sampled KL budget is measured against (None: the reference).
        nll_coef: dpo: per-token NLL weight on chosen lines (RPO); 0 = plain DPO.
        kl_prompts: dpo: prompts (× 4 lines) of each sampled KL check.
        version: version id of the new model (None: derived).
        device: torch device (None: cuda if any).
    """

    mode: str
    out: Path
    config: TuneConfig = field(default_factory=TuneConfig)
    model: str | None = None
    reward: str = "world"
    logs: Path | None = None
    variants: Path | None = None
    campaigns: tuple[int, ...] = ()
    bon_n: int = 8
    bon_keep: int = 2
    pool: Path | None = None
    pairs_per_prompt: int = 4
    pairing: str = "extremes"
    min_ratio: float = 1.1
    min_z: float = 0.0
    reference: str | None = None
    kl_anchor: str | None = None
    nll_coef: float = 0.0
    kl_prompts: int = 16
    version: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "offline" and self.logs is None:
            raise ValueError("`mode` offline needs `logs` (a DecisionLog of generated variants)")
        if self.mode != "offline" and not self.campaigns and self.pool is None:
            raise ValueError("`campaigns` is empty — name at least one training campaign")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ValueError(f"`out` {self.out} is a file — a model version is saved as a folder")
        if not Path(self.out).exists() and not Path(self.out).parent.is_dir():
            raise ValueError(
                f"`out` {self.out}: the folder {Path(self.out).parent} does not exist — create it"
            )
        if self.bon_n < 2:
            raise ValueError(f"`bon_n` must be >= 2, got {self.bon_n}")
        if not 1 <= self.bon_keep <= self.bon_n:
            raise ValueError(f"`bon_keep` must be in [1, bon_n={self.bon_n}], got {self.bon_keep}")
        if self.pairs_per_prompt < 1:
            raise ValueError(f"`pairs_per_prompt` must be >= 1, got {self.pairs_per_prompt}")
        if self.kl_prompts < 1:
            raise ValueError(f"`kl_prompts` must be >= 1, got {self.kl_prompts}")
        if self.nll_coef < 0:
            raise ValueError(f"`nll_coef` must be >= 0, got {self.nll_coef}")
        if self.min_z < 0:
            raise ValueError(f"`min_z` must be >= 0, got {self.min_z}")


def check_pool(pool: Any, market: Any) -> None:
    """A pool's requests must exist in this market."""
    nc, ns = market.catalog.n_campaigns, market.population.n_segments
    if len(pool.campaigns) and (pool.campaigns.max() >= nc or pool.segments.max() >= ns):
        raise ValueError(
            f"the pool names campaigns up to {int(pool.campaigns.max())} and segments up to "
            f"{int(pool.segments.max())}, but this market has {nc} campaigns and {ns} segments "
            "— collect the pool with the same --config"
        )


def run_tune(
    job: TuneJob,
    market: Any,
    *,
    load: Callable[[str | None], Any] | None = None,
    sampling: Callable[[int, int], None] | None = None,
    steps: Callable[[int, dict[str, float]], None] | None = None,
) -> Any:
    """Run ``job`` on ``market``; returns the tuner's result (``.out``, ``.version``,
    ``.summary``).

    Everything that can be refused (the log, the pool, the campaigns, the reward spec) is
    checked before any model is loaded.

    Args:
        job: the run.
        market: the market the prompts and rewards come from.
        load: loads a model by name (None = the embedded one); default
            :func:`copyloop.generator.models.load_model` on ``job.device``.
        sampling: called with (prompts done, total) while a DPO pool is sampled.
        steps: called with (steps done, latest metrics) while tuning.
    """
    from copyloop.contract import DecisionLog, read_variants_for
    from copyloop.generator.models import load_model
    from copyloop.generator.preference import SamplePool, collect_pool, dpo_tune, preference_pairs
    from copyloop.generator.prompts import CopyRequest
    from copyloop.generator.reward import WorldReward, parse_reward
    from copyloop.generator.tune import best_of_n_tune, offline_tune, online_tune, variant_feedback

    cfg = job.config
    nc = market.catalog.n_campaigns
    bad = [c for c in job.campaigns if not 0 <= c < nc]
    if bad:
        raise ValueError(f"`campaigns` {bad[:5]} outside [0, {nc})")
    camps = list(job.campaigns)
    fb = None
    if job.mode == "offline":
        assert job.logs is not None
        vt = read_variants_for(job.logs, job.variants)
        if vt is None:
            raise FileNotFoundError(
                f"no variants table for {job.logs} — pass --variants (the table the log's "
                "actions refer to)"
            )
        fb = variant_feedback(DecisionLog.read(job.logs), vt, prior_strength=cfg.prior_strength)
    rfn = parse_reward(job.reward, market)
    spool = SamplePool.load(job.pool) if job.mode == "dpo" and job.pool is not None else None
    if spool is not None:
        check_pool(spool, market)

    def _load(name: str | None) -> Any:
        return load(name) if load is not None else load_model(name, device=job.device)

    def _named(spec: str | None) -> Any:
        return _load(None if spec == "base" else spec) if spec is not None else None

    lm = _load(job.model)
    tick = steps or (lambda _d, _m: None)
    if job.mode == "dpo":
        ref_lm, anchor_lm = _named(job.reference), _named(job.kl_anchor)
        if spool is None:
            spool = collect_pool(
                lm,
                market,
                rfn,
                campaigns=camps,
                n=job.bon_n,
                seed=cfg.seed,
                reward_name=job.reward,
                progress=sampling,
            )
        pairs = preference_pairs(
            spool,
            pairs_per_prompt=job.pairs_per_prompt,
            min_ratio=job.min_ratio,
            pairing=job.pairing,
            min_z=job.min_z,
        )
        prov, monitor = _provenance(spool, job, market)
        ereq = [
            CopyRequest(int(c), int(sg))
            for c, sg in zip(spool.campaigns, spool.segments, strict=True)
        ]
        return dpo_tune(
            lm,
            market,
            pairs,
            job.out,
            config=cfg,
            beta=cfg.kl_coef,
            reward=monitor,
            eval_requests=ereq,
            version=job.version,
            extra={
                "pool": str(job.pool) if job.pool else None,
                "pool_meta": spool.meta,
                "provenance": prov,
                "min_z": job.min_z,
            },
            reference=ref_lm,
            kl_anchor=anchor_lm,
            kl_prompts=job.kl_prompts,
            nll_coef=job.nll_coef,
            progress=tick,
        )
    if job.mode == "bon":
        return best_of_n_tune(
            lm,
            market,
            rfn,
            job.out,
            campaigns=camps,
            n=job.bon_n,
            keep=job.bon_keep,
            config=cfg,
            version=job.version,
            progress=tick,
        )
    if job.mode == "online":
        return online_tune(
            lm,
            market,
            rfn,
            job.out,
            campaigns=camps,
            config=cfg,
            version=job.version,
            progress=tick,
        )
    assert fb is not None
    return offline_tune(
        lm,
        market,
        fb,
        job.out,
        config=cfg,
        reward=WorldReward(market, users_per_segment=256, seed=1),
        eval_requests=_eval_requests(camps, market),
        version=job.version,
        progress=tick,
    )


def _provenance(pool: Any, job: TuneJob, market: Any) -> tuple[dict[str, Any], Any]:
    """What trains a DPO run on ``pool`` (its recorded provenance, or — for a pool scored by a
    reward function — the signal its reward amounts to), and the reward of the run's monitoring
    curves: the world on the tune half of the pool's user split, so no reader the judge may
    draw is touched; for a pool without a split, the world on seed-1 users, as before."""
    from copyloop.generator.clicks import UserSplit, provenance, signal_of
    from copyloop.generator.reward import WorldReward

    prov = pool.meta.get("provenance")
    if not isinstance(prov, dict):
        prov = provenance(
            signal_of(str(pool.meta.get("reward") or job.reward)),
            reward=str(pool.meta.get("reward") or job.reward),
            campaigns=sorted({int(c) for c in pool.campaigns}),
            split=None,
            seed=int(pool.meta.get("seed", 0)),
        )
    users = prov.get("users")
    if isinstance(users, dict) and users.get("part") == "tune":
        split = UserSplit(int(users["split_seed"]), float(users["judge_share"]))
        monitor = WorldReward(
            market, users_per_segment=256, seed=1, pool=split.users(market, "tune")
        )
    else:
        monitor = WorldReward(market, users_per_segment=256, seed=1)
    return {**prov, "min_ratio": job.min_ratio, "min_z": job.min_z}, monitor


def _eval_requests(camps: Sequence[int], market: Any) -> list[Any]:
    """Offline tuning's evaluation prompts: the first 8 campaigns × every segment."""
    from copyloop.generator.prompts import CopyRequest

    return [CopyRequest(c, s) for c in camps[:8] for s in range(market.population.n_segments)]
