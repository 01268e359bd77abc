"""``copyloop clicksim``: fit a learned click simulator on a log and report its fidelity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from copyloop.cli_common import console, err, print_json, progress

clicksim_app = typer.Typer(
    help="Learned click simulator: fit one on any DecisionLog, check how far to trust it.",
    no_args_is_help=True,
)


def market_of_log(meta: dict[str, str], world: str) -> Any:
    """The market behind a log: ``world='auto'`` reads the config a simulated log carries (None
    when it carries none), ``'none'`` skips it, anything else is a market TOML file."""
    from copyloop.envs.market import Market, MarketConfig

    if world == "none":
        return None
    if world == "auto":
        if "market_config" not in meta:
            return None
        cfg = MarketConfig.from_dict(json.loads(meta["market_config"]))
    else:
        cfg = MarketConfig.from_toml(world)
    with err.status("building the ground-truth market…"):
        return Market.get(cfg)


@clicksim_app.command("fit")
def clicksim_fit(
    logs: Annotated[
        Path, typer.Option(help="DecisionLog Parquet with rewards, or a dataset folder of them.")
    ],
    out: Annotated[Path, typer.Option(help="Directory to save the simulator in.")],
    variants: Annotated[
        Path | None, typer.Option(help="Variants table (default: <logs>.variants.parquet).")
    ] = None,
    members: Annotated[int, typer.Option(help="Ensemble members (uncertainty).")] = 5,
    weighting: Annotated[
        str, typer.Option(help="none, or ipw: propensity-weight rows to undo a skewed logger.")
    ] = "none",
    weight_power: Annotated[
        float, typer.Option(help="Flattening exponent of the weights (1 = plain IPW).")
    ] = 0.5,
    calibration: Annotated[str, typer.Option(help="platt, isotonic or none.")] = "platt",
    epochs: Annotated[int, typer.Option(help="Most epochs per member (early stopping).")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of split, bootstraps and initialisation.")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch's default).")] = 0,
    max_rows: Annotated[
        int,
        typer.Option(
            help="Fit on a uniform sample of this many rows of a larger log (DuckDB reservoir, "
            "bounded memory; seeded by --seed); 0 = every row."
        ),
    ] = 2_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Fit a calibrated CTR-model ensemble on a log and save it (weights, config, metrics).

    A log larger than --max-rows (a file, or a dataset folder of Parquet parts) is read as a
    uniform sample through a DuckDB scan; a log that fits is read whole, as before."""
    import torch

    from copyloop.contract import check_output_path
    from copyloop.envs.clicksim import ClickData, ClickSimConfig, ClickSimulator

    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if max_rows < 0:
        raise ValueError(f"--max-rows must be >= 0 (0 = every row), got {max_rows}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file — a click simulator is saved as a folder")
    if not out.exists():
        check_output_path(out, "--out")  # its folder exists and is writable
    if threads:
        torch.set_num_threads(threads)
    cfg = ClickSimConfig(
        members=members,
        weighting=weighting,
        weight_power=weight_power,
        calibration=calibration,
        epochs=epochs,
        seed=seed,
    )
    with err.status("reading the log and embedding its variants…"):
        data = ClickData.from_files(logs, variants, max_rows=max_rows or None, seed=seed)
    with progress(cfg.members * cfg.epochs, "fitting click simulator") as tick:
        sim = ClickSimulator.fit(data, cfg, progress=lambda d, _t, _w: tick(d))
    sim.save(out)
    m = sim.metrics
    if as_json:
        print_json({"out": str(out), "metrics": m})
        return
    t = Table(title=f"click simulator saved to {out}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("rows (train / holdout)", f"{m['train_rows']:,} / {m['holdout_rows']:,}")
    t.add_row("clicks", f"{m['clicks']:,.0f} (CTR {m['base_rate']:.4f})")
    t.add_row("holdout log-loss", f"{m['holdout_logloss_calibrated']:.5f}")
    t.add_row("  base-rate model", f"{m['holdout_logloss_base_rate']:.5f}")
    t.add_row("epochs per member", ", ".join(str(e) for e in m["member_epochs"]))
    t.add_row("fit time", f"{m['fit_seconds']:.1f} s ({m['torch_threads']} torch threads)")
    console.print(t)


@clicksim_app.command("report")
def clicksim_report(
    directory: Annotated[Path, typer.Argument(help="A saved click simulator.")],
    logs: Annotated[Path, typer.Option(help="Held-out DecisionLog with rewards.")],
    variants: Annotated[
        Path | None, typer.Option(help="Variants table (default: <logs>.variants.parquet).")
    ] = None,
    world: Annotated[
        str,
        typer.Option(
            help="Ground truth: auto (the market a simulated log names), none, or a market TOML."
        ),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a reliability plot (PNG).")] = None,
) -> None:
    """Fidelity of a simulator on held-out logs (and against the world when it is known)."""
    from copyloop.contract import check_output_path, log_metadata
    from copyloop.envs.clicksim import ClickData, ClickSimulator
    from copyloop.envs.clicksim_report import fidelity_report, plot_fidelity

    if plot is not None:
        check_output_path(plot, "--plot")
    sim = ClickSimulator.load(directory)
    data = ClickData.from_files(logs, variants)
    market = market_of_log(log_metadata(logs), world)
    with err.status("scoring the simulator…"):
        rep = fidelity_report(sim, data, market=market)
    if plot is not None:
        plot_fidelity(rep, plot)
    if as_json:
        print(rep.to_json())
        return
    t = Table(title=f"click simulator {directory} on {logs.name} ({rep.rows:,} rows)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    w = rep.world
    t.add_row("AUC", f"{rep.auc:.4f}" + (f"  (Bayes {w.bayes_auc:.4f})" if w else ""))
    t.add_row("log-loss", f"{rep.logloss:.5f}  (base rate {rep.logloss_base_rate:.5f})")
    t.add_row("ECE", f"{rep.ece:.5f} = {100 * rep.ece_over_base:.1f} % of CTR {rep.base_rate:.4f}")
    if w is not None:
        t.add_row("ECE vs true CTR", f"{w.true_ece:.5f}")
        t.add_row("(segment, variant) CTR correlation", f"{w.cell_ctr_pearson:.3f}")
        for s, r in w.spearman_by_segment.items():
            t.add_row(
                f"Spearman {s}",
                f"{r:.3f} (within campaign {w.within_campaign_spearman_by_segment[s]:.3f})",
            )
        t.add_row(
            "value gap (sim-greedy vs true best)",
            f"{100 * w.value_gap:.2f} %  (CTR {w.sim_policy_value:.4f} vs {w.best_value:.4f}; "
            f"uniform {w.uniform_value:.4f})",
        )
    console.print(t)
    if plot is not None:
        console.print(f"wrote {plot}")
