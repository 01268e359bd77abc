"""The click-only recipe: a generator that learns from what a live site gives — clicks.

The click world's expected CTR is the *judge* of every experiment (design.md, "The click world
is a judge, not a teacher"). A shop cannot query it: it shows a line to a reader and sees a
click or not. This module gives the tuners exactly that and nothing more:

1. :class:`UserSplit` cuts the market's users in two disjoint halves, once, by a seed: the
   ``tune`` half is every reader the tuning may touch (its impressions, its monitoring curves),
   the ``judge`` half is drawn from, without replacement, by the judge. Nobody is in both.
2. :func:`simulate_clicks` spends a stated impression budget (at most
   :data:`MAX_IMPRESSIONS_PER_ROUND` per round) over a pool's shippable lines: every impression
   is one reader of the line's segment, drawn from the ``tune`` half, and one Bernoulli draw from
   the world's CTR for that reader. The line's score is its click count, shrunk towards its
   prompt's pooled CTR (a Beta prior of ``prior_strength`` pseudo-impressions).
3. :func:`click_pool` samples a model's lines (:func:`~copyloop.generator.preference.collect_pool`)
   and scores them that way; DPO then trains on pairs whose click estimates differ by at least
   ``min_ratio`` *and* by ``min_z`` standard errors
   (:func:`~copyloop.generator.preference.preference_pairs`).

Every pool and every model version tuned from one carries its :func:`provenance`: the signal
(``clicks``, ``model:…`` for a reward model, ``oracle`` for the world's expected CTR), the
budget, the round, the user half and the campaigns. :func:`check_honest` reads it back and is
what the judge (:mod:`copyloop.generator.judge`) refuses on: an oracle-trained model is shown
only when labelled an upper bound; a model whose readers could overlap the judge's, or whose
campaigns overlap the judged ones, is refused outright.

Example:
    >>> split = UserSplit(seed=0)  # doctest: +SKIP
    >>> pool = click_pool(lm, market, campaigns=range(0, 120, 2), n=8, impressions=2_000_000,
    ...                   split=split, seed=0)  # doctest: +SKIP
    >>> pool.meta["provenance"]["signal"]  # doctest: +SKIP
    'clicks'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

MAX_IMPRESSIONS_PER_ROUND = 5_000_000
"""The issue's budget: at most 5M simulated impressions per round (about a week of a mid-size
shop's ad traffic)..."""
MAX_ROUNDS = 3
"""...and at most 3 rounds."""

Part = Literal["tune", "judge"]
SIGNALS = ("clicks", "model", "oracle")
"""Training signals, by honesty: simulated clicks; a reward model (fit on clicks, or a proxy);
the world's expected CTR (the judge itself — an upper bound at best)."""


@dataclass(frozen=True)
class UserSplit:
    """Two disjoint halves of a market's users: ``tune`` (what tuning may touch) and ``judge``.

    A user is in the ``judge`` half when its position in a permutation seeded by ``seed`` is
    below ``judge_share`` of the population, else in the ``tune`` half — the same users for the
    same seed and market, whatever else runs.

    Attributes:
        seed: seed of the permutation.
        judge_share: share of users kept for judging, in (0, 1).
    """

    seed: int = 0
    judge_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.judge_share < 1.0:
            raise ValueError(f"`judge_share` must be in (0, 1), got {self.judge_share}")

    def mask(self, market: Any, part: Part) -> npt.NDArray[np.bool_]:
        """Boolean mask over the market's users of ``part``."""
        if part not in ("tune", "judge"):
            raise ValueError(f"`part` must be 'tune' or 'judge', got {part!r}")
        n = int(market.population.users.segment.size)
        rank = np.empty(n, np.int64)
        rank[np.random.default_rng([self.seed, 60_617]).permutation(n)] = np.arange(n)
        judge = rank < round(self.judge_share * n)
        return judge if part == "judge" else ~judge

    def users(self, market: Any, part: Part) -> list[npt.NDArray[np.int64]]:
        """User indices of ``part``, one array per segment."""
        m = self.mask(market, part)
        seg = market.population.users.segment
        return [np.flatnonzero(m & (seg == s)) for s in range(market.population.n_segments)]

    def record(self, part: Part) -> dict[str, Any]:
        return {"split_seed": self.seed, "judge_share": self.judge_share, "part": part}


@dataclass
class ClickCounts:
    """Simulated impressions and clicks of a pool's lines, ``(N,)`` each (0 for rejected lines),
    and each line's shrunk CTR estimate and its standard error."""

    impressions: npt.NDArray[np.int64]
    clicks: npt.NDArray[np.int64]
    estimate: npt.NDArray[np.float64]
    stderr: npt.NDArray[np.float64]


def check_budget(impressions: int, round_: int) -> None:
    if not 1 <= impressions <= MAX_IMPRESSIONS_PER_ROUND:
        raise ValueError(
            f"`impressions` must be in [1, {MAX_IMPRESSIONS_PER_ROUND:,}] per round (the "
            f"recipe's stated budget), got {impressions:,} — spread more over extra rounds"
        )
    if not 1 <= round_ <= MAX_ROUNDS:
        raise ValueError(
            f"this would be round {round_} of the click recipe; at most {MAX_ROUNDS} rounds — "
            "start again from the base model"
        )


def simulate_clicks(
    market: Any,
    campaigns: npt.NDArray[np.int64],
    segments: npt.NDArray[np.int64],
    group: npt.NDArray[np.int64],
    texts: Sequence[str],
    valid: npt.NDArray[np.bool_],
    *,
    impressions: int,
    split: UserSplit,
    seed: int = 0,
    prior_strength: float = 300.0,
    round_: int = 1,
) -> ClickCounts:
    """Show every shippable line to readers and count clicks.

    The budget is split evenly over the valid lines (what the filters would let go live);
    each impression draws a reader of the line's prompt's segment from the ``tune`` half of
    ``split`` (with replacement) and a click from Bernoulli(the world's CTR for that reader and
    line). Each prompt's lines are shrunk towards its pooled CTR with a Beta prior of
    ``prior_strength`` pseudo-impressions.

    Args:
        market: the market (its world makes the clicks).
        campaigns, segments: the request of each prompt, ``(P,)``.
        group: the prompt of each line, ``(N,)``.
        texts: the lines, ``(N,)``.
        valid: which lines passed the filters, ``(N,)``.
        impressions: total impressions, at most :data:`MAX_IMPRESSIONS_PER_ROUND`.
        split: the user split (only its ``tune`` half is drawn from).
        seed: seed of the readers and the clicks.
        prior_strength: pseudo-impressions of the per-prompt prior.
        round_: which round of the recipe this is (at most :data:`MAX_ROUNDS`).
    """
    from copyloop.generator.reward import session_encoder

    check_budget(impressions, round_)
    if prior_strength < 0:
        raise ValueError(f"`prior_strength` must be >= 0, got {prior_strength}")
    n = len(texts)
    if not (group.shape == valid.shape == (n,)):
        raise ValueError(f"`group`, `texts` and `valid` must have one entry per line ({n})")
    live = np.flatnonzero(valid)
    imp = np.zeros(n, np.int64)
    clk = np.zeros(n, np.int64)
    if live.size == 0:
        raise ValueError("no line of the pool passed the filters — nothing could be shown")
    imp[live] = impressions // live.size
    imp[live[: impressions % live.size]] += 1
    pools = split.users(market, "tune")
    rng = np.random.default_rng([seed, 7_919])
    world = market.world
    enc = session_encoder()
    for g in range(len(campaigns)):
        rows = live[group[live] == g]
        if rows.size == 0:
            continue
        c, s = int(campaigns[g]), int(segments[g])
        line_texts = [texts[i] for i in rows]
        # each line is shown to its own readers; one world call per prompt, then each line's
        # column is read on its own readers' rows
        readers = rng.choice(pools[s], size=int(imp[rows].sum()))
        ctr = world.ctr_of_texts(line_texts, c, readers, embeddings=enc.encode(line_texts))
        ends = np.cumsum(imp[rows])
        for j, i in enumerate(rows.tolist()):
            p = ctr[ends[j] - imp[i] : ends[j], j]
            clk[i] = int((rng.random(p.size) < p).sum())
    est = np.zeros(n)
    se = np.zeros(n)
    for g in range(len(campaigns)):
        rows = live[group[live] == g]
        if rows.size == 0:
            continue
        m0 = (clk[rows].sum() + 0.5) / (imp[rows].sum() + 1.0)
        post = (clk[rows] + prior_strength * m0) / (imp[rows] + prior_strength)
        est[rows] = post
        se[rows] = np.sqrt(post * (1.0 - post) / (imp[rows] + prior_strength))
    return ClickCounts(impressions=imp, clicks=clk, estimate=est, stderr=se)


def lineage(lm: Any) -> list[dict[str, Any]]:
    """The provenance of every tuning round behind ``lm`` (oldest first; [] for a base model)."""
    meta = lm.meta()
    chain = meta.get("lineage")
    return list(chain) if isinstance(chain, list) else []


def provenance(
    signal: str,
    *,
    reward: str,
    campaigns: Sequence[int],
    split: UserSplit | None,
    impressions: int | None = None,
    clicks: int | None = None,
    round_: int = 1,
    allocation: str | None = None,
    prior_strength: float | None = None,
    upper_bound: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The record of what trained a model: the signal and its budget, the readers and campaigns
    it touched, and the judge it must be kept apart from."""
    kind = signal.split(":", 1)[0]
    if kind not in SIGNALS:
        raise ValueError(f"`signal` must start with one of {SIGNALS}, got {signal!r}")
    return {
        "signal": signal,
        "reward": reward,
        "upper_bound": bool(upper_bound or kind == "oracle"),
        "round": round_,
        "rounds_max": MAX_ROUNDS,
        "impressions": impressions,
        "impressions_max": MAX_IMPRESSIONS_PER_ROUND if kind == "clicks" else None,
        "clicks": clicks,
        "allocation": allocation,
        "prior_strength": prior_strength,
        "users": split.record("tune") if split is not None else "unrestricted",
        "campaigns": sorted(int(c) for c in campaigns),
        "seed": seed,
        "judge": "world v2 expected CTR on never-seen campaigns, users of the judge half",
    }


def signal_of(spec: str) -> str:
    """The signal a ``--reward`` spelling amounts to: ``world`` is the judge itself
    (``oracle``), ``clicksim:DIR`` and ``proxy:SEED`` are reward models (``model:…``)."""
    if spec == "world":
        return "oracle"
    return f"model:{spec}"


def click_pool(
    lm: Any,
    market: Any,
    *,
    campaigns: Sequence[int],
    n: int,
    impressions: int,
    split: UserSplit,
    seed: int = 0,
    prior_strength: float = 300.0,
    round_: int | None = None,
    sampling: Any = None,
    filters: Any = None,
    progress: Callable[[int, int], None] | None = None,
    lines: Any = None,
) -> Any:
    """Sample ``n`` lines per (campaign, segment) prompt from ``lm`` and score each by simulated
    clicks (:func:`simulate_clicks`); returns a :class:`~copyloop.generator.preference.SamplePool`
    whose ``reward`` is the shrunk click CTR, with ``impressions`` / ``clicks`` / ``stderr``
    columns and the :func:`provenance` in its metadata. ``round_`` defaults to one more than
    the rounds behind ``lm``.

    ``lines``: a pool ``lm`` sampled before (same campaigns, any scoring) whose lines are shown
    again to new readers with new click draws (``seed``) instead of sampling afresh — another
    training seed's clicks at no sampling cost; its sampling seed is recorded."""
    from copyloop.generator.preference import collect_pool

    r = len(lineage(lm)) + 1 if round_ is None else round_
    check_budget(impressions, r)  # before the slow sampling

    def unscored(texts: list[str], campaign: int, segment: int) -> npt.NDArray[np.float64]:
        return np.zeros(len(texts))

    if lines is None:
        pool = collect_pool(
            lm,
            market,
            unscored,
            campaigns=campaigns,
            n=n,
            sampling=sampling,
            filters=filters,
            seed=seed,
            reward_name="clicks",
            progress=progress,
        )
    else:
        want = f"{lm.name}@{lm.version}"
        if lines.meta.get("model") != want:
            raise ValueError(
                f"`lines` were sampled by {lines.meta.get('model')}, not {want} — re-click only "
                "a pool of the model being tuned"
            )
        if sorted(set(lines.campaigns.tolist())) != sorted(set(int(c) for c in campaigns)):
            raise ValueError("`lines` cover other campaigns than `campaigns`")
        pool = dataclasses.replace(
            lines,
            reward=np.zeros(len(lines)),
            meta={**lines.meta, "reward": "clicks", "lines_from_seed": lines.meta.get("seed")},
        )
    counts = simulate_clicks(
        market,
        pool.campaigns,
        pool.segments,
        pool.group,
        pool.texts,
        pool.valid,
        impressions=impressions,
        split=split,
        seed=seed,
        prior_strength=prior_strength,
        round_=r,
    )
    pool.reward = counts.estimate
    pool.impressions = counts.impressions
    pool.clicks = counts.clicks
    pool.stderr = counts.stderr
    pool.meta["provenance"] = provenance(
        "clicks",
        reward="simulated clicks (Bernoulli draws from the world for allocated impressions)",
        campaigns=campaigns,
        split=split,
        impressions=int(counts.impressions.sum()),
        clicks=int(counts.clicks.sum()),
        round_=r,
        allocation="uniform over shippable lines",
        prior_strength=prior_strength,
        seed=seed,
    )
    if lines is not None:
        pool.meta["provenance"]["lines_sampled_with_seed"] = lines.meta.get("seed")
    return pool


class DishonestJudgeError(ValueError):
    """A tuned model cannot be judged as a headline result (see :func:`check_honest`)."""


def check_honest(
    chain: list[dict[str, Any]],
    *,
    judge_campaigns: Sequence[int],
    split: UserSplit,
    upper_bound: bool = False,
    model: str = "the model",
) -> str:
    """Refuse to judge a model whose training could have seen the judge; returns its label.

    Every round in ``chain`` (:func:`lineage`) must have a recorded signal; an ``oracle`` round
    (the world's expected CTR) is accepted only with ``upper_bound`` (the result is then
    labelled ``"upper bound (oracle signal)"``); every round must have drawn its readers from
    the ``tune`` half of the same split as the judge's (so no reader is in both) and trained on
    none of ``judge_campaigns``.

    Raises:
        DishonestJudgeError: what is wrong and what to do instead.
    """
    if not chain:
        raise DishonestJudgeError(
            f"{model} has no training provenance (no `lineage` in its copyloop_model.json) — "
            "tune it with `copyloop generator pool --signal clicks` + `tune --mode dpo`"
        )
    label = "headline (click signal)"
    judged = {int(c) for c in judge_campaigns}
    for i, p in enumerate(chain, 1):
        sig = str(p.get("signal", ""))
        if sig.split(":", 1)[0] not in SIGNALS:
            raise DishonestJudgeError(f"{model}: round {i} has no recorded training signal")
        if sig == "oracle" or p.get("upper_bound"):
            if not upper_bound:
                raise DishonestJudgeError(
                    f"{model}: round {i} trained on {sig!r} (the world's expected CTR — the "
                    "judge itself); pass upper_bound=True / --upper-bound to show it as an "
                    "upper bound, labelled so, never as a headline"
                )
            label = "upper bound (oracle signal)"
        elif sig.startswith("model") and label.startswith("headline"):
            label = f"reward model ({sig})"
        users = p.get("users")
        if not isinstance(users, dict) or users.get("part") != "tune":
            raise DishonestJudgeError(
                f"{model}: round {i} drew its readers from {users!r}, not from the tune half of "
                "a UserSplit — the judge's readers could have trained it"
            )
        if (users.get("split_seed"), users.get("judge_share")) != (split.seed, split.judge_share):
            raise DishonestJudgeError(
                f"{model}: round {i} used user split seed {users.get('split_seed')} / share "
                f"{users.get('judge_share')}, the judge uses {split.seed} / {split.judge_share} "
                "— the halves would overlap; judge with the tuning's split"
            )
        seen = judged & {int(c) for c in p.get("campaigns", [])}
        if seen:
            raise DishonestJudgeError(
                f"{model}: round {i} trained on campaigns {sorted(seen)[:5]} that the judge "
                "would judge — judge on never-seen campaigns"
            )
    return label
