"""``copyloop world audit``: the click world's red team, as a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.table import Table

from copyloop.cli_common import console, err, market, print_json

if TYPE_CHECKING:
    from copyloop.envs.world import WorldVersion


def world_audit(
    config: Annotated[Path | None, typer.Option(help="Market config (TOML).")] = None,
    world: Annotated[
        str | None,
        typer.Option(help="Click world to audit: v1 or v2 (default: the config's world)."),
    ] = None,
    campaigns: Annotated[
        int, typer.Option(help="Campaigns audited, spread over the 6 categories.")
    ] = 60,
    users_per_segment: Annotated[int, typer.Option(help="Users drawn per segment.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the users and the random fields.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the results as JSON here.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (strict: null for ±inf/NaN).")
    ] = False,
) -> None:
    """Red-team the click world: how often copy that should lose (spam, stuffing, false claims,
    audience talk, off-product, repetition, gibberish, codes, capitals, CTA-only, …) and good
    hand-written-style lines beat each campaign's median catalog variant, per segment."""
    from copyloop.contract import atomic_path, check_output_path
    from copyloop.envs.audit import ADVERSARIAL_MAX, GOOD_MIN, world_audit

    if world is not None and world not in ("v1", "v2"):
        raise ValueError(f"--world must be v1 or v2, got {world!r}")
    if campaigns < 6:
        raise ValueError(f"--campaigns must be >= 6 (one per category), got {campaigns}")
    if users_per_segment < 1:
        raise ValueError(f"--users-per-segment must be >= 1, got {users_per_segment}")
    if out is not None:
        check_output_path(out, "--out")
    m = market(config)
    if world is not None:
        m = m.with_world(cast("WorldVersion", world))
    with err.status(f"auditing click world {m.config.world.version}…"):
        rep = world_audit(m, campaigns=campaigns, users_per_segment=users_per_segment, seed=seed)
    data = rep.to_dict()
    data["command"] = (
        f"copyloop world audit --world {rep.world} --campaigns {campaigns} "
        f"--users-per-segment {users_per_segment} --seed {seed}"
        + (f" --config {config}" if config is not None else "")
    )
    if out is not None:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if as_json:
        print_json(data)
        return
    t = Table(
        title=f"click world {rep.world}: share of (campaign, segment) pairs beating the "
        f"campaign's median catalog variant ({rep.campaigns} campaigns × "
        f"{len(rep.kinds[0].by_segment)} segments)"
    )
    cats = list(rep.categories)
    for col in ("kind", "expect", "share", "any", *(c.split("_")[0] for c in cats), "target"):
        t.add_column(col, justify="left" if col in ("kind", "expect") else "right")
    for k in rep.kinds:
        target = f"≤ {ADVERSARIAL_MAX:.0%}" if k.expect == "lose" else f"≥ {GOOD_MIN:.0%}"
        mark = "[green]ok[/]" if k.passed else "[red]fail[/]"
        t.add_row(
            k.kind,
            k.expect,
            f"{k.share:.1%}",
            f"{k.any_share:.1%}",
            *(f"{k.by_category.get(c, float('nan')):.0%}" for c in cats),
            f"{target} {mark}",
        )
    console.print(t)
    console.print(
        "share: of (campaign, segment, line) triples, a line beating the median; any: of "
        "(campaign, segment) pairs, at least one of the kind's lines beating it"
    )
    console.print(
        f"{'all kinds meet their targets' if rep.passed else 'some kinds miss their targets'} · "
        f"{rep.users_per_segment} users per segment · seed {rep.seed}"
        + (f" · written to {out}" if out is not None else "")
    )
