"""The generator's proposals for live campaigns (issue 17, ``copyloop autopilot --propose``):
lines per campaign across segments, stable ids, what a campaign has already left out, and the
autopilot's top-up of campaigns with an exploration slice."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from gen_helpers import OPEN

from copyloop.cli_serve import top_up
from copyloop.generator.generate import CopyGenerator, SamplingConfig
from copyloop.generator.models import tiny_model
from copyloop.generator.propose import proposal_id, propose
from copyloop.serve.client import APIError


@pytest.fixture(scope="module")
def gen(market):
    return CopyGenerator(
        tiny_model(seed=0), market, sampling=SamplingConfig(max_new_tokens=6), filters=OPEN
    )


def test_proposals_per_campaign_with_stable_ids(gen) -> None:
    ids = list(gen.market.catalog.campaign_ids[:2])
    got = propose(gen, ids, 3, seed=1)
    for cid in ids:
        mine = [p for p in got if p.campaign_id == cid]
        assert 1 <= len(mine) <= 3
        assert all(p.variant_id == proposal_id(cid, p.text, p.segment) for p in mine)
        assert len({p.variant_id for p in mine}) == len(mine)
        assert len({p.segment for p in mine}) == len(mine)  # interleaved across segments
    assert got == propose(gen, ids, 3, seed=1)  # seeded
    assert got[0].model.startswith(gen.lm.name + "@")


def test_lines_a_campaign_has_are_left_out(gen) -> None:
    cid = gen.market.catalog.campaign_ids[0]
    first = propose(gen, [cid], 2, seed=1)
    again = propose(gen, [cid], 2, seed=1, exclude={cid: {p.variant_id for p in first}})
    assert not {p.variant_id for p in first} & {p.variant_id for p in again}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"campaign_ids": ["no-such-campaign"], "per_campaign": 1}, "not in the market"),
        ({"per_campaign": 0}, "per_campaign"),
        ({"per_campaign": 1, "samples_per_segment": 0}, "samples_per_segment"),
    ],
)
def test_bad_requests_are_refused(gen, kwargs: dict, words: str) -> None:
    kwargs.setdefault("campaign_ids", [gen.market.catalog.campaign_ids[0]])
    with pytest.raises(ValueError, match=words):
        propose(gen, **kwargs)


@dataclass
class _Camp:
    campaign_id: str
    explore_share: float
    candidates: list[str]
    active_variants: list[str] = field(default_factory=list)


class _FakeService:
    """The two admin calls the top-up makes, recorded."""

    def __init__(self, camps: list[_Camp], refuse: tuple[str, ...] = ()) -> None:
        self.camps, self.added, self.refuse = camps, {}, refuse

    def campaigns(self) -> list[_Camp]:
        return self.camps

    def add_candidates(self, cid: str, variants: dict[str, str]) -> list[str]:
        if any(t in self.refuse for t in variants.values()):
            raise APIError(409, "a variant with that id (or text) already exists", None, "POST", "")
        self.added.setdefault(cid, {}).update(variants)
        return list(variants)


def test_top_up_fills_only_campaigns_with_a_slice(gen) -> None:
    c = gen.market.catalog.campaign_ids
    svc = _FakeService(
        [
            _Camp(c[0], 0.1, []),  # slice, nothing on trial: gets 2
            _Camp(c[1], 0.1, ["x"]),  # one on trial: gets 1
            _Camp(c[2], 0.0, []),  # no slice: nothing
            _Camp(c[3], 0.1, ["x", "y"]),  # full
        ]
    )
    added = top_up(svc, [gen], 2, None, None, None, seed=0)
    assert {k: len(v) for k, v in svc.added.items()} == {c[0]: 2, c[1]: 1}
    assert len(added) == 3
    svc2 = _FakeService([_Camp(c[0], 0.1, []), _Camp(c[1], 0.1, [])])
    top_up(svc2, [gen], 1, None, None, c[1], seed=0)  # --campaigns narrows it
    assert list(svc2.added) == [c[1]]
    # a line the campaign has under another id (409) is skipped, the rest still go in
    first = propose(gen, [c[0]], 2, seed=0)[0].text  # what the top-up below writes first
    svc3 = _FakeService([_Camp(c[0], 0.1, [])], refuse=(first,))
    got = top_up(svc3, [gen], 2, None, None, None, seed=0)
    assert first not in svc3.added.get(c[0], {}).values() and len(got) == 1
