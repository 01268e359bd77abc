"""The click recipe's pool from a live service's own log: the generator learns from the clicks
its proposals got on real requests (``copyloop generator pool-from-log``), the step that
closes the production loop (propose → explore → clicks → tune → propose).

A line the autopilot proposed carries, in its variant id (:data:`copyloop.generator.propose.ID`),
its campaign and the audience segment it was written for; so the exported DecisionLog says which
prompt wrote each line. The pool groups lines by that prompt and scores each with the clicks and
impressions it got while on trial — the exploration slice serves a campaign's candidates
uniformly, so within a prompt the lines met the same stream of users. Rows served after a line's
promotion (chosen by the agent, for the users it suits) are left out: a row counts when it was
decided with the slice (policy id ``…+explore``) and the line sits in the slice's block — the
candidates from it to the end of the row's list all carry its probability, ``share / #trial``
(the service appends the lines on trial after the active ones). A prompt needs two lines with at
least ``min_impressions`` each to give a preference pair.

Signal: the service's logged clicks. The judge of a model tuned on it must be other users (or
the world's expected CTR when the service runs on the simulator), never this log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from copyloop.generator.preference import SamplePool
from copyloop.generator.propose import ID


def pool_from_log(
    log: Any,
    campaign_index: dict[str, int],
    prompt_of: Callable[[int, int], str],
    *,
    model: str,
    min_impressions: int = 50,
) -> SamplePool:
    """The pool of the proposals in ``log`` (a :class:`~copyloop.contract.DecisionLog` with
    its variants table, exported by ``copyloop serve export``).

    Args:
        campaign_index: the market's campaign index of each campaign id.
        prompt_of: ``(campaign index, segment) -> rendered prompt`` (the generator's).
        model: the model that wrote the lines (``name@version``), for the record.
        min_impressions: fewest on-trial impressions a line needs to be scored.

    Raises:
        ValueError: no proposals in the log, or none with two scored lines for one prompt —
            naming what is missing.
    """
    from copyloop.generator.clicks import provenance

    if min_impressions < 1:
        raise ValueError(f"`min_impressions` must be >= 1, got {min_impressions}")
    tab = log.table
    action = np.asarray(tab.column("action").to_pylist(), dtype=object)
    reward = log.reward
    on_trial = _on_trial_rows(tab)
    texts = dict(zip(log.variants.variant_ids, log.variants.texts, strict=True))
    lines: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for vid, text in texts.items():
        m = ID.match(vid)
        if m is None:
            continue
        cid = m["campaign"]
        if cid not in campaign_index:
            raise ValueError(f"proposal {vid!r}: campaign {cid!r} is not in the market's catalog")
        lines.setdefault((campaign_index[cid], int(m["segment"])), []).append((vid, text))
    if not lines:
        raise ValueError(
            "the log has no generator proposals (variant ids <campaign>~gen<segment>-<hash>, "
            "as copyloop autopilot --propose adds them)"
        )
    seen = ~np.isnan(reward)
    groups: list[int] = []
    camps: list[int] = []
    segs: list[int] = []
    prompts: list[str] = []
    out_text: list[str] = []
    out_group: list[int] = []
    imps: list[int] = []
    clicks: list[int] = []
    for (c, s), items in sorted(lines.items()):
        scored = []
        for vid, text in items:
            rows = (action == vid) & seen & on_trial
            n = int(rows.sum())
            if n >= min_impressions:
                scored.append((text, n, int(reward[rows].sum())))
        if len(scored) < 2:
            continue
        g = len(groups)
        groups.append(g)
        camps.append(c)
        segs.append(s)
        prompts.append(prompt_of(c, s))
        for text, n, k in scored:
            out_text.append(text)
            out_group.append(g)
            imps.append(n)
            clicks.append(k)
    if not groups:
        raise ValueError(
            f"no prompt has two proposals with >= {min_impressions} impressions on trial yet — "
            "let the exploration slice run longer, or lower --min-impressions"
        )
    n_arr = np.asarray(imps, np.int64)
    k_arr = np.asarray(clicks, np.int64)
    rate = k_arr / n_arr
    meta = {
        "model": model,
        "reward": "clicks",
        "source": "the service's exported log (copyloop serve export)",
        "provenance": provenance(
            "clicks",
            reward="the service's logged clicks on proposed lines while on trial",
            campaigns=sorted(set(camps)),
            split=None,
            impressions=int(n_arr.sum()),
            clicks=int(k_arr.sum()),
            allocation="the service's exploration slice (uniform over a campaign's candidates)",
        ),
    }
    return SamplePool(
        campaigns=np.asarray(camps, np.int64),
        segments=np.asarray(segs, np.int64),
        prompts=prompts,
        group=np.asarray(out_group, np.int64),
        texts=out_text,
        reward=rate.astype(np.float64),
        valid=np.ones(len(out_text), bool),
        meta=meta,
        impressions=n_arr,
        clicks=k_arr,
        stderr=np.sqrt(np.maximum(rate * (1 - rate), 1e-12) / n_arr),
    )


def _on_trial_rows(tab: Any) -> np.ndarray:
    """Rows whose served line was on trial: decided with the exploration slice, and the served
    index starts the block of equal probabilities that ends the candidate list."""
    pid = tab.column("policy_id").to_pylist()
    probs = tab.column("action_probs").to_pylist()
    idx = tab.column("action_index").to_pylist()
    out = np.zeros(tab.num_rows, bool)
    for r, (p, ps, i) in enumerate(zip(pid, probs, idx, strict=True)):
        if p is None or not p.endswith("+explore") or not ps:
            continue
        tail = np.asarray(ps[i:], np.float64)
        out[r] = bool(np.allclose(tail, tail[0], rtol=1e-9, atol=0.0))
    return out


__all__ = ["pool_from_log"]
