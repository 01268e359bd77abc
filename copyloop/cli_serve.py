"""``copyloop serve`` (the live rank/reward service), ``copyloop serve export`` and
``copyloop keys create``. Needs the ``serve`` extra."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from copyloop.cli_common import console, err, market, print_json

serve_app = typer.Typer(
    help="Run the live rank/reward service, or export its log.",
    invoke_without_command=True,
)
keys_app = typer.Typer(help="API keys of the service.", no_args_is_help=True)

StoreOpt = Annotated[
    str, typer.Option(help="Store URL: sqlite:///path.db or postgresql://user@host:port/db.")
]


def _open_store(store: str) -> Any:
    try:
        from copyloop.serve.store import open_store
    except ImportError as e:
        raise ValueError(f"{e} (pip install 'copyloop[serve]')") from None
    return open_store(store)


def register_market(store: Any, m: Any, agent: str = "linear_ts", seed: int = 0) -> int:
    """Register the market's campaigns and variants (with their embeddings) in ``store``, unless
    it has campaigns already; returns the campaigns registered. The campaigns share one model,
    ``market``, as the env's agents learn across the market's campaigns."""
    from copyloop.serve.store import CampaignConfig, VariantRecord

    if store.campaigns():
        return 0
    cat = m.catalog
    texts = cat.variants.texts
    camp_of = cat.variant_campaign.tolist()
    for c, cid in enumerate(cat.campaign_ids):
        cfg = CampaignConfig(
            campaign_id=cid,
            context_width=m.user_dim,
            agent=agent,
            agent_params={"seed": seed},
            reward_wait_s=30.0,
            model_id="market",
        )
        rows = [v for v in range(cat.n_variants) if camp_of[v] == c]
        recs = [VariantRecord(cat.variant_ids[v], cid, texts[v], cat.embeddings[v]) for v in rows]
        store.create_campaign(cfg, recs, "demo").result()
    return len(cat.campaign_ids)


@serve_app.callback()
def serve(
    ctx: typer.Context,
    store: StoreOpt = "sqlite:///copyloop-serve.db",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    demo: Annotated[
        bool, typer.Option("--demo", help="Register the default market's campaigns (LinearTS).")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="Market config (TOML) whose featurizer the copy uses.")
    ] = None,
    learn_interval: Annotated[float, typer.Option(help="Learner tick, seconds.")] = 0.1,
    blas_threads: Annotated[
        int, typer.Option(help="BLAS threads (0 = the library's default).")
    ] = 1,
    role: Annotated[
        str,
        typer.Option(
            help="all: serve and learn; learner: serve, learn and hand snapshots to replicas; "
            "api: a replica that serves and follows the learner's snapshots (one learner per "
            "store, any number of api replicas)."
        ),
    ] = "all",
    snapshot_dir: Annotated[
        Path | None,
        typer.Option(
            help="Snapshot folder (default: beside a SQLite file; ./copyloop-<db>.snapshots "
            "for PostgreSQL). Replicas read what the learner writes: one shared folder."
        ),
    ] = None,
    follow_interval: Annotated[
        float, typer.Option(help="Replicas: seconds between looks for a new snapshot.")
    ] = 0.2,
    commit_linger_ms: Annotated[
        float,
        typer.Option(
            help="Group commit: milliseconds the store's writer waits for more writes before "
            "it commits, when they come together (fewer commits, less CPU per request, that "
            "much latency; 0: commit at once)."
        ),
    ] = 1.0,
) -> None:
    """Serve POST /v1/rank and /v1/events/{id}/reward (OpenAPI at /openapi.json).

    Several processes on one store: start one `--role learner` (with `--demo` or your
    campaigns), then any number of `--role api` replicas on other ports."""
    if ctx.invoked_subcommand is not None:
        return
    if not 0 < port < 65536:
        raise ValueError(f"`port` must be in 1..65535, got {port}")
    if role not in ("all", "api", "learner"):  # before the store or the market is touched
        raise ValueError(f"`role` must be one of all, api, learner, got {role!r}")
    if role == "api" and demo:
        raise ValueError(
            "`--demo` with `--role api`: a replica registers nothing — start the learner with "
            "--demo, then the replicas without it"
        )
    try:
        import uvicorn

        from copyloop.serve import ServiceConfig, create_app
    except ImportError as e:
        raise ValueError(f"{e} (pip install 'copyloop[serve]')") from None
    if blas_threads < 0:
        raise ValueError(f"`blas_threads` must be >= 0, got {blas_threads}")
    if blas_threads:
        # Decisions are small matrix products one request at a time: BLAS threads only fight
        # the event loop and the learner for the cores (a decision took ~5x longer with them).
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=blas_threads)
    featurizer, encoder = _featurizer(store, config, demo)
    cfg = ServiceConfig(
        store=store,
        featurizer=featurizer,
        encoder=encoder,
        learn_interval_s=learn_interval,
        role=role,
        snapshot_dir=snapshot_dir,
        follow_interval_s=follow_interval,
        commit_linger_s=commit_linger_ms / 1000,
    )
    err.print(f"serving on http://{host}:{port} (store {store}, role {role})")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning", access_log=False)


def _featurizer(store: str, config: Path | None, demo: bool) -> tuple[Any, Any]:
    """The featurizer the store's copy is featurized with, and a text encoder if one is at hand.

    The first start builds the market (``config``, or the default one), saves its featurizer
    into the store and, with ``demo``, registers its campaigns; later starts read the
    featurizer back and build nothing, so a restart serves within seconds (the MiniLM encoder
    loads only when an admin adds copy)."""
    from copyloop.serve.store import featurizer_bytes, featurizer_from_bytes

    st = _open_store(store)
    try:
        blob = st.get_meta("featurizer")
        m = None
        if demo and not st.campaigns():
            m = market(config)
            err.print(f"demo: registered {register_market(st, m)} campaigns")
        if blob is None:
            m = m or market(config)
            st.set_meta("featurizer", featurizer_bytes(m.catalog.featurizer)).result()
            return m.catalog.featurizer, getattr(m.catalog, "encoder", None)
        if config is not None:
            err.print("[dim]the store has its featurizer already; --config is not re-read[/]")
        return featurizer_from_bytes(blob), None
    finally:
        st.close()


@serve_app.command("export")
def export(
    store: StoreOpt,
    out: Annotated[Path, typer.Option(help="DecisionLog Parquet to write (+ variants sidecar).")],
    campaign: Annotated[
        str | None, typer.Option(help="Only this campaign (needed if widths differ).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write the store's joined decisions as a DecisionLog that `copyloop ope` reads."""
    st = _open_store(store)
    try:
        s = st.export_log(out, campaign_id=campaign)
    finally:
        st.close()
    info = {
        "out": str(s.path),
        "rows": s.rows,
        "default_rewards": s.default_rewards,
        "excluded_open_windows": s.excluded_open,
        "excluded_not_activated": s.excluded_not_activated,
    }
    if as_json:
        print_json(info)
        return
    console.print(
        f"wrote {s.rows:,} decisions to {s.path} ({s.default_rewards:,} default rewards; left "
        f"out {s.excluded_open:,} open windows, {s.excluded_not_activated:,} never activated)"
    )


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(help="client (rank, reward) or admin (everything).")],
    store: StoreOpt,
) -> None:
    """Create an API key and print it once (only its salted hash is stored)."""
    from copyloop.serve.store import SCOPES

    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {list(SCOPES)}, got {scope!r}")
    st = _open_store(store)
    try:
        key = st.create_key(scope, "cli").result()
    finally:
        st.close()
    err.print(f"a new {scope} key — shown once, store it now:")
    print(key)


def traffic(
    url: Annotated[
        list[str] | None,
        typer.Option(
            help="The service's base URL; repeat it for API replicas (ranks go round-robin, "
            "each reward to another replica than its decision).  [default: "
            "http://127.0.0.1:8000]"
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="A client API key (default: $COPYLOOP_KEY).", envvar="COPYLOOP_KEY"),
    ] = None,
    requests: Annotated[int, typer.Option(help="Rank calls (each with one reward).")] = 20_000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 32,
    reward_delay: Annotated[
        float, typer.Option(help="Seconds from a decision to its reward.")
    ] = 0.0,
    max_seconds: Annotated[float, typer.Option(help="Stop after this long.")] = 600.0,
    window: Annotated[int | None, typer.Option(help="Requests per point of the CTR curve.")] = None,
    campaigns: Annotated[
        str | None, typer.Option(help="Comma-separated campaign ids (default: all).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of users, campaigns and clicks.")] = 0,
    config: Annotated[
        Path | None, typer.Option(help="Market config (TOML) the service was started with.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the report as JSON here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write the served-CTR curve here (.png/.svg).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Replay simulated users of the market against a running service: clicks are drawn from
    the world's true CTR of the variant the service chose. Prints throughput, latency and the
    served CTR over time against uniform and the oracle."""
    from copyloop.cli_common import json_text, progress, split_list
    from copyloop.contract import check_output_path

    if not key:
        raise ValueError(
            "`key` is missing: pass --key or set COPYLOOP_KEY "
            "(copyloop keys create --scope client --store URL)"
        )
    for p, flag in ((out, "--out"), (plot, "--plot")):
        if p is not None:
            check_output_path(p, flag)
    try:
        from copyloop.serve.traffic import TrafficConfig, plot_curve, run_traffic
    except ImportError as e:
        raise ValueError(f"{e} (pip install 'copyloop[serve]')") from None
    urls = [u.rstrip("/") for u in (url or ["http://127.0.0.1:8000"])]
    cfg = TrafficConfig(
        url=urls[0],
        replicas=tuple(urls[1:]),
        key=key,
        requests=requests,
        concurrency=concurrency,
        reward_delay_s=reward_delay,
        max_seconds=max_seconds,
        window=window,
        seed=seed,
        campaigns=None if campaigns is None else split_list(campaigns),
    )
    for u in urls:  # before the market: a down service fails in a second
        _check_service(u, key)
    m = market(config)
    with progress(requests, "traffic") as tick:
        rep = run_traffic(cfg, m, tick)
    if out is not None:
        from copyloop.contract import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(json_text(rep.to_dict()) + "\n")
    if plot is not None:
        plot_curve(rep, plot)
    if as_json:
        print_json(rep.to_dict())
        return
    _print_report(rep, out, plot)


def autopilot(
    url: Annotated[str, typer.Option(help="The service (its admin API judges and settles).")] = (
        "http://127.0.0.1:8000"
    ),
    key: Annotated[
        str | None,
        typer.Option(
            help="An admin API key (default: $COPYLOOP_ADMIN_KEY).", envvar="COPYLOOP_ADMIN_KEY"
        ),
    ] = None,
    campaigns: Annotated[
        str | None,
        typer.Option(help="Comma-separated campaign ids (default: all with candidates)."),
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Risk of promoting a candidate that does not improve the policy.")
    ] = 0.05,
    min_impressions: Annotated[int, typer.Option(help="First look (impressions).")] = 500,
    max_impressions: Annotated[
        int, typer.Option(help="Last look: not promoted by then, rejected.")
    ] = 16_000,
    every: Annotated[
        float, typer.Option(help="Seconds between rounds; 0 runs one round and exits.")
    ] = 0.0,
    rounds: Annotated[int, typer.Option(help="Most rounds (with --every).")] = 1_000_000,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            help="A candidate agent setting, kind[:key=value,...] (repeatable), e.g. "
            "logistic_ts:alpha=0.5: judged on the model's log each round, the best one whose "
            "lower bound beats the online policy is adopted."
        ),
    ] = None,
    policy_campaigns: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated campaigns whose models --policy judges, one per model "
            "(default: the first campaign; campaigns naming the same model share its agent)."
        ),
    ] = None,
    policy_min_rows: Annotated[
        int, typer.Option(help="Joined rows a model needs before --policy is judged.")
    ] = 2000,
    propose: Annotated[
        int,
        typer.Option(
            help="Keep this many generator-written lines on trial in every campaign with an "
            "exploration slice (explore_share > 0): each round tops them up (0: off)."
        ),
    ] = 0,
    generator: Annotated[
        str | None,
        typer.Option(help="The generator for --propose (a model folder; default: SmolLM2)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="The market config the service was started with (for --propose)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Promote or reject the candidates on trial from the service's own log: the OPE gate
    (the agent with the candidate vs without) at fixed looks (impressions min·2^k up to max,
    alpha split over the looks); verdicts are settled through the admin API, with their
    numbers, into the audit log. With --policy, candidate agent settings are judged too
    (progressive validation on the model's log, alpha split over the candidates, each round)
    and the best one that beats the online policy by its lower bound is adopted. With
    --propose K, each round first tops up every campaign with an exploration slice to K lines
    on trial, written by the generator (--generator) for the campaign's product."""
    import time

    from copyloop.cli_common import split_list

    if not key:
        raise ValueError(
            "`key` is missing: pass --key or set COPYLOOP_ADMIN_KEY "
            "(copyloop keys create --scope admin --store URL)"
        )
    if every < 0:
        raise ValueError(f"`every` must be >= 0 seconds, got {every}")
    try:
        from copyloop.serve.autopilot import GateSettings, run_once
        from copyloop.serve.client import Client
        from copyloop.serve.policies import PolicyCandidate, PolicySettings, adopt_best
    except ImportError as e:
        raise ValueError(f"{e} (pip install 'copyloop[serve]')") from None
    settings = GateSettings(alpha, min_impressions, max_impressions)
    if propose < 0:
        raise ValueError(f"`propose` must be >= 0 lines, got {propose}")
    policies = [PolicyCandidate.parse(p) for p in policy or []]
    policy_settings = PolicySettings(alpha=alpha, min_rows=policy_min_rows)
    base = url.rstrip("/")
    _check_service(base, key)
    proposer: list[Any] = []  # the generator, loaded at the first round that needs it
    with Client(base, key, timeout=600.0) as client:
        for i in range(max(rounds, 1)):
            if propose:
                _print_proposals(
                    top_up(client, proposer, propose, generator, config, campaigns, seed=i),
                    as_json,
                )
            names = (
                list(split_list(campaigns))
                if campaigns is not None
                else [c.campaign_id for c in client.campaigns() if c.candidates]
            )

            def judge(cid: str) -> list[Any]:
                return client.judge(cid, **asdict(settings))

            _print_verdicts(run_once(judge, client.settle_candidate, names), as_json)
            if policies:
                on = (
                    list(split_list(policy_campaigns))
                    if policy_campaigns is not None
                    else [c.campaign_id for c in client.campaigns()][:1]
                )
                _print_policy_verdicts(adopt_best(client, on, policies, policy_settings), as_json)
            if every == 0 or i + 1 >= rounds:
                break
            time.sleep(every)


def _print_verdicts(verdicts: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([asdict(v) for v in verdicts])
        return
    from rich.table import Table

    t = Table(title="autopilot: candidates on trial")
    for c in ("campaign", "candidate", "verdict", "impressions", "candidate LCB", "incumbent"):
        t.add_column(c, justify="right" if c not in ("campaign", "candidate") else "left")
    for v in verdicts:
        t.add_row(
            v.campaign_id,
            v.variant_id,
            v.action,
            f"{v.impressions:,}",
            "-" if v.candidate is None else f"{v.candidate['lower']:.4f}",
            "-" if v.incumbent is None else f"{v.incumbent['estimate']:.4f}",
        )
    console.print(t if verdicts else "no candidates on trial")


def top_up(
    client: Any,
    proposer: list[Any],
    keep: int,
    generator: str | None,
    config: Path | None,
    campaigns: str | None,
    seed: int,
) -> list[Any]:
    """Add generator-written candidates to every campaign with an exploration slice (among
    ``campaigns``, if given) that has fewer than ``keep`` on trial; returns what was added."""
    from copyloop.cli_common import split_list
    from copyloop.generator.propose import propose as propose_lines
    from copyloop.serve.client import APIError

    wanted = set(split_list(campaigns)) if campaigns is not None else None
    camps = [
        c
        for c in client.campaigns()
        if c.explore_share > 0
        and len(c.candidates) < keep
        and (wanted is None or c.campaign_id in wanted)
    ]
    if not camps:
        return []
    if not proposer:
        from copyloop.generator.generate import CopyGenerator
        from copyloop.generator.models import load_model

        with err.status("loading the generator…"):
            proposer.append(CopyGenerator(load_model(generator), market(config)))
    need = {c.campaign_id: keep - len(c.candidates) for c in camps}
    have = {c.campaign_id: {*c.active_variants, *c.candidates} for c in camps}
    with err.status(f"writing copy for {len(camps)} campaign(s)…"):
        lines = propose_lines(proposer[0], list(need), max(need.values()), seed=seed, exclude=have)
    added = []
    for cid, n in need.items():
        for p in [p for p in lines if p.campaign_id == cid][:n]:
            try:
                client.add_candidates(cid, {p.variant_id: p.text})
            except APIError as e:
                if e.status != 409:  # 409: the campaign has this line already (another id)
                    raise
                continue
            added.append(p)
    return added


def _print_proposals(added: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([asdict(p) for p in added])
        return
    if not added:
        return
    from rich.table import Table

    t = Table(title=f"autopilot: new copy on trial (written by {added[0].model})")
    for c in ("campaign", "candidate", "segment", "text"):
        t.add_column(c)
    for p in added:
        t.add_row(p.campaign_id, p.variant_id, str(p.segment), p.text)
    console.print(t)


def _print_policy_verdicts(verdicts: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([v.evidence() for v in verdicts])
        return
    from rich.table import Table

    t = Table(title="autopilot: candidate agent settings")
    for c in ("model", "setting", "verdict", "rows", "candidate", "online", "gain LCB", "ESS"):
        t.add_column(c, justify="right" if c not in ("model", "setting") else "left")
    for v in verdicts:
        t.add_row(
            v.model_id,
            v.candidate,
            v.action,
            f"{v.rows:,}",
            *("-" if x is None else f"{x:.4f}" for x in (v.candidate_estimate, v.online_estimate)),
            "-" if v.lower is None else f"{v.lower:+.4f}",
            "-" if v.ess is None else f"{v.ess:,.0f}",
        )
    console.print(t if verdicts else "no agent settings judged")


def _check_service(url: str, key: str) -> None:
    """Fail fast, naming the problem, when the service is down or the key is refused."""
    import httpx

    try:
        r = httpx.get(f"{url}/healthz", timeout=5)
    except httpx.HTTPError as e:
        raise ValueError(
            f"no service at {url} ({type(e).__name__}) — start one: copyloop serve --demo"
        ) from None
    if r.status_code != 200:
        raise ValueError(f"{url}/healthz answered {r.status_code} — is it copyloop serve?")
    probe = httpx.post(f"{url}/v1/events/-/reward", json={"value": 0}, headers={"X-API-Key": key})
    if probe.status_code in (401, 403):
        raise ValueError(f"the service refused the key ({probe.status_code}): {probe.text[:200]}")


def _print_report(rep: Any, out: Path | None, plot: Path | None) -> None:
    from rich.table import Table

    t = Table(title="copyloop traffic")
    for c in ("", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        t.add_column(c, justify="right")
    for name, d in (("rank", rep.rank_ms), ("reward", rep.reward_ms)):
        t.add_row(name, *(f"{d[k]:.1f}" for k in ("p50", "p90", "p99", "max")))
    console.print(t)
    early = " (stopped at --max-seconds)" if rep.stopped_early else ""
    console.print(
        f"{rep.requests:,} decisions + {rep.rewards:,} rewards in {rep.seconds:.1f} s: "
        f"[bold]{rep.pairs_per_s:,.0f} rank+reward pairs/s[/]{early}; errors: "
        f"{rep.errors or 'none'}"
    )
    ct = Table(title="expected CTR of the served copy (the world's, never sent to the service)")
    for col in ("requests", "served", "uniform", "oracle", "observed clicks"):
        ct.add_column(col, justify="right")
    for p in rep.curve:
        ct.add_row(
            f"{p['requests']:,.0f}",
            f"{p['served']:.4f}",
            f"{p['uniform']:.4f}",
            f"{p['oracle']:.4f}",
            f"{p['clicks']:.4f}",
        )
    console.print(ct)
    console.print(
        f"overall: served {rep.served_ctr:.4f}, uniform {rep.uniform_ctr:.4f}, oracle "
        f"{rep.oracle_ctr:.4f}"
    )
    s = rep.server
    if s.get("freshness_count"):
        console.print(
            f"server: reward → serving model p50 ≤ {s['freshness_p50_le_s']} s, p99 ≤ "
            f"{s['freshness_p99_le_s']} s; {s.get('mean_commit_batch', 0):.1f} writes per commit"
        )
    for i, r in enumerate(rep.replica_servers):
        pickup = (
            f"snapshot pickup p99 ≤ {r['pickup_p99_le_s']} s, max ≤ {r['pickup_max_le_s']} s "
            f"({r['pickup_count']:.0f} snapshots)"
            if r.get("pickup_count")
            else "no snapshot picked up (not an api replica, or none was written)"
        )
        console.print(f"replica {i + 1}: {r.get('decisions', 0):,.0f} decisions; {pickup}")
    for what, p in (("report", out), ("plot", plot)):
        if p is not None:
            console.print(f"wrote {what} {p}")
