"""The ``copyloop`` command line (typer + rich)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from copyloop import cli_generator
from copyloop.contract import LogValidationError

app = typer.Typer(
    name="copyloop",
    help="Closed-loop optimisation of marketing copy: simulate, import and inspect decision logs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
logs_app = typer.Typer(help="Import and inspect DecisionLogs.", no_args_is_help=True)
world_app = typer.Typer(help="Inspect the ground-truth click world.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")
app.add_typer(world_app, name="world")
experiment_app = typer.Typer(help="Compare agents on the copy market.", no_args_is_help=True)
ope_app = typer.Typer(
    help="Off-policy evaluation: estimate a policy's value from a log, with intervals.",
    invoke_without_command=True,
)
app.add_typer(ope_app, name="ope")
app.add_typer(experiment_app, name="experiment")
app.add_typer(cli_generator.generator_app, name="generator")
app.command("generate")(cli_generator.generate)
app.command("loop")(cli_generator.loop)

console = Console()
err = Console(stderr=True)


@contextmanager
def _progress(total: int, what: str) -> Iterator[Any]:
    with Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as prog:
        task = prog.add_task(what, total=total)
        yield lambda done: prog.update(task, completed=done)


def _fail(msg: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _market(config: Path | None, session_length: int | None) -> Any:
    from copyloop.envs import Market, MarketConfig

    cfg = MarketConfig.from_toml(config) if config is not None else MarketConfig()
    with err.status("building the market (catalog from the real ad corpus, MiniLM embeddings)…"):
        market = Market.get(cfg)
    return market if session_length is None else market.with_session_length(session_length)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="DecisionLog Parquet to write.")],
    policy: Annotated[str, typer.Option(help="Logging policy (uniform).")] = "uniform",
    rounds: Annotated[int, typer.Option(help="Impressions to simulate.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the env and the policy.")] = 0,
    variants_out: Annotated[
        Path | None, typer.Option(help="Variants table to write (default: <out>.variants.parquet).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Market config (TOML).")] = None,
    session_length: Annotated[int | None, typer.Option(help="Impressions per session.")] = None,
) -> None:
    """Simulate traffic on the copy market and write a DecisionLog with true propensities."""
    from copyloop.agents import POLICIES
    from copyloop.envs.simulate import simulate as run

    if policy not in POLICIES:
        raise _fail(f"--policy must be one of {sorted(POLICIES)}, got {policy!r}")
    if rounds < 1:
        raise _fail(f"--rounds must be >= 1, got {rounds}")
    if not out.parent.exists():
        raise _fail(f"output folder {out.parent} does not exist — create it first")
    try:
        market = _market(config, session_length)
        with _progress(rounds, "simulating") as tick:
            s = run(
                market,
                POLICIES[policy](seed=seed),
                rounds,
                seed=seed,
                out=out,
                variants_out=variants_out,
                progress=tick,
            )
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    console.print(
        f"wrote {s.rounds:,} decisions to {s.out} and {market.catalog.n_variants:,} "
        f"variants to {s.variants_out}"
    )
    console.print(
        f"clicks {s.clicks:,} · CTR {s.ctr:.4f} · oracle CTR "
        f"{s.best_expected_clicks / s.rounds:.4f} · expected regret {s.regret:,.1f}"
    )


@logs_app.command("import")
def logs_import(
    file: Annotated[Path, typer.Argument(help="CSV, TSV or Parquet click log.")],
    out: Annotated[Path, typer.Option(help="DecisionLog Parquet to write.")],
    action_col: Annotated[str, typer.Option(help="Column of the chosen action.")],
    reward_col: Annotated[str, typer.Option(help="Column of the reward (empty = unobserved).")],
    propensity_col: Annotated[str, typer.Option(help="Column of the logging propensity.")],
    context_cols: Annotated[
        str, typer.Option(help="Numeric feature columns, comma separated.")
    ] = "",
    categorical_cols: Annotated[
        str, typer.Option(help="Categorical feature columns, comma separated.")
    ] = "",
    categorical_encoding: Annotated[str, typer.Option(help="onehot or hash.")] = "onehot",
    hash_dim: Annotated[int, typer.Option(help="Buckets per hashed categorical column.")] = 16,
    campaign_col: Annotated[str | None, typer.Option(help="Campaign / slot column.")] = None,
    candidates_col: Annotated[
        str | None, typer.Option(help="Candidate set per row ('|'-separated in CSV).")
    ] = None,
    position_col: Annotated[str | None, typer.Option(help="Slot position column.")] = None,
    timestamp_col: Annotated[str | None, typer.Option(help="Decision time column.")] = None,
    user_col: Annotated[str | None, typer.Option(help="User id column.")] = None,
    event_id_col: Annotated[str | None, typer.Option(help="Event id column.")] = None,
    policy_id: Annotated[str, typer.Option(help="Name of the logging policy.")] = "imported",
    variants_out: Annotated[
        Path | None, typer.Option(help="Variants table to write (default: <out>.variants.parquet).")
    ] = None,
) -> None:
    """Import a click log into the DecisionLog contract (validated; nothing written on error)."""
    from copyloop.importing import ColumnMapping, import_log

    def split(s: str) -> tuple[str, ...]:
        return tuple(c.strip() for c in s.split(",") if c.strip())

    try:
        mapping = ColumnMapping(
            action_col=action_col,
            reward_col=reward_col,
            propensity_col=propensity_col,
            context_cols=split(context_cols),
            categorical_cols=split(categorical_cols),
            categorical_encoding=categorical_encoding,
            hash_dim=hash_dim,
            campaign_col=campaign_col,
            candidates_col=candidates_col,
            position_col=position_col,
            timestamp_col=timestamp_col,
            user_col=user_col,
            event_id_col=event_id_col,
            policy_id=policy_id,
        )
        if not out.parent.exists():
            raise FileNotFoundError(f"output folder {out.parent} does not exist — create it first")
        with err.status(f"importing {file.name}…"):
            rep = import_log(file, mapping, out, variants_out=variants_out)
    except (LogValidationError, ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    console.print(
        f"imported {rep.rows:,} decisions ({rep.campaigns} campaign(s), {rep.actions} "
        f"action(s), {len(rep.context_names)} context features) to {rep.out}; "
        f"variants to {rep.variants_out}"
    )
    if rep.missing_rewards:
        console.print(f"[yellow]note:[/] {rep.missing_rewards:,} rows have no observed reward")


@logs_app.command("info")
def logs_info(
    file: Annotated[Path, typer.Argument(help="DecisionLog Parquet.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    batch_size: Annotated[int, typer.Option(help="Rows per streamed batch.")] = 1_000_000,
) -> None:
    """Validate a DecisionLog (streamed) and summarise it."""
    from copyloop.stats import summarize_log

    try:
        info = summarize_log(file, batch_size=batch_size)
    except (LogValidationError, ValueError, FileNotFoundError, OSError) as e:
        raise _fail(str(e)) from None
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    t = Table(title=f"{file}", show_header=False)
    for k, v in info.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        elif isinstance(v, dict | list):
            v = json.dumps(v, default=str)
        t.add_row(k, str(v))
    console.print(t)


@world_app.command("report")
def world_report_cmd(
    config: Annotated[Path | None, typer.Option(help="Market config (TOML).")] = None,
    campaigns: Annotated[int, typer.Option(help="Campaigns examined.")] = 60,
    users_per_segment: Annotated[int, typer.Option(help="Users sampled per segment.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Calibration of the click world: base CTRs, spread, segment-dependence, headroom."""
    from copyloop.envs.report import world_report

    market = _market(config, None)
    with err.status("measuring the world…"):
        rep = world_report(market, campaigns=campaigns, users_per_segment=users_per_segment)
    if as_json:
        sys.stdout.write(json.dumps(rep.to_dict(), indent=2) + "\n")
        return
    _print_world(rep)


def _print_world(rep: Any) -> None:
    t = Table(title="click world: first-impression CTR by segment (uniform copy vs best copy)")
    for c in ("segment", "share", "base CTR", "best-variant CTR", "CTR p5–p95"):
        t.add_column(c)
    for r in rep.segments:
        t.add_row(
            r.segment,
            f"{r.share:.2f}",
            f"{r.base_ctr:.4f}",
            f"{r.oracle_ctr:.4f}",
            f"{r.ctr_p05:.4f}–{r.ctr_p95:.4f}",
        )
    console.print(t)
    console.print(
        f"mean CTR {rep.mean_ctr:.4f} · best/worst variant CTR per (campaign, segment) "
        f"{rep.mean_best_over_worst:.2f}× · best variant differs by segment in "
        f"{rep.campaigns_best_differs:.0%} of campaigns ({rep.pairwise_best_disagreement:.0%} of "
        f"segment pairs) · crafted copy beats every catalog variant in "
        f"{rep.crafted_beats_corpus:.0%} of (campaign, segment) pairs (median lift "
        f"{rep.crafted_lift:+.0%})"
    )


@experiment_app.command("run")
def experiment_run(
    config: Annotated[
        str,
        typer.Argument(
            help="Experiment TOML, or a shipped config name "
            "(smoke, contextual, drift, fatigue, large_candidates)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder (new or empty).")],
    workers: Annotated[int | None, typer.Option(help="Processes (default: min(2, CPUs)).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
) -> None:
    """Run agents × seeds × market variants from one TOML; write metrics, summary and plots."""
    from copyloop.experiments import run_experiment, summary_text

    try:
        res = run_experiment(config, out, workers=workers, progress=True, overwrite=overwrite)
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    console.print(summary_text(res))
    console.print(
        f"wrote {res.out_dir} (summary.md, metrics.parquet, regret.png, ctr.png) "
        f"in {res.elapsed_s:.1f} s"
    )


def _target(spec: Path, data: Any, log: Any, config: Path | None) -> Any:
    """Target probabilities from a saved agent (.npz) or a probability file (.npy/.parquet)."""
    from copyloop.ope import load_target

    if spec.suffix == ".npz":
        from copyloop.agents import Policy
        from copyloop.agents.warm import policy_probs_on_log
        from copyloop.ope import check_target

        policy = Policy.load(spec)
        market = _market(config, None)
        return check_target(policy_probs_on_log(policy, log, market), data, name=spec.name)
    return load_target(spec, data)


def _feedback(logs: Path, variants: Path | None) -> tuple[Any, Any]:
    from copyloop import DecisionLog, VariantsTable
    from copyloop.ope import feedback_from_log

    var = VariantsTable.read(variants) if variants is not None else None
    if var is None and logs.with_suffix(".variants.parquet").is_file():
        var = VariantsTable.read(logs.with_suffix(".variants.parquet"))
    log = DecisionLog.read(logs, variants=var)
    return log, feedback_from_log(log, var)


@ope_app.callback()
def ope_run(
    ctx: typer.Context,
    logs: Annotated[Path | None, typer.Option(help="DecisionLog Parquet.")] = None,
    variants: Annotated[
        Path | None,
        typer.Option(help="Variants table (default: <logs>.variants.parquet if present)."),
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="A saved copyloop agent (.npz).")] = None,
    target_probs: Annotated[
        Path | None, typer.Option(help="Per-row target probabilities (.npy (n, K) or Parquet).")
    ] = None,
    estimators: Annotated[str, typer.Option(help="Comma-separated estimators.")] = (
        "ipw,snipw,dm,dr,sndr,switch-dr,dros,mips"
    ),
    alpha: Annotated[float, typer.Option(help="1 − confidence level.")] = 0.05,
    reward_model: Annotated[str, typer.Option(help="logistic, ridge, gbm or mlp.")] = "logistic",
    folds: Annotated[int, typer.Option(help="Cross-fitting folds.")] = 5,
    interval: Annotated[
        str,
        typer.Option(
            help="Interval method: auto (each estimator's default: bootstrap-t, DM a bootstrap "
            "refitting the reward model), clt, bootstrap-t or bootstrap."
        ),
    ] = "auto",
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples for DM (refitting the reward model each time).")
    ] = 50,
    resamples: Annotated[
        int, typer.Option(help="Resamples of bootstrap-t / bootstrap (reward model fixed).")
    ] = 999,
    seed: Annotated[int, typer.Option(help="Seed of the bootstraps.")] = 0,
    config: Annotated[Path | None, typer.Option(help="Market config (TOML) for --policy.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write estimates with intervals (PNG).")] = None,
) -> None:
    """Estimate the value of a policy from a log: estimate, interval, effective sample size.

    By default the weighting estimators (IPW ... MIPS) use the studentised bootstrap
    (bootstrap-t) on their per-row sufficient statistics, with cross-fitted reward models for
    the DR family: it covers at the nominal rate on small logs with rare clicks, where the CLT
    interval misses low (docs/ope_coverage.md). DM's interval is a bootstrap that refits the
    reward model (a fixed-model interval would ignore the model's error).
    """
    if ctx.invoked_subcommand is not None:
        return
    from copyloop.ope import RewardModel, bootstrap_interval, fit_reward_model, get_estimator

    if logs is None:
        raise _fail("--logs is required")
    if (policy is None) == (target_probs is None):
        raise _fail("give exactly one of --policy (a saved agent) or --target-probs (a file)")
    names = [e.strip() for e in estimators.split(",") if e.strip()]
    from copyloop.ope.estimators import INTERVAL_METHODS

    if interval != "auto" and interval not in INTERVAL_METHODS:
        raise _fail(f"--interval must be auto or one of {', '.join(INTERVAL_METHODS)}")
    try:
        ests = [get_estimator(n) for n in names]
        model = RewardModel(kind=reward_model, folds=folds)
        log, data = _feedback(logs, variants)
        target = _target(policy or target_probs, data, log, config)  # type: ignore[arg-type]
        q = fit = None
        if any(e.needs_reward_model for e in ests):
            with err.status("cross-fitting the reward model…"):
                fit = fit_reward_model(data, model)
            q = fit.q
        results = []
        for name, est in zip(names, ests, strict=True):
            if name == "dm" and interval == "auto":
                with _progress(n_boot, "DM bootstrap (refit)") as tick:
                    iv = bootstrap_interval(
                        est,
                        data,
                        target,
                        alpha=alpha,
                        n_boot=n_boot,
                        model=model,
                        q=q,
                        refit=True,
                        progress=tick,
                    )
            else:
                iv = est.interval(
                    data,
                    target,
                    q,
                    alpha,
                    method=None if interval == "auto" else interval,
                    n_boot=resamples,
                    seed=seed,
                )
            results.append((name, iv))
    except (LogValidationError, ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    out = {
        "rows": data.n_rows,
        "alpha": alpha,
        "logging_policy_value": float(data.reward.mean()),
        "reward_model": None
        if fit is None
        else {
            "kind": reward_model,
            "folds": folds,
            "oof_logloss": fit.oof_logloss,
            "base_rate_logloss": fit.base_logloss,
        },
        "estimates": [
            {
                "estimator": n,
                "estimate": iv.estimate,
                "lower": iv.lower,
                "upper": iv.upper,
                "interval": iv.method,
                "ess": iv.ess,
                "max_weight": iv.max_weight,
            }
            for n, iv in results
        ],
    }
    if plot is not None:
        _plot_estimates(results, data.reward.mean(), plot)
    if as_json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    t = Table(
        title=f"off-policy value on {data.n_rows:,} logged decisions "
        f"(logging policy's observed value {data.reward.mean():.5f})"
    )
    for c in ("estimator", "estimate", f"{1 - alpha:.0%} interval", "method", "ESS", "max w"):
        t.add_column(c)
    for n, iv in results:
        t.add_row(
            n,
            f"{iv.estimate:.5f}",
            f"[{iv.lower:.5f}, {iv.upper:.5f}]",
            iv.method,
            "" if iv.ess is None else f"{iv.ess:,.0f}",
            "" if iv.max_weight is None else f"{iv.max_weight:.1f}",
        )
    console.print(t)
    if fit is not None and fit.oof_logloss is not None:
        console.print(
            f"reward model ({reward_model}, {folds}-fold cross-fit): out-of-fold "
            f"log-loss {fit.oof_logloss:.5f} vs base rate {fit.base_logloss:.5f}"
        )


def _plot_estimates(results: list[tuple[str, Any]], logged: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(results)))
    for i, (_name, iv) in enumerate(results):
        ax.errorbar(
            iv.estimate,
            i,
            xerr=[[iv.estimate - iv.lower], [iv.upper - iv.estimate]],
            fmt="o",
            capsize=3,
        )
    ax.axvline(logged, ls="--", c="grey", label="logging policy (observed)")
    ax.set_yticks(range(len(results)), [n for n, _ in results])
    ax.set_xlabel("estimated policy value")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@ope_app.command("gate")
def ope_gate(
    logs: Annotated[Path, typer.Option(help="DecisionLog Parquet.")],
    candidate: Annotated[Path, typer.Option(help="Candidate: saved agent (.npz) or probs file.")],
    incumbent: Annotated[Path, typer.Option(help="Incumbent: saved agent (.npz) or probs file.")],
    variants: Annotated[Path | None, typer.Option(help="Variants table.")] = None,
    estimator: Annotated[str, typer.Option(help="Estimator deciding the gate.")] = "dr",
    alpha: Annotated[float, typer.Option(help="1 − confidence level.")] = 0.05,
    interval: Annotated[
        str,
        typer.Option(
            help="Interval method: auto (the estimator's default), clt, bootstrap-t or bootstrap."
        ),
    ] = "auto",
    config: Annotated[Path | None, typer.Option(help="Market config (TOML) for agents.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Promote or hold: promote only when the candidate's lower confidence bound beats the
    incumbent's estimate (exit code 0 = promote, 1 = hold)."""
    from copyloop.ope import fit_reward_model, get_estimator
    from copyloop.ope.gate import gate

    try:
        est = get_estimator(estimator)
        log, data = _feedback(logs, variants)
        cand = _target(candidate, data, log, config)
        inc = _target(incumbent, data, log, config)
        q = fit_reward_model(data).q if est.needs_reward_model else None
        d = gate(
            data,
            cand,
            inc,
            estimator=estimator,
            q=q,
            alpha=alpha,
            method=None if interval == "auto" else interval,
        )
    except (LogValidationError, ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "promote": d.promote,
                    "reason": d.reason,
                    "candidate": {
                        "estimate": d.candidate.estimate,
                        "lower": d.candidate.lower,
                        "upper": d.candidate.upper,
                    },
                    "incumbent": {
                        "estimate": d.incumbent.estimate,
                        "lower": d.incumbent.lower,
                        "upper": d.incumbent.upper,
                    },
                },
                indent=2,
            )
            + "\n"
        )
    else:
        console.print(
            ("[bold green]PROMOTE[/] " if d.promote else "[bold yellow]HOLD[/] ") + escape(d.reason)
        )
    raise typer.Exit(code=0 if d.promote else 1)


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="Impressions of uniform traffic.")] = 200_000,
    compare_rounds: Annotated[
        int, typer.Option(help="Impressions per agent in the closing comparison.")
    ] = 30_000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out_dir: Annotated[Path, typer.Option(help="Where to write the demo's files.")] = Path(
        "runs/demo"
    ),
    generator_rounds: Annotated[
        int, typer.Option(help="Rounds of the closing generator loop (0 = skip).")
    ] = 2,
) -> None:
    """The main job on the embedded defaults: build the market from the real ad corpus, simulate
    uniform traffic, write the DecisionLog, then compare agents and name the winner; ends with a
    short closed loop in which SmolLM2 writes copy, an agent serves it and the generator learns."""
    from copyloop.agents import UniformPolicy
    from copyloop.envs.simulate import simulate as run
    from copyloop.stats import segment_table

    if rounds < 1:
        raise _fail(f"--rounds must be >= 1, got {rounds}")
    out_dir.mkdir(parents=True, exist_ok=True)
    market = _market(None, None)
    cat = market.catalog
    console.print(
        f"market: {cat.n_campaigns} campaigns from the gembench CA_Prod corpus, "
        f"{cat.n_variants} copy variants (MiniLM-embedded), "
        f"{len(market.population.users):,} users in {market.population.n_segments} segments"
    )
    log_path = out_dir / "logs.parquet"
    with _progress(rounds, "uniform traffic") as tick:
        s = run(market, UniformPolicy(seed=seed), rounds, seed=seed, out=log_path, progress=tick)
    console.print(f"wrote {s.rounds:,} decisions to {log_path} (+ variants table)")
    console.print(
        f"clicks {s.clicks:,} · CTR {s.ctr:.4f} · oracle CTR "
        f"{s.best_expected_clicks / s.rounds:.4f} → a perfect policy would earn "
        f"{s.best_expected_clicks / max(s.expected_clicks, 1e-9):.2f}× the clicks of "
        "uniform allocation"
    )
    t = Table(title="observed CTR by segment (uniform traffic)")
    rows = segment_table(log_path, market)
    for c in rows[0]:
        t.add_column(c)
    for r in rows:
        t.add_row(
            *(
                f"{v:.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
                for v in r.values()
            )
        )
    console.print(t)

    from copyloop.experiments import ExperimentConfig, run_experiment, summary_text

    cfg = ExperimentConfig.from_dict(
        {
            "name": "demo",
            "description": "A short comparison on the demo market (copyloop demo).",
            "seeds": [seed, seed + 1],
            "rounds": compare_rounds,
            "batch_size": 500,
            "eval_every": max(compare_rounds // 20, 500),
            "agents": [
                {"name": "uniform", "policy": "uniform"},
                {"name": "ucb1", "policy": "ucb1", "params": {"c": 0.2}},
                {
                    "name": "bernoulli_ts",
                    "policy": "bernoulli_ts",
                    "params": {"segment_columns": [0, market.population.n_segments]},
                },
                {"name": "linear_ts", "policy": "linear_ts"},
            ],
        }
    )
    console.print(f"comparing 4 agents on {compare_rounds:,} impressions × 2 seeds …")
    res = run_experiment(cfg, out_dir / "compare", workers=1, progress=True, overwrite=True)
    console.print(summary_text(res))
    console.print(f"plots and tables in {res.out_dir}")
    if generator_rounds > 0:
        cli_generator.demo_loop(market, out_dir / "loop", rounds=generator_rounds, seed=seed)


# Sub-apps living in their own modules (they import this module's helpers, so they come last).
from copyloop.cli_clicksim import clicksim_app  # noqa: E402

app.add_typer(clicksim_app, name="clicksim")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
