"""``copyloop generate``, ``copyloop generator tune|compare`` and ``copyloop loop``: the copy
generator on the command line (registered by :mod:`copyloop.cli`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from copyloop.cli_common import console, err, print_json
from copyloop.cli_common import market as _market
from copyloop.cli_common import progress_with_info as _progress

generator_app = typer.Typer(
    help="Tune and compare copy-generator versions (causal LMs).", no_args_is_help=True
)


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="HF model folder, saved copyloop version or .gguf file (default: embedded "
        "SmolLM2-135M-Instruct).",
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option(help="Market config (TOML).")]


def _load(model: str | None, device: str | None = None) -> Any:
    from copyloop.generator.models import load_model

    with err.status(f"loading {model or 'SmolLM2-135M-Instruct'}…"):
        return load_model(model, device=device)


def _ints(spec: str, upper: int, what: str) -> list[int]:
    """``"0-11"``, ``"0,3,5"``, ``"even"``, ``"odd"`` or ``"all"`` as indices below ``upper``."""
    spec = spec.strip()
    if spec == "all":
        return list(range(upper))
    if spec in ("even", "odd"):
        return list(range(0 if spec == "even" else 1, upper, 2))
    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise ValueError(
            f"`{what}` must look like 0-11, 0,3,5, even, odd or all; got {spec!r}"
        ) from None
    bad = [i for i in out if not 0 <= i < upper]
    if bad:
        raise ValueError(f"`{what}` {bad[:5]} outside [0, {upper})")
    return out


def _segment(market: Any, segment: str) -> int:
    names = market.population.segment_names
    if segment in names:
        return int(names.index(segment))
    try:
        s = int(segment)
    except ValueError:
        raise ValueError(f"--segment must be an index or one of {names}, got {segment!r}") from None
    if not 0 <= s < len(names):
        raise ValueError(f"--segment must be in [0, {len(names)}) or one of {names}, got {s}")
    return s


def generate(
    campaign: Annotated[int, typer.Option(help="Campaign index in the catalog.")],
    segment: Annotated[str, typer.Option(help="Target segment (index or name).")],
    n: Annotated[int, typer.Option(help="Variants to sample.")] = 16,
    model: ModelOpt = None,
    tone: Annotated[str | None, typer.Option(help="Tone (default: the segment's).")] = None,
    max_words: Annotated[int, typer.Option(help="Target length in words.")] = 14,
    urgency: Annotated[bool, typer.Option(help="Ask for a reason to act now.")] = False,
    cta: Annotated[bool, typer.Option(help="Ask for a call to action.")] = True,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the kept variants (Parquet).")] = None,
    show_rejected: Annotated[bool, typer.Option(help="List rejected lines too.")] = False,
    device: Annotated[str | None, typer.Option(help="torch device (default cuda if any).")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write copy variants for a campaign and target segment; scores them in the true world."""
    from copyloop.contract import check_output_path
    from copyloop.generator.generate import CopyGenerator, SamplingConfig
    from copyloop.generator.prompts import CopyRequest, Style
    from copyloop.generator.reward import WorldReward

    # Everything a flag can get wrong is refused before the model (seconds to load) is touched.
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    sampling = SamplingConfig(temperature=temperature)
    if out is not None:
        check_output_path(out, "--out")
    style = Style(tone=tone, max_words=max_words, urgency=urgency, cta=cta)
    market = _market(config)
    seg = _segment(market, segment)
    req = CopyRequest(campaign, seg, style)
    lm = _load(model, device)
    gen = CopyGenerator(lm, market, sampling=sampling)
    gen.prompt(req)  # validates campaign / segment before sampling
    with _progress() as prog:
        task = prog.add_task(f"sampling {n} variants", total=1, info="")
        res = gen.generate([req], n, seed=seed, progress=lambda d: prog.update(task, completed=d))
    judge = WorldReward(market, users_per_segment=512, seed=1)
    kept = res.kept
    ctr: Any = judge([v.text for v in kept], campaign, seg) if kept else []
    if out is not None:
        gen.variants_table(res).write(out)
    product = market.catalog.products[campaign]
    rows: list[dict[str, Any]] = [
        {
            "text": v.text,
            "kept": v.rejected is None,
            "rejected": v.rejected,
            "world_ctr": float(ctr[kept.index(v)]) if v.rejected is None else None,
            "model": v.model,
            "version": v.version,
            "seed": v.seed,
            "sample": v.sample,
        }
        for v in res.variants
        if v.rejected is None or show_rejected or as_json
    ]
    if as_json:
        print_json(
            {
                "campaign": campaign,
                "campaign_id": market.catalog.campaign_ids[campaign],
                "product": product.title,
                "segment": market.population.segment_names[seg],
                "prompt": gen.prompt(req),
                "variants": rows,
            }
        )
        return
    t = Table(
        title=f"{escape(product.title[:70])} → {market.population.segment_names[seg]} "
        f"({lm.name}@{lm.version})"
    )
    t.add_column("#", justify="right")
    t.add_column("variant")
    t.add_column("world CTR", justify="right")
    if show_rejected:
        t.add_column("rejected")
    for r in rows:
        cells = [
            str(r["sample"]),
            escape(r["text"]),
            "" if r["world_ctr"] is None else f"{r['world_ctr']:.4f}",
        ]
        if show_rejected:
            cells.append(escape(r["rejected"] or ""))
        t.add_row(*cells)
    console.print(t)
    rej = ", ".join(f"{k} {v}" for k, v in res.report.rejected.items()) or "none"
    console.print(f"kept {res.report.kept}/{res.report.total}; rejected: {rej}")
    if out is not None:
        console.print(f"wrote {out}")


@generator_app.command("tune")
def tune(
    out: Annotated[Path, typer.Option(help="Folder of the new model version.")],
    mode: Annotated[
        str,
        typer.Option(
            help="online (RLOO on a reward), bon (best-of-n distillation on a reward), dpo "
            "(DPO on reward-ranked pairs of a sample pool) or offline (KTO on a DecisionLog)."
        ),
    ] = "online",
    model: ModelOpt = None,
    reward: Annotated[
        str, typer.Option(help="Online reward: world, clicksim:DIR or proxy:SEED.")
    ] = "world",
    logs: Annotated[Path | None, typer.Option(help="Offline: DecisionLog Parquet.")] = None,
    variants: Annotated[
        Path | None, typer.Option(help="Offline: variants table (default <logs>.variants.parquet).")
    ] = None,
    campaigns: Annotated[
        str, typer.Option(help="Online: training campaigns (0-59, even, all).")
    ] = "even",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 40,
    prompts_per_step: Annotated[int, typer.Option(help="Online: prompts per step.")] = 4,
    samples_per_prompt: Annotated[
        int, typer.Option(help="Online: samples per prompt (RLOO group).")
    ] = 4,
    batch_size: Annotated[int, typer.Option(help="Offline / bon: lines per step.")] = 8,
    bon_n: Annotated[int, typer.Option(help="bon: samples per prompt.")] = 8,
    bon_keep: Annotated[int, typer.Option(help="bon: best samples kept per prompt.")] = 2,
    pool: Annotated[
        Path | None,
        typer.Option(
            help="dpo: a sample pool from `copyloop generator pool` (default: sample one now, "
            "--bon-n lines per prompt, scored by --reward)."
        ),
    ] = None,
    pairs_per_prompt: Annotated[int, typer.Option(help="dpo: most pairs per prompt.")] = 4,
    reference: Annotated[
        str | None,
        typer.Option(
            help="dpo: frozen reference model (default: --model as it starts; 'base' = the "
            "embedded model); give the base in later rounds of iterated DPO to keep the KL "
            "budget anchored at it."
        ),
    ] = None,
    kl_anchor: Annotated[
        str | None,
        typer.Option(
            help="dpo: model the KL budget is measured against, by sampling at each evaluation "
            "(default: the reference; 'base' = the embedded model). The run keeps the weights "
            "of the last evaluation inside --kl-budget."
        ),
    ] = None,
    nll_coef: Annotated[
        float,
        typer.Option(
            help="dpo: weight of a per-token NLL term on the chosen lines (RPO); 0 = plain DPO."
        ),
    ] = 0.0,
    kl_prompts: Annotated[
        int, typer.Option(help="dpo: prompts (× 4 lines) of each sampled KL check.")
    ] = 16,
    eval_every: Annotated[
        int, typer.Option(help="dpo / offline: steps between evaluations (and KL checks).")
    ] = 5,
    pairing: Annotated[
        str,
        typer.Option(
            help="dpo: extremes (i-th best vs i-th worst line) or all (every pair, largest "
            "reward ratios first)."
        ),
    ] = "extremes",
    min_ratio: Annotated[
        float, typer.Option(help="dpo: a pair's better line must have this × the reward.")
    ] = 1.1,
    min_z: Annotated[
        float,
        typer.Option(
            help="dpo on a click pool: a pair's click estimates must also be this many standard "
            "errors apart (0 = off)."
        ),
    ] = 0.0,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-5,
    kl_coef: Annotated[
        float, typer.Option(help="Initial KL coefficient (offline: KTO beta; dpo: DPO beta).")
    ] = 0.05,
    kl_budget: Annotated[
        float,
        typer.Option(
            help="KL budget, nats per sequence (dpo: checked on sampled KL to --kl-anchor at "
            "each evaluation)."
        ),
    ] = 6.0,
    train_layers: Annotated[
        int, typer.Option(help="Train the top N decoder layers (0 = all).")
    ] = 8,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    version: Annotated[str | None, typer.Option(help="Version id of the new model.")] = None,
    device: Annotated[str | None, typer.Option(help="torch device.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Fine-tune the generator from clicks and save a new model version (weights, metrics.json,
    tune.png with reward, KL and distinct-2 per step)."""
    from copyloop.generator.jobs import TuneJob, run_tune
    from copyloop.generator.tune import TuneConfig

    cfg = TuneConfig(
        steps=steps,
        prompts_per_step=prompts_per_step,
        samples_per_prompt=samples_per_prompt,
        batch_size=batch_size,
        lr=lr,
        kl_coef=kl_coef,
        kl_budget=kl_budget,
        train_layers=train_layers or None,
        seed=seed,
        eval_every=eval_every,
    )
    market = _market(config)
    job = TuneJob(
        mode=mode,
        out=out,
        config=cfg,
        model=model,
        reward=reward,
        logs=logs,
        variants=variants,
        campaigns=tuple(_ints(campaigns, market.catalog.n_campaigns, "--campaigns")),
        bon_n=bon_n,
        bon_keep=bon_keep,
        pool=pool,
        pairs_per_prompt=pairs_per_prompt,
        pairing=pairing,
        min_ratio=min_ratio,
        min_z=min_z,
        reference=reference,
        kl_anchor=kl_anchor,
        nll_coef=nll_coef,
        kl_prompts=kl_prompts,
        version=version,
        device=device,
    )
    with _progress() as prog:
        sample_task = None
        task = prog.add_task(f"{mode} tuning", total=steps, info="", visible=False)

        def sampled(done: int, total: int) -> None:
            nonlocal sample_task
            if sample_task is None:
                sample_task = prog.add_task("sampling the pool", total=total, info="")
            prog.update(sample_task, completed=done, total=total)

        def tick(done: int, m: dict[str, float]) -> None:
            info = " ".join(
                f"{k} {m[k]:.4g}"
                for k in ("reward", "kl", "kl_sampled", "distinct2", "valid")
                if k in m
            )
            prog.update(task, completed=done, info=info, visible=True)

        loaded: list[str] = []

        def load(name: str | None) -> Any:
            lm = _load(name, device)
            loaded.append(lm.name)
            return lm

        res = run_tune(job, market, load=load, sampling=sampled, steps=tick)
    lm_name = loaded[0]  # the model tuning started from
    s = res.summary
    if "kept_step" in s:  # DPO with sampled KL checks: report the weights it kept
        verdict = "within" if s["within_budget"] else "OVER (the start already was)"
        console.print(
            f"saved {lm_name}@{res.version} to {res.out}: weights of step {s['kept_step']} of "
            f"{s['steps']} ({s['seconds']:.0f} s); sampled KL to {s['kl_anchor']} "
            f"{s['kl_sampled_kept']:.2f} nats/seq, {verdict} the budget {s['kl_budget']}; "
            f"reward {s['first_reward']} → {s['kept_reward']}; plot {res.out / 'tune.png'}"
        )
        return
    console.print(
        f"saved {lm_name}@{res.version} to {res.out} ({s['steps']} steps, {s['seconds']:.0f} s); "
        f"reward {s['first_reward']} → {s['final_reward']} (last 20 % of steps), "
        f"KL {s['final_kl']} nats/seq (budget {s['kl_budget']}); plot {res.out / 'tune.png'}"
    )


def _collect(
    lm: Any, market: Any, rfn: Any, reward: str, camps: list[int], n: int, seed: int
) -> Any:
    """Sample and score a pool with a progress bar."""
    from copyloop.generator.preference import collect_pool

    with _progress() as prog:
        task = prog.add_task("sampling", total=len(camps) * market.population.n_segments, info="")
        return collect_pool(
            lm,
            market,
            rfn,
            campaigns=camps,
            n=n,
            seed=seed,
            reward_name=reward,
            progress=lambda done, total: prog.update(task, completed=done, total=total),
        )


@generator_app.command("pool")
def pool_cmd(
    out: Annotated[Path, typer.Option(help="Parquet file of the scored sample pool.")],
    model: ModelOpt = None,
    signal: Annotated[
        str,
        typer.Option(
            help="clicks: score lines by simulated clicks only (Bernoulli draws for --impressions "
            "impressions from the tune half of the users) — the honest recipe; reward: score "
            "them with --reward (world = the judge's own expected CTR: an upper bound at best)."
        ),
    ] = "reward",
    reward: Annotated[
        str, typer.Option(help="--signal reward: world, clicksim:DIR or proxy:SEED.")
    ] = "world",
    impressions: Annotated[
        int, typer.Option(help="--signal clicks: impressions this round (at most 5,000,000).")
    ] = 2_000_000,
    split_seed: Annotated[
        int,
        typer.Option(
            help="--signal clicks: seed of the users' tune / judge split (the judge must use "
            "the same)."
        ),
    ] = 0,
    prior_strength: Annotated[
        float,
        typer.Option(help="--signal clicks: pseudo-impressions shrinking a line to its prompt."),
    ] = 300.0,
    lines_from: Annotated[
        Path | None,
        typer.Option(
            help="--signal clicks: show the lines of this pool (sampled by --model) to new "
            "readers with new clicks (--seed) instead of sampling afresh."
        ),
    ] = None,
    campaigns: Annotated[str, typer.Option(help="Campaigns (0-59, even, all).")] = "even",
    n: Annotated[int, typer.Option(help="Lines sampled per (campaign, segment).")] = 16,
    seed: Annotated[int, typer.Option(help="Sampling (and click) seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="torch device.")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sample N lines per (campaign, segment) from a model, filter and score them, and save the
    pool (Parquet) for `generator tune --mode dpo --pool`: one sampling pass, many tuning runs.
    The pool records its provenance (signal, budget, users, campaigns)."""
    from copyloop.contract import check_output_path
    from copyloop.generator.clicks import UserSplit, check_budget, click_pool
    from copyloop.generator.preference import SamplePool
    from copyloop.generator.reward import parse_reward

    if n < 2:
        raise ValueError(f"--n must be >= 2 (pairs need two lines per prompt), got {n}")
    if signal not in ("clicks", "reward"):
        raise ValueError(f"--signal must be clicks or reward, got {signal!r}")
    check_output_path(out, "--out")
    market = _market(config)
    camps = _ints(campaigns, market.catalog.n_campaigns, "--campaigns")
    if lines_from is not None and signal != "clicks":
        raise ValueError("--lines-from needs --signal clicks")
    if signal == "clicks":
        check_budget(impressions, 1)
        lines = SamplePool.load(lines_from) if lines_from is not None else None
        lm = _load(model, device)
        with _progress() as prog:
            task = prog.add_task(
                "sampling", total=len(camps) * market.population.n_segments, info=""
            )
            res = click_pool(
                lm,
                market,
                campaigns=camps,
                n=n,
                impressions=impressions,
                split=UserSplit(split_seed),
                seed=seed,
                prior_strength=prior_strength,
                progress=lambda done, total: prog.update(task, completed=done, total=total),
                lines=lines,
            )
    else:
        rfn = parse_reward(reward, market)
        lm = _load(model, device)
        res = _collect(lm, market, rfn, reward, camps, n, seed)
    res.save(out)
    s = res.summary()
    if as_json:
        print_json({"out": str(out), **s, "provenance": res.meta.get("provenance")})
        return
    clicks = (
        f"; {int(s['clicks']):,} clicks on {int(s['impressions']):,} impressions"
        if "clicks" in s
        else ""
    )
    console.print(
        f"wrote {out}: {int(s['lines'])} lines for {int(s['prompts'])} prompts, "
        f"{s['valid']:.0%} valid, mean reward of valid lines {s['mean_reward']:.5f}{clicks}"
    )


@generator_app.command("pool-from-log")
def pool_from_log_cmd(
    logs: Annotated[
        Path, typer.Option(help="The service's exported log (copyloop serve export --out).")
    ],
    out: Annotated[Path, typer.Option(help="Parquet file of the pool (for generator tune).")],
    model: ModelOpt = None,
    min_impressions: Annotated[
        int, typer.Option(help="Fewest impressions on trial a line needs to be scored.")
    ] = 50,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The click recipe's pool from a live service's own log: the lines `copyloop autopilot
    --propose` put on trial, grouped by the prompt (campaign, segment) that wrote them and
    scored by their clicks and impressions while on trial, for `generator tune --mode dpo
    --pool`. --model is the generator that wrote them (its prompts are re-rendered)."""
    from copyloop.agents.offline import read_log
    from copyloop.contract import check_output_path, read_variants_for
    from copyloop.generator.generate import CopyGenerator
    from copyloop.generator.prompts import CopyRequest
    from copyloop.generator.service_pool import pool_from_log

    check_output_path(out, "--out")
    log = read_log(logs, read_variants_for(logs))
    market = _market(config)
    lm = _load(model)
    gen = CopyGenerator(lm, market)
    index = {cid: i for i, cid in enumerate(market.catalog.campaign_ids)}
    pool = pool_from_log(
        log,
        index,
        lambda c, s: gen.prompt(CopyRequest(c, s)),
        model=f"{lm.name}@{lm.version}",
        min_impressions=min_impressions,
    )
    pool.save(out)
    s = pool.summary()
    if as_json:
        print_json({"out": str(out), **s, "provenance": pool.meta.get("provenance")})
        return
    console.print(
        f"wrote {out}: {int(s['lines'])} lines for {int(s['prompts'])} prompts, "
        f"{int(s['clicks']):,} clicks on {int(s['impressions']):,} impressions on trial"
    )


@generator_app.command("compare")
def compare(
    tuned: Annotated[str, typer.Option(help="Tuned model version folder.")],
    base: Annotated[
        str | None, typer.Option(help="Base model (default: embedded SmolLM2-135M-Instruct).")
    ] = None,
    campaigns: Annotated[
        str, typer.Option(help="Campaigns to judge on (e.g. odd = held out).")
    ] = "odd",
    limit: Annotated[int, typer.Option(help="Use at most this many of those campaigns.")] = 12,
    n: Annotated[int, typer.Option(help="Variants per (campaign, segment).")] = 8,
    judge_users: Annotated[int, typer.Option(help="Held-out users per segment judging.")] = 512,
    judge: Annotated[
        str, typer.Option(help="world, or proxy:SEED to see a proxy's view.")
    ] = "world",
    seed: Annotated[int, typer.Option(help="Sampling seed (same for both models).")] = 123,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Judge base vs tuned variants in the true click world on the same requests: CTR lift with
    a paired bootstrap interval, validity, distinct-2 and KL(tuned ‖ base)."""
    from copyloop.generator.evaluate import (
        evaluate,
        kl_between,
        paired_lift_interval,
        relative_lift,
    )
    from copyloop.generator.prompts import CopyRequest
    from copyloop.generator.reward import WorldReward, proxy_world

    if limit < 1 or n < 1 or judge_users < 1:
        raise ValueError(
            f"--limit, --n and --judge-users must be >= 1, got {limit}, {n}, {judge_users}"
        )
    market = _market(config)
    camps = _ints(campaigns, market.catalog.n_campaigns, "--campaigns")[:limit]
    world = None
    if judge != "world":
        if not judge.startswith("proxy:") or not judge.split(":", 1)[1].isdigit():
            raise ValueError(f"--judge must be world or proxy:SEED, got {judge!r}")
        world = proxy_world(market, int(judge.split(":", 1)[1]))
    jr = WorldReward(market, users_per_segment=judge_users, seed=seed + 1, world=world)
    b = _load(base)
    t = _load(tuned)
    reqs = [CopyRequest(c, s) for c in camps for s in range(market.population.n_segments)]
    evs = []
    with _progress() as prog:
        for lm in (b, t):
            task = prog.add_task(f"{lm.name}@{lm.version}", total=len(reqs), info="")
            evs.append(
                evaluate(
                    lm,
                    market,
                    reqs,
                    n,
                    judge=jr,
                    seed=seed,
                    progress=_ticker(prog, task),
                )
            )
    with err.status("measuring KL(tuned ‖ base)…"):
        kl = kl_between(t, b, market, reqs[: min(len(reqs), 20)], 4, seed=seed)
    eb, et = evs
    lift = relative_lift(eb, et)
    lo, hi = paired_lift_interval(eb, et)
    out = {
        "judge": judge,
        "campaigns": camps,
        "requests": len(reqs),
        "n": n,
        "base": {
            "model": eb.model,
            "ctr": eb.ctr,
            "best_ctr": eb.best_ctr,
            "valid": eb.valid,
            "distinct2": eb.distinct2,
        },
        "tuned": {
            "model": et.model,
            "ctr": et.ctr,
            "best_ctr": et.best_ctr,
            "valid": et.valid,
            "distinct2": et.distinct2,
        },
        "relative_ctr_lift": lift,
        "lift_ci95": [lo, hi],
        "distinct2_ratio": et.distinct2 / eb.distinct2 if eb.distinct2 else float("nan"),
        "kl_tuned_base": kl,
    }
    if as_json:
        print_json(out)
        return
    tab = Table(
        title=f"{judge} CTR of generated variants on {len(reqs)} requests ({n} samples each)"
    )
    for c in ("model", "mean CTR (kept)", "best-of-n CTR", "kept", "distinct-2"):
        tab.add_column(c)
    for ev in evs:
        tab.add_row(
            ev.model,
            f"{ev.ctr:.4f}",
            f"{ev.best_ctr:.4f}",
            f"{ev.valid:.0%}",
            f"{ev.distinct2:.3f}",
        )
    console.print(tab)
    console.print(
        f"relative CTR lift {lift:+.1%} (95 % paired bootstrap over requests "
        f"{lo:+.1%} … {hi:+.1%}); "
        f"distinct-2 ratio {out['distinct2_ratio']:.2f}; KL(tuned ‖ base) {kl:.2f} nats/seq"
    )


def _ticker(prog: Progress, task: Any) -> Any:
    return lambda done: prog.update(task, completed=done)


def loop(
    rounds: Annotated[int, typer.Option(help="Generate → allocate → tune rounds.")] = 3,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/loop"),
    model: ModelOpt = None,
    campaigns: Annotated[str, typer.Option(help="Campaigns in the loop.")] = "0-11",
    n: Annotated[int, typer.Option(help="Variants per (campaign, segment) per round.")] = 8,
    impressions: Annotated[int, typer.Option(help="Simulated impressions per round.")] = 300_000,
    agent: Annotated[
        str, typer.Option(help="bernoulli_ts, linear_ts or uniform.")
    ] = "bernoulli_ts",
    steps: Annotated[int, typer.Option(help="Offline tuning steps per round.")] = 20,
    lr: Annotated[float, typer.Option(help="Tuning learning rate.")] = 3e-5,
    tuner: Annotated[
        str,
        typer.Option(
            help="kto (each variant's shrunk logged CTR) or dpo (pairs of a group's variants "
            "whose logged CTRs differ)."
        ),
    ] = "kto",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The closed loop: generate variants, allocate simulated traffic with an agent, log, tune the
    generator on the clicks, regenerate; prints the true-world CTR of each round's variants."""
    from copyloop.generator.loop import LoopConfig, run_loop
    from copyloop.generator.tune import TuneConfig

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file — the loop writes a folder")
    market = _market(config)
    camps = _ints(campaigns, market.catalog.n_campaigns, "--campaigns")
    cfg = LoopConfig(
        rounds=rounds,
        campaigns=tuple(camps),
        n=n,
        impressions=impressions,
        agent=agent,
        tune=TuneConfig(steps=steps, lr=lr, kl_coef=0.1 if tuner == "dpo" else 0.05),
        tuner=tuner,
        seed=seed,
    )
    lm = _load(model)
    with err.status("loop…") as st:
        results = run_loop(lm, market, cfg, out, progress=lambda m: st.update(escape(m)))
    if as_json:
        print_json({"out": str(out), "rounds": [asdict(r) for r in results]})
        return
    print_rounds(results)
    console.print(f"logs, variants and model versions in {out}/round*/; summary {out}/rounds.json")


def demo_loop(market: Any, out: Path, *, rounds: int = 2, seed: int = 0) -> None:
    """The demo's short closed loop: 2 campaigns × all segments × 6 variants per round, 100k
    impressions of Bernoulli TS per round, 4 offline tuning steps between rounds."""
    from copyloop.generator.loop import LoopConfig, run_loop
    from copyloop.generator.models import ModelLoadError
    from copyloop.generator.tune import TuneConfig

    try:
        lm = _load(None)
    except ModelLoadError as e:
        console.print(f"[yellow]skipping the generator loop:[/] {escape(str(e))}")
        return
    cfg = LoopConfig(
        rounds=rounds,
        campaigns=(0, 1),
        n=6,
        impressions=100_000,
        tune=TuneConfig(steps=4, batch_size=6),
        seed=seed,
    )
    console.print(
        f"closed loop: {lm.name} writes {cfg.n} variants × {len(cfg.campaigns)} campaigns × "
        f"{market.population.n_segments} segments per round; {cfg.agent} serves "
        f"{cfg.impressions:,} impressions; the generator is tuned on the clicks (KTO) …"
    )
    with err.status("loop…") as st:
        results = run_loop(lm, market, cfg, out, progress=lambda m: st.update(escape(m)))
    print_rounds(results)
    console.print(f"logs, variants and model versions in {out}")


def print_rounds(results: list[Any]) -> None:
    name = results[0].model.split("@")[0] if results else ""
    t = Table(title=f"closed loop: true-world CTR of each round's variants ({name})")
    for c in ("round", "version", "mean CTR", "best", "served", "clicks", "kept", "dist-2"):
        t.add_column(c)
    for r in results:
        t.add_row(
            str(r.round),
            r.model.split("@")[-1],
            f"{r.true_ctr:.4f}",
            f"{r.best_ctr:.4f}",
            f"{r.served_ctr:.4f}",
            f"{r.clicks:,}",
            f"{r.valid:.0%}",
            f"{r.distinct2:.2f}",
        )
    console.print(t)
    console.print(
        "mean CTR / best: of the round's kept variants (true world, held-out users); served: "
        "expected CTR of what the agent showed"
    )
    line = loop_gain(results)
    if line:
        console.print(line)


def loop_gain(results: list[Any]) -> str:
    """What the loop gained and what it cost: the last round's mean true CTR against round 0's,
    and the impressions (and clicks) it spent to get there — the loop's training signal."""
    if len(results) < 2:
        return ""
    first, last = results[0], results[-1]
    spent = sum(r.impressions for r in results[:-1])
    clicks = sum(r.clicks for r in results[:-1])
    gain = last.true_ctr / first.true_ctr - 1.0 if first.true_ctr > 0 else float("nan")
    return (
        f"the loop moved the generator's true CTR {gain:+.1%} (round {last.round} vs round "
        f"{first.round}: {first.true_ctr:.4f} → {last.true_ctr:.4f}) for {spent:,} impressions and "
        f"{clicks:,} clicks of training signal (rounds 0–{last.round - 1}); one run, so this is "
        "within the noise of its few groups unless repeated"
    )
