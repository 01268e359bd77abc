"""``copyloop serve`` (the live rank/reward service), ``copyloop serve export`` and
``copyloop keys create``. Needs the ``serve`` extra."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from copyloop.cli_common import console, err, market, print_json

serve_app = typer.Typer(
    help="Run the live rank/reward service, or export its log.",
    invoke_without_command=True,
)
keys_app = typer.Typer(help="API keys of the service.", no_args_is_help=True)

StoreOpt = Annotated[str, typer.Option(help="Store URL: sqlite:///path.db.")]


def _sqlite(store: str) -> Any:
    try:
        from copyloop.serve.store import SQLiteStore, parse_store_url
    except ImportError as e:
        raise ValueError(f"{e} (pip install 'copyloop[serve]')") from None
    return SQLiteStore(parse_store_url(store))


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
) -> None:
    """Serve POST /v1/rank and /v1/events/{id}/reward (OpenAPI at /openapi.json)."""
    if ctx.invoked_subcommand is not None:
        return
    if not 0 < port < 65536:
        raise ValueError(f"`port` must be in 1..65535, got {port}")
    try:
        import uvicorn

        from copyloop.serve import ServiceConfig, create_app
    except ImportError as e:
        raise ValueError(f"{e} (pip install 'copyloop[serve]')") from None
    m = market(config)
    if demo:
        st = _sqlite(store)
        try:
            n = register_market(st, m)
        finally:
            st.close()
        err.print(f"demo: registered {n} campaigns" if n else "demo: campaigns already present")
    cfg = ServiceConfig(
        store=store,
        featurizer=m.catalog.featurizer,
        encoder=getattr(m.catalog, "encoder", None),
        learn_interval_s=learn_interval,
    )
    err.print(f"serving on http://{host}:{port} (store {store})")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning", access_log=False)


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
    st = _sqlite(store)
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
    st = _sqlite(store)
    try:
        key = st.create_key(scope, "cli").result()
    finally:
        st.close()
    err.print(f"a new {scope} key — shown once, store it now:")
    print(key)
