"""New copy for live campaigns: the generator writes lines for a campaign's product, filtered,
for the autopilot to put on trial (``copyloop autopilot --propose``).

A live campaign is matched to its product through the market's catalog (the campaign ids
``copyloop serve --demo`` registers). For each campaign the generator is prompted once per
audience segment — the service's campaign is shown to every segment — and the kept lines
(the generator's filters: length, the product's name, banned claims, near-duplicates) are
interleaved across segments, so a campaign's proposals are not all written for one audience.
A proposal's id is the campaign id plus a hash of its text, so proposing the same line twice
gives the same id and the service refuses it as a duplicate instead of trying it again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

from copyloop.generator.prompts import CopyRequest


@dataclass(frozen=True)
class Proposal:
    """A line proposed for campaign ``campaign_id``: its id, text, the segment it was written
    for, and the model (``name@version``) that wrote it."""

    campaign_id: str
    variant_id: str
    text: str
    segment: int
    model: str


ID = re.compile(r"^(?P<campaign>.+)~gen(?P<segment>\d+)-[0-9a-f]{10}$")
"""A proposal's variant id: ``<campaign>~gen<segment>-<hash of the text>``."""


def proposal_id(campaign_id: str, text: str, segment: int) -> str:
    """The id a proposed line gets: stable for the same campaign, text and segment, and
    carrying the segment it was written for (the service's log then says which prompt wrote
    each line, :mod:`copyloop.generator.service_pool`)."""
    return f"{campaign_id}~gen{segment}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def propose(
    gen: Any,
    campaign_ids: Sequence[str],
    per_campaign: int,
    *,
    samples_per_segment: int = 2,
    seed: int = 0,
    exclude: Mapping[str, Collection[str]] | None = None,
) -> list[Proposal]:
    """Up to ``per_campaign`` new lines for each campaign, from ``gen`` (a
    :class:`~copyloop.generator.generate.CopyGenerator` over the market the campaigns belong
    to). ``exclude``: variant ids a campaign has already (its active lines and candidates): a
    line whose :func:`proposal_id` is among them is skipped.

    Raises:
        ValueError: a campaign the market's catalog does not have, or a count below 1.
    """
    if per_campaign < 1:
        raise ValueError(f"`per_campaign` must be >= 1, got {per_campaign}")
    if samples_per_segment < 1:
        raise ValueError(f"`samples_per_segment` must be >= 1, got {samples_per_segment}")
    cat, pop = gen.market.catalog, gen.market.population
    index = {cid: i for i, cid in enumerate(cat.campaign_ids)}
    unknown = [c for c in campaign_ids if c not in index]
    if unknown:
        raise ValueError(
            f"campaigns {unknown[:5]} are not in the market's catalog — the generator needs "
            "their product (pass the market config the service was started with)"
        )
    segments = range(pop.n_segments)
    requests = [CopyRequest(index[c], s) for c in campaign_ids for s in segments]
    out = gen.generate(requests, samples_per_segment, seed=seed)
    model = f"{gen.lm.name}@{gen.lm.version}"
    proposals: list[Proposal] = []
    for cid in campaign_ids:
        c = index[cid]
        by_segment = [[v for v in out.kept if v.campaign == c and v.segment == s] for s in segments]
        seen = set((exclude or {}).get(cid, ()))
        texts: set[str] = set()
        mine: list[Proposal] = []
        for v in (v for group in zip_longest(*by_segment) for v in group if v is not None):
            vid = proposal_id(cid, v.text, v.segment)
            if vid in seen or v.text in texts:
                continue
            seen.add(vid)
            texts.add(v.text)
            mine.append(Proposal(cid, vid, v.text, v.segment, model))
            if len(mine) == per_campaign:
                break
        proposals += mine
    return proposals


__all__ = ["ID", "Proposal", "proposal_id", "propose"]
