"""The ``copyloop`` command line (typer + rich)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from copyloop import cli_generator, cli_world
from copyloop.cli_agent import agent_app
from copyloop.cli_clicksim import clicksim_app
from copyloop.cli_common import (
    CopyloopGroup,
    ExitCode,
    console,
    err,
    fail,
    market,
    print_json,
    progress,
    split_list,
)
from copyloop.cli_serve import autopilot, keys_app, serve_app, traffic

app = typer.Typer(
    name="copyloop",
    help="Closed-loop optimisation of marketing copy: simulate, import and inspect decision logs, "
    "evaluate policies off-line, generate and tune copy. Exit codes: 0 success (gate: promote), "
    "1 gate hold, 2 bad input, 3 internal error, 130/143 interrupted/terminated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=CopyloopGroup,
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
app.add_typer(clicksim_app, name="clicksim")
app.add_typer(agent_app, name="agent")
app.add_typer(serve_app, name="serve")
app.add_typer(keys_app, name="keys")
app.command("traffic")(traffic)
app.command("autopilot")(autopilot)
world_app.command("audit")(cli_world.world_audit)
app.command("generate")(cli_generator.generate)
app.command("loop")(cli_generator.loop)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (strict: null for ±inf/NaN).")]

BYTES_PER_ROW = 70
"""Parquet bytes per simulated decision (zstd; 200k rows of the tests' market wrote 14.1 MB)."""
LARGE_WRITE_BYTES = 2 * 1024**3
"""Simulations estimated to write more than this ask for ``--yes``."""


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
    yes: Annotated[
        bool, typer.Option("--yes", help="Write a log estimated above 2 GiB without asking.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Simulate traffic on the copy market and write a DecisionLog with true propensities."""
    from copyloop.agents import POLICIES
    from copyloop.contract import check_output_path, variants_sidecar
    from copyloop.envs.simulate import simulate as run

    if policy not in POLICIES:
        raise fail(f"--policy must be one of {sorted(POLICIES)}, got {policy!r}")
    if rounds < 1:
        raise fail(f"--rounds must be >= 1, got {rounds}")
    if session_length is not None and session_length < 1:
        raise fail(f"--session-length must be >= 1, got {session_length}")
    check_output_path(out, "--out")
    check_output_path(variants_out or variants_sidecar(out), "--variants-out")
    check_write_size(out, rounds * BYTES_PER_ROW, yes=yes)
    m = market(config, session_length)
    with progress(rounds, "simulating") as tick:
        s = run(
            m,
            POLICIES[policy](seed=seed),
            rounds,
            seed=seed,
            out=out,
            variants_out=variants_out,
            progress=tick,
        )
    if as_json:
        print_json(
            {
                "rounds": s.rounds,
                "out": str(s.out),
                "variants_out": str(s.variants_out),
                "variants": m.catalog.n_variants,
                "clicks": s.clicks,
                "ctr": s.ctr,
                "oracle_ctr": s.best_expected_clicks / s.rounds,
                "expected_regret": s.regret,
            }
        )
        return
    console.print(
        f"wrote {s.rounds:,} decisions to {s.out} and {m.catalog.n_variants:,} "
        f"variants to {s.variants_out}"
    )
    console.print(
        f"clicks {s.clicks:,} · CTR {s.ctr:.4f} · oracle CTR "
        f"{s.best_expected_clicks / s.rounds:.4f} · expected regret {s.regret:,.1f}"
    )


def check_write_size(out: Path, estimate: int, *, yes: bool) -> None:
    """Refuse a write that cannot fit on the disk, and one above 2 GiB unless ``--yes``."""
    import shutil

    free = shutil.disk_usage(out.parent if str(out.parent) else Path(".")).free
    gib = estimate / 1024**3
    if estimate > free:
        raise fail(
            f"--out {out}: the log would take ~{gib:.1f} GiB but {free / 1024**3:.1f} GiB are "
            "free there — lower --rounds or write elsewhere"
        )
    if estimate > LARGE_WRITE_BYTES and not yes:
        raise fail(
            f"--out {out}: this run would write ~{gib:.1f} GiB — lower --rounds, or pass --yes "
            "to write it"
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
    batch_size: Annotated[int, typer.Option(help="Rows per streamed batch.")] = 500_000,
    as_json: JsonOpt = False,
) -> None:
    """Import a click log into the DecisionLog contract (validated; nothing written on error)."""
    from copyloop.importing import ColumnMapping, import_log

    mapping = ColumnMapping(
        action_col=action_col,
        reward_col=reward_col,
        propensity_col=propensity_col,
        context_cols=split_list(context_cols),
        categorical_cols=split_list(categorical_cols),
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
    with err.status(f"importing {file.name}…"):
        rep = import_log(file, mapping, out, variants_out=variants_out, batch_size=batch_size)
    if as_json:
        print_json(
            {
                "rows": rep.rows,
                "out": str(rep.out),
                "variants_out": str(rep.variants_out),
                "campaigns": rep.campaigns,
                "actions": rep.actions,
                "context_names": rep.context_names,
                "missing_rewards": rep.missing_rewards,
            }
        )
        return
    console.print(
        f"imported {rep.rows:,} decisions ({rep.campaigns} campaign(s), {rep.actions} "
        f"action(s), {len(rep.context_names)} context features) to {rep.out}; "
        f"variants to {rep.variants_out}"
    )
    if rep.missing_rewards:
        console.print(f"[yellow]note:[/] {rep.missing_rewards:,} rows have no observed reward")


@logs_app.command("info")
def logs_info(
    file: Annotated[
        Path, typer.Argument(help="DecisionLog Parquet, or a dataset folder of Parquet parts.")
    ],
    as_json: JsonOpt = False,
    batch_size: Annotated[int, typer.Option(help="Rows per streamed batch.")] = 1_000_000,
) -> None:
    """Validate a DecisionLog (streamed; event ids checked unique across the file) and
    summarise it. A dataset folder is validated part by part and summarised by DuckDB scans,
    in bounded memory."""
    import json

    from copyloop.contract import summarize_dataset
    from copyloop.stats import summarize_log

    if batch_size < 1:
        raise fail(f"--batch-size must be >= 1, got {batch_size}")
    if file.is_dir():
        info = summarize_dataset(file, batch_size=batch_size)
    else:
        info = summarize_log(file, batch_size=batch_size)
    if as_json:
        print_json(info)
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
    as_json: JsonOpt = False,
) -> None:
    """Calibration of the click world: base CTRs, spread, segment-dependence, headroom."""
    from copyloop.envs.report import world_report

    if campaigns < 1:
        raise fail(f"--campaigns must be >= 1, got {campaigns}")
    if users_per_segment < 1:
        raise fail(f"--users-per-segment must be >= 1, got {users_per_segment}")
    m = market(config)
    with err.status("measuring the world…"):
        rep = world_report(m, campaigns=campaigns, users_per_segment=users_per_segment)
    if as_json:
        print_json(rep.to_dict())
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
    workers: Annotated[
        int | None,
        typer.Option(help="Processes or Ray actors (default: min(2, CPUs); a cluster's CPUs)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    backend: Annotated[
        str,
        typer.Option(help="process (this machine) or ray (Ray actors; copyloop[ray] extra)."),
    ] = "process",
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster for --backend ray (default: a local Ray for the run)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run agents × seeds × market variants from one TOML; write metrics, summary and plots.

    The same seeds give the same numbers with either backend."""
    from copyloop.experiments import run_experiment, summary_text
    from copyloop.experiments.parallel import BACKENDS, require_ray

    if workers is not None and workers < 1:
        raise fail(f"--workers must be >= 1, got {workers}")
    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if ray_address is not None and backend != "ray":
        raise fail("--ray-address is for --backend ray — add --backend ray")
    if backend == "ray":
        try:
            require_ray()
        except ImportError as e:
            raise fail(str(e)) from None
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file — experiment results go into a folder")
    res = run_experiment(
        config,
        out,
        workers=workers,
        progress=not as_json,
        overwrite=overwrite,
        backend=backend,
        ray_address=ray_address,
    )
    if as_json:
        print_json(
            {
                "out": str(res.out_dir),
                "elapsed_s": res.elapsed_s,
                "summary": res.summary.to_dict(orient="records"),
            }
        )
        return
    console.print(summary_text(res))
    console.print(
        f"wrote {res.out_dir} (summary.md, metrics.parquet, regret.png, ctr.png) "
        f"in {res.elapsed_s:.1f} s"
    )


OPE_ESTIMATORS = "ipw,snipw,dm,dr,sndr,switch-dr,dros,mips"
"""``copyloop ope``'s estimators on a log file (a dataset folder streams ipw and snipw)."""


@ope_app.callback()
def ope_run(
    ctx: typer.Context,
    logs: Annotated[
        Path | None,
        typer.Option(help="DecisionLog Parquet, or a dataset folder of them (streamed)."),
    ] = None,
    variants: Annotated[
        Path | None,
        typer.Option(
            help="Variants table (default: <logs>.variants.parquet, or variants.parquet in a "
            "dataset folder, if present)."
        ),
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="A saved copyloop agent (.npz).")] = None,
    target_probs: Annotated[
        Path | None, typer.Option(help="Per-row target probabilities (.npy (n, K) or Parquet).")
    ] = None,
    estimators: Annotated[
        str,
        typer.Option(help="Comma-separated estimators (a dataset folder: ipw,snipw)."),
    ] = OPE_ESTIMATORS,
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
    as_json: JsonOpt = False,
    plot: Annotated[Path | None, typer.Option(help="Write estimates with intervals (PNG).")] = None,
) -> None:
    """Estimate the value of a policy from a log: estimate, interval, effective sample size.

    By default the weighting estimators (IPW ... MIPS) use the studentised bootstrap
    (bootstrap-t) on their per-row sufficient statistics, with cross-fitted reward models for
    the DR family: it covers at the nominal rate on small logs with rare clicks, where the CLT
    interval misses low (docs/ope_coverage.md). DM's interval is a bootstrap that refits the
    reward model (a fixed-model interval would ignore the model's error).

    A dataset folder of Parquet parts (a log larger than memory) is streamed once through
    DuckDB in bounded memory: IPW and SNIPW of a saved agent (--policy), CLT intervals — the
    same numbers as on the log in memory with --interval clt.
    """
    if ctx.invoked_subcommand is not None:
        return
    from copyloop.contract import check_output_path
    from copyloop.ope.evaluate import evaluate_policy, read_feedback, resolve_target

    if logs is None:
        raise fail("--logs is required")
    if (policy is None) == (target_probs is None):
        raise fail("give exactly one of --policy (a saved agent) or --target-probs (a file)")
    if plot is not None:
        check_output_path(plot, "--plot")
    names = list(split_list(estimators))
    if logs.is_dir():
        rep = _ope_scan(
            logs, variants, policy, target_probs, estimators, alpha, interval, config, as_json
        )
    else:
        log, data = read_feedback(logs, variants)
        target = resolve_target(policy or target_probs, data, log, lambda: market(config))  # type: ignore[arg-type]
        status = err.status("cross-fitting the reward model…")
        with contextlib.ExitStack() as stack:
            ticks = (
                stack.enter_context(progress(n_boot, "DM bootstrap (refit)"))
                if ("dm" in names and interval == "auto" and not as_json)
                else None
            )
            rep = evaluate_policy(
                data,
                target,
                names,
                alpha=alpha,
                reward_model=reward_model,
                folds=folds,
                interval=interval,
                n_boot=n_boot,
                resamples=resamples,
                seed=seed,
                on_fit=None if as_json else lambda: stack.enter_context(status),
                dm_progress=ticks,
            )
    if plot is not None:
        _plot_estimates(rep.estimates, rep.logging_policy_value, plot)
    if as_json:
        print_json(rep.to_dict())
        return
    t = Table(
        title=f"off-policy value on {rep.rows:,} logged decisions "
        f"(logging policy's observed value {rep.logging_policy_value:.5f})"
    )
    for c in ("estimator", "estimate", f"{1 - alpha:.0%} interval", "method", "ESS", "max w"):
        t.add_column(c)
    for n, iv in rep.estimates:
        t.add_row(
            n,
            f"{iv.estimate:.5f}",
            f"[{iv.lower:.5f}, {iv.upper:.5f}]",
            iv.method,
            "" if iv.ess is None else f"{iv.ess:,.0f}",
            "" if iv.max_weight is None else f"{iv.max_weight:.1f}",
        )
    console.print(t)
    fit = rep.fit
    if fit is not None and fit.oof_logloss is not None:
        console.print(
            f"reward model ({reward_model}, {folds}-fold cross-fit): out-of-fold "
            f"log-loss {fit.oof_logloss:.5f} vs base rate {fit.base_logloss:.5f}"
        )


def _ope_scan(
    logs: Path,
    variants: Path | None,
    policy: Path | None,
    target_probs: Path | None,
    estimators: str,
    alpha: float,
    interval: str,
    config: Path | None,
    as_json: bool,
) -> Any:
    """``copyloop ope`` on a dataset folder: one streamed pass (:func:`evaluate_scan`)."""
    from copyloop.contract import dataset_schema, read_variants_for
    from copyloop.ope.stream import SCAN_ESTIMATORS, evaluate_scan

    if policy is None:
        raise fail(
            f"--logs {logs} is a dataset folder: give the target as --policy (a saved agent, "
            "evaluated batch by batch); --target-probs needs a log that fits in memory"
        )
    names = list(SCAN_ESTIMATORS) if estimators == OPE_ESTIMATORS else split_list(estimators)
    bad = [n for n in names if n not in SCAN_ESTIMATORS]
    if bad:
        raise fail(
            f"--estimators {','.join(bad)} cannot be streamed over a dataset folder (the "
            f"reward-model estimators fit on the whole log); use {','.join(SCAN_ESTIMATORS)}"
        )
    if interval not in ("auto", "clt"):
        raise fail(
            f"--interval {interval}: a dataset folder is evaluated in one streamed pass, with "
            "CLT intervals — use --interval clt (or auto)"
        )
    from copyloop.agents import Policy
    from copyloop.agents.warm import policy_probs_on_log

    dataset_schema(logs)  # every part a DecisionLog of one schema, before any work
    var = read_variants_for(logs, variants)
    agent = Policy.load(policy)
    built: list[Any] = []

    def target(batch: Any, data: Any) -> Any:
        if not built:
            built.append(market(config))
        return policy_probs_on_log(agent, batch, built[0])

    with contextlib.ExitStack() as stack:
        if not as_json:
            stack.enter_context(err.status(f"streaming {logs} …"))
        return evaluate_scan(logs, target, names, variants=var, alpha=alpha)


def _plot_estimates(results: list[tuple[str, Any]], logged: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from copyloop.contract import atomic_path

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
    with atomic_path(path, "--plot") as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
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
    as_json: JsonOpt = False,
) -> None:
    """Promote or hold: promote only when the candidate's lower confidence bound beats the
    incumbent's estimate (exit code 0 = promote, 1 = hold, 2 = bad input, 3 = internal error)."""
    from copyloop.ope.evaluate import gate_policies, gate_to_dict, read_feedback, resolve_target

    log, data = read_feedback(logs, variants)
    cand = resolve_target(candidate, data, log, lambda: market(config))
    inc = resolve_target(incumbent, data, log, lambda: market(config))
    d = gate_policies(data, cand, inc, estimator=estimator, alpha=alpha, interval=interval)
    if as_json:
        print_json(gate_to_dict(d))
    else:
        console.print(
            ("[bold green]PROMOTE[/] " if d.promote else "[bold yellow]HOLD[/] ") + escape(d.reason)
        )
    raise typer.Exit(code=ExitCode.OK if d.promote else ExitCode.HOLD)


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
    world: Annotated[
        str,
        typer.Option(
            help="Click world: v2 (reads the copy against its product; copyloop/CopyMarket-v1) "
            "or v1 (the earlier word-list world, gameable; copyloop/CopyMarket-v0)."
        ),
    ] = "v2",
) -> None:
    """The main job on the embedded defaults: build the market from the real ad corpus, simulate
    uniform traffic, write the DecisionLog, then compare agents and name the winner; ends with a
    short closed loop in which SmolLM2 writes copy, an agent serves it and the generator learns."""
    from copyloop.agents import UniformPolicy
    from copyloop.demo import demo_experiment
    from copyloop.envs.simulate import simulate as run
    from copyloop.experiments import run_experiment, summary_text
    from copyloop.stats import segment_table

    if rounds < 1:
        raise fail(f"--rounds must be >= 1, got {rounds}")
    if compare_rounds < 500:
        raise fail(f"--compare-rounds must be >= 500, got {compare_rounds}")
    if generator_rounds < 0:
        raise fail(f"--generator-rounds must be >= 0, got {generator_rounds}")
    if world not in ("v1", "v2"):
        raise fail(f"--world must be v1 or v2, got {world!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise fail(f"--out-dir {out_dir} is a file — the demo writes a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    m = market(None, world=world)
    cat = m.catalog
    console.print(
        f"market: {cat.n_campaigns} campaigns from the gembench CA_Prod corpus, "
        f"{cat.n_variants} copy variants (MiniLM-embedded), "
        f"{len(m.population.users):,} users in {m.population.n_segments} segments; "
        f"click world {world}"
    )
    log_path = out_dir / "logs.parquet"
    with progress(rounds, "uniform traffic") as tick:
        s = run(m, UniformPolicy(seed=seed), rounds, seed=seed, out=log_path, progress=tick)
    console.print(f"wrote {s.rounds:,} decisions to {log_path} (+ variants table)")
    console.print(
        f"clicks {s.clicks:,} · CTR {s.ctr:.4f} · oracle CTR "
        f"{s.best_expected_clicks / s.rounds:.4f} → a perfect policy would earn "
        f"{s.best_expected_clicks / max(s.expected_clicks, 1e-9):.2f}× the clicks of "
        "uniform allocation"
    )
    t = Table(title="observed CTR by segment (uniform traffic)")
    rows = segment_table(log_path, m)
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
    cfg = demo_experiment(m, seed=seed, rounds=compare_rounds)
    console.print(
        f"comparing {len(cfg.agents)} agents on {compare_rounds:,} impressions × "
        f"{len(cfg.seeds)} seeds …"
    )
    res = run_experiment(cfg, out_dir / "compare", workers=1, progress=True, overwrite=True)
    console.print(summary_text(res))
    console.print(f"plots and tables in {res.out_dir}")
    if generator_rounds > 0:
        cli_generator.demo_loop(m, out_dir / "loop", rounds=generator_rounds, seed=seed)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
