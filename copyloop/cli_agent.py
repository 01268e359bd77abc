"""``copyloop agent fit`` / ``copyloop agent eval``: train a policy on a logged DecisionLog and
judge it off-policy on held-out rows against a baseline, with the promotion gate's verdict.

Held-out rows: ``agent fit --split 0.8`` fits on the first 80 % of the log (by timestamp when
the log has distinct timestamps, else by row order) and records the split in the policy's fit
record (``<out>.fit.json``); ``agent eval`` on the same log re-splits the same way and
evaluates on the remaining 20 % (``--split`` may be left out there), and refuses to evaluate a
policy on rows it was fit on.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from copyloop.cli_common import ExitCode, console, err, fail, print_json, progress, split_list

agent_app = typer.Typer(
    help="Fit a policy on a logged DecisionLog, and evaluate it off-policy on held-out rows.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (strict: null for ±inf/NaN).")]
SplitOpt = Annotated[
    float | None,
    typer.Option(
        help="Share of the log to fit on (0–1): the first part by time (by row order when the "
        "log's timestamps are all equal); eval uses the rest."
    ),
]
FEATURES = ("auto", "text", "onehot")


def _check_split(split: float | None) -> None:
    if split is not None and not 0.0 < split < 1.0:
        raise fail(f"--split must be in (0, 1) — the share of rows to fit on — got {split}")


def _market_for(features: str, variants: Any, meta: dict[str, str], config: Path | None) -> Any:
    """The market whose catalog featurizer gives the variants text features, or None for
    one-hot arm features."""
    from copyloop.cli_clicksim import market_of_log

    if features not in FEATURES:
        raise fail(f"--features must be one of {', '.join(FEATURES)}, got {features!r}")
    if features == "onehot":
        return None
    known = config is not None or "market_config" in meta
    if features == "text":
        if variants.embeddings is None:
            raise fail(
                "--features text needs embeddings in the variants table (an imported log's "
                "actions are labels) — use --features onehot"
            )
        if not known:
            raise fail(
                "--features text needs the market whose catalog featurizer maps copy to "
                "features; this log does not name one — pass --config"
            )
    if variants.embeddings is None or not known:
        return None
    return market_of_log(meta, "auto" if config is None else str(config))


@agent_app.command("fit")
def agent_fit(
    logs: Annotated[Path, typer.Option(help="DecisionLog Parquet to learn from.")],
    agent: Annotated[
        str, typer.Option(help="Agent: linear_ts, logistic_ts, linucb, bernoulli_ts, …")
    ],
    out: Annotated[Path, typer.Option(help="Policy file to write (.npz; + <out>.fit.json).")],
    variants: Annotated[
        Path | None,
        typer.Option(help="Variants table (default: <logs>.variants.parquet)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Agent parameter key=value (repeatable), e.g. noise=0.1."),
    ] = None,
    split: SplitOpt = None,
    features: Annotated[
        str,
        typer.Option(
            help="Variant features: text (the market's copy featurizer; needs embeddings), "
            "onehot (one arm per variant), or auto (text when the log names its market)."
        ),
    ] = "auto",
    config: Annotated[
        Path | None, typer.Option(help="Market config (TOML) whose featurizer gives text features.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the policy.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Log rows per update.")] = 4096,
    as_json: JsonOpt = False,
) -> None:
    """Train an agent on a log's rows (propensity-weighted where it needs it) and save it with
    its variant store; nothing is written on an error."""
    from copyloop.agents.offline import (
        FitInfo,
        fit_policy,
        fit_record_path,
        make_policy,
        parse_params,
        read_log,
        save_fitted,
        split_log,
        split_order,
        store_for,
    )
    from copyloop.contract import check_output_path, log_metadata, read_variants_for

    params = parse_params(agent, param or [])
    params.setdefault("seed", seed)
    make_policy(agent, params)  # bad values fail before the log is read
    _check_split(split)
    if batch_size < 1:
        raise fail(f"--batch-size must be >= 1, got {batch_size}")
    check_output_path(out, "--out")
    check_output_path(fit_record_path(out), "--out")
    var = read_variants_for(logs, variants)
    if var is None:
        raise fail(
            f"{logs} has no variants table beside it — pass --variants (the table the log's "
            "actions refer to)"
        )
    meta = log_metadata(logs)
    log = read_log(logs, var)
    store = store_for(var, _market_for(features, var, meta, config))
    fit_part, split_by = log, None
    if split is not None:
        fit_part, _ = split_log(log, split)
        split_by = split_order(log)[1]
    observed = int((~np.isnan(fit_part.reward)).sum())
    if observed and not as_json:
        with progress(observed, f"fitting {agent}") as tick:
            policy = fit_policy(
                agent, params, fit_part, store, batch_size=batch_size, progress=tick
            )
    else:
        policy = fit_policy(agent, params, fit_part, store, batch_size=batch_size)
    from copyloop.agents.warm import needs_weights

    names = meta.get("context_names")
    info = save_fitted(
        policy,
        out,
        FitInfo(
            agent=agent,
            params=policy.get_params(),
            context_width=log.context_dim,
            context_names=None if names is None else list(json.loads(names)),
            campaigns=sorted(set(store.campaigns)),
            n_variants=len(store),
            arm_features="onehot" if store.featurizer is None else "text",
            log=str(logs),
            log_pair_id=meta.get("pair_id"),
            log_rows=log.n_rows,
            split=split,
            split_by=split_by,
            fit_rows=fit_part.n_rows,
            learned_rows=observed,
            weighted=needs_weights(policy),
        ),
    )
    if as_json:
        print_json({"out": str(out), "fit_record": str(fit_record_path(out)), **info.to_dict()})
        return
    part = "" if split is None else f" (the first {split:.0%} by {split_by})"
    n_camp = len(info.campaigns)
    console.print(
        f"fit {agent} on {observed:,} rows with rewards of {fit_part.n_rows:,}{part} · "
        f"{info.n_variants:,} variants in {n_camp:,} campaign{'' if n_camp == 1 else 's'} "
        f"({info.arm_features} features"
        + (", propensity-weighted" if info.weighted else "")
        + f") · wrote {out} and {fit_record_path(out)}"
    )
    if split is not None:
        console.print(f"evaluate it: copyloop agent eval --logs {logs} --policy {out}")


def _baseline(
    spec: str, data: Any, log: Any, meta: dict[str, str], split: float | None
) -> tuple[np.ndarray, str, list[str]]:
    """The baseline's per-row distribution, (n, K), its name, and notes."""
    from copyloop.agents.offline import check_eval_log, eval_split, load_fitted, policy_probs
    from copyloop.ope.data import check_target

    mask = data.mask
    uniform = mask / mask.sum(axis=1, keepdims=True)
    if spec == "uniform":
        return uniform, "uniform", []
    if spec == "logging":
        if data.logging_probs is not None:
            return check_target(data.logging_probs, data, name="action_probs"), "logging", []
        if np.allclose(data.pscore, 1.0 / mask.sum(axis=1), rtol=1e-6):
            note = "the log has no action_probs; every propensity is 1/K, so the logging policy "
            return uniform, "logging", [note + "was uniform"]
        raise ValueError(
            "the log records only each chosen action's propensity (no `action_probs`) and they "
            "are not 1/K, so the logging policy's distribution over the other candidates is "
            "unknown — pass --baseline uniform or a saved policy (.npz); its observed value on "
            f"these rows is {data.reward.mean():.5f}"
        )
    if not spec.endswith(".npz"):
        raise ValueError(
            f"--baseline must be logging, uniform or a policy file (.npz), got {spec!r}"
        )
    pol, info = load_fitted(spec)
    if eval_split(info, meta, split) != split:
        raise ValueError(
            f"--baseline {spec} was fit on rows of this log that the evaluation uses — fit it "
            "with the same --split as the policy"
        )
    check_eval_log(pol, info, log, meta)
    return check_target(policy_probs(pol, log), data, name=Path(spec).name), Path(spec).name, []


@agent_app.command("eval")
def agent_eval(
    logs: Annotated[Path, typer.Option(help="DecisionLog Parquet to evaluate on.")],
    policy: Annotated[Path, typer.Option(help="Policy file written by agent fit (.npz).")],
    baseline: Annotated[
        str,
        typer.Option(
            help="What the policy must beat: logging (the policy that wrote the log), uniform, "
            "or another policy file (.npz)."
        ),
    ] = "logging",
    variants: Annotated[
        Path | None,
        typer.Option(help="Variants table (default: <logs>.variants.parquet)."),
    ] = None,
    split: SplitOpt = None,
    estimators: Annotated[str, typer.Option(help="Comma-separated estimators.")] = "ipw,snipw,dr",
    gate_estimator: Annotated[str, typer.Option(help="Estimator deciding the gate.")] = "dr",
    alpha: Annotated[float, typer.Option(help="1 − confidence level.")] = 0.05,
    reward_model: Annotated[str, typer.Option(help="logistic, ridge, gbm or mlp.")] = "logistic",
    folds: Annotated[int, typer.Option(help="Cross-fitting folds.")] = 5,
    interval: Annotated[
        str,
        typer.Option(help="Interval method: auto (each estimator's default), clt, bootstrap-t."),
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the bootstraps.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """The policy's off-policy value beside the baseline's, with intervals, and the gate's
    verdict: promote when the policy's lower bound beats the baseline's estimate (exit 0),
    else hold (exit 1); 2 = bad input."""
    import pyarrow as pa

    from copyloop.agents.offline import (
        check_eval_log,
        eval_split,
        load_fitted,
        policy_probs,
        read_log,
        split_log,
        split_order,
    )
    from copyloop.contract import DecisionLog, LogValidationError, log_metadata, read_variants_for
    from copyloop.ope.data import check_target, feedback_from_log
    from copyloop.ope.estimators import get_estimator
    from copyloop.ope.evaluate import check_evaluable, evaluate_policy, gate_to_dict
    from copyloop.ope.gate import gate

    _check_split(split)
    names = list(split_list(estimators))
    if not names:
        raise fail("--estimators is empty — name at least one, e.g. dr")
    for n in [*names, gate_estimator]:
        get_estimator(n)
    if gate_estimator not in names:
        names.append(gate_estimator)
    pol, info = load_fitted(policy)
    var = read_variants_for(logs, variants)
    meta = log_metadata(logs)
    log = read_log(logs, var)
    s = eval_split(info, meta, split)
    notes: list[str] = []
    held = log
    if s is not None:
        held = split_log(log, s)[1]
        notes.append(
            f"evaluating on the held-out {held.n_rows:,} rows: the last {1 - s:.0%} of the log "
            f"by {split_order(log)[1]}"
        )
    seen = ~np.isnan(held.reward)
    if not seen.all():
        if not seen.any():
            raise LogValidationError(
                f"the rows evaluated ({held.n_rows:,}) have no observed rewards — off-policy "
                "evaluation needs outcomes"
            )
        notes.append(f"left out {int((~seen).sum()):,} rows whose reward is not observed yet")
        held = DecisionLog(held.table.filter(pa.array(seen)), variants=var)
    check_eval_log(pol, info, held, meta)
    data = feedback_from_log(held, var)
    check_evaluable(data, name=str(logs))
    target = check_target(policy_probs(pol, held), data, name=policy.name)
    base, base_name, more = _baseline(baseline, data, held, meta, s)
    notes += more
    if not as_json:
        for n in notes:
            err.print(f"[dim]{escape(n)}[/]")
    opts: dict[str, Any] = dict(
        alpha=alpha, reward_model=reward_model, folds=folds, interval=interval, seed=seed
    )
    status = err.status("cross-fitting the reward model…")
    with status if not as_json else contextlib.nullcontext():
        rep = evaluate_policy(data, target, names, **opts)
        rep_b = evaluate_policy(data, base, names, **opts)
    q = rep.fit.q if rep.fit is not None else None
    method = None if interval == "auto" else interval
    d = gate(
        data, target, base, estimator=gate_estimator, q=q, alpha=alpha, method=method, seed=seed
    )
    if as_json:
        print_json(
            {
                "rows": data.n_rows,
                "split": s,
                "notes": notes,
                "policy": {"file": str(policy), "agent": getattr(info, "agent", None)}
                | rep.to_dict(),
                "baseline": {"name": base_name} | rep_b.to_dict(),
                "gate": {"estimator": gate_estimator} | gate_to_dict(d),
                "verdict": "promote" if d.promote else "hold",
            }
        )
    else:
        _print_side_by_side(rep, rep_b, policy.name, base_name, alpha)
        console.print(
            ("[bold green]PROMOTE[/] " if d.promote else "[bold yellow]HOLD[/] ") + escape(d.reason)
        )
    raise typer.Exit(code=ExitCode.OK if d.promote else ExitCode.HOLD)


def _print_side_by_side(rep: Any, rep_b: Any, name: str, base_name: str, alpha: float) -> None:
    level = f"{1 - alpha:.0%}"
    t = Table(
        title=f"off-policy value on {rep.rows:,} decisions (logging policy's observed value "
        f"{rep.logging_policy_value:.5f})",
        caption=f"policy: {name} · baseline: {base_name}",
    )
    for c in ("estimator", "policy", f"{level} interval", "ESS", "baseline", f"{level} interval"):
        t.add_column(c)
    for (n, iv), (_, ib) in zip(rep.estimates, rep_b.estimates, strict=True):
        t.add_row(
            n,
            f"{iv.estimate:.5f}",
            f"[{iv.lower:.5f}, {iv.upper:.5f}]",
            "" if iv.ess is None else f"{iv.ess:,.0f}",
            f"{ib.estimate:.5f}",
            f"[{ib.lower:.5f}, {ib.upper:.5f}]",
        )
    console.print(t)
