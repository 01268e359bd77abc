"""Our Thompson-sampling agents against peer libraries, on the same synthetic streams, in one run.

Two streams, both drawn once from ``--seed`` and replayed to every agent with common random
numbers (``clicks[t, k]`` = the click arm ``k`` would get in round ``t``, so two agents that
choose alike are rewarded alike):

1. **Bernoulli** (non-contextual): ``--bernoulli-arms`` (20) arms with fixed CTRs evenly spaced
   in [1 %, 6 %] (shuffled). Ours: :class:`~copyloop.agents.ts.BernoulliTSPolicy`, act/update on
   batches of ``--batch``; every arm is a candidate whose feature row is a one-hot of the arm.
   Peer: ``obp.policy.BernoulliTS``, ``select_action()`` + ``update_params()`` per round (obp has
   no batch API; its ``batch_size`` only delays when the counts are refreshed), twice: out of the
   box (Beta(1, 1) prior, ``batch_size=1``) and matched to ours (Beta(1, 50) prior, refreshed
   every ``--batch`` rounds).
2. **Contextual**: ``--context-dim`` (10) standard-normal user features, ``--arms`` (10) arms,
   ``P(click) = sigmoid(logit(2.5 %) + bias_k + uᵀw_k)`` (``bias_k ~ U(±0.35)``,
   ``w_k ~ N(0, 0.09/d I)``: ~99 % of CTRs in [1 %, 6 %]). Ours: :class:`LinearTSPolicy` and
   :class:`LogisticTSPolicy` with ``features="interaction"`` on one-hot arm candidates (see the
   README for why that is disjoint LinTS plus a shared term). Peers: MABWiser ``LinTS``
   (``predict``/``partial_fit`` per batch of ``--batch``), obp ``LinTS`` (per round, refreshed
   every ``--batch`` rounds) and Vowpal Wabbit ``--cb_explore_adf --squarecb -q ua`` (per example:
   predict the pmf, sample from it, learn ``0:cost:prob`` with ``cost = -reward``). The linear
   peers see the context as ``[1, u]``. Diagnostics (no goal): our LinTS at its library
   default ``noise=0.15``, with early-stopped draws (``min_draws=32``) and with ``n_draws=1``
   (what the Monte-Carlo propensities cost); MABWiser fed one row at a time, and MABWiser with
   an independent generator per arm (shipped MABWiser, batched, draws the same standard normals
   for every arm of a row: see :func:`mabwiser_lints`).

Exploration scales are tuned before the run, for ours and the peers alike, on a different
stream (seed ``--seed + 1000``): :func:`tune`. ``--tune-repeats 0`` skips it (library defaults).

Every agent runs ``--repeats`` times on the same stream with agent seeds ``seed + 1, seed + 2,
...`` (once if its first run took over ``--repeat-below`` s). Throughput = rounds / wall seconds
of the whole act + update loop (agent construction excluded), median over the runs; regret is the
mean over the runs (± standard error). BLAS is held to ``--blas-threads`` (1) for all agents.
A per-round peer whose projected run is over ``--max-peer-seconds`` runs on a prefix of the
stream; its rate is per second as for all, its regret is compared with ours over the same prefix.
Regret is the *expected* regret against the oracle that knows every ``P(click)``:
``Σ_t max_k p[t, k] − p[t, a_t]``; clicks are the realised rewards.

Goals (PASS/FAIL, the exit code stays 0): our LinTS >= 100x MABWiser LinTS throughput; our LinTS
and LogisticTS >= VW throughput; our BernoulliTS >= 3x obp BernoulliTS; our regret <= 0.8x the
best peer's, per stream. Needs the peers: ``bash scripts/setup_bench.sh``; a missing peer is
skipped. Run: ``.venv/bin/python bench/agents.py`` (~3-5 minutes on 2 cores); writes
``bench/results/agents.json`` and ``agents.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table
from scipy.special import expit, logit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import host_info  # noqa: E402

IntArr = npt.NDArray[np.int64]
Run = Callable[[int], IntArr]  # run(n): play the first n rounds, return the chosen arms
Maker = Callable[["Stream", int], Run]  # build a fresh agent with a seed (untimed) -> its loop

GOAL_LINTS_VS_MABWISER = 100.0
GOAL_VS_VW = 1.0
GOAL_BERNOULLI_VS_OBP = 3.0
GOAL_REGRET = 0.8
PROBE_ROUNDS = 1000
PEER_MODULES = ("obp.policy", "mabwiser.mab", "vowpalwabbit")
CURVE_POINTS = 50
PROFILE_TOP = 8
VERSIONED = (
    "copyloop",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "torch",
    "obp",
    "mabwiser",
    "vowpalwabbit",
    "threadpoolctl",
    "rich",
)


# ---- the streams --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stream:
    """A replayable bandit stream with common random numbers."""

    name: str
    probs: npt.NDArray[np.float64]  # (T, K) true click probabilities
    clicks: npt.NDArray[np.bool_]  # (T, K) the click each arm would get
    user: npt.NDArray[np.float32]  # (T, du) context as our agents see it
    description: str

    @property
    def rounds(self) -> int:
        return int(self.probs.shape[0])

    @property
    def arms(self) -> int:
        return int(self.probs.shape[1])

    @property
    def context_1(self) -> npt.NDArray[np.float64]:
        """``[1, u]`` (T, du + 1): the context of the linear peers."""
        return np.concatenate([np.ones((self.rounds, 1)), self.user.astype(np.float64)], axis=1)


def bernoulli_stream(rounds: int, arms: int, seed: int) -> Stream:
    ctr = np.random.default_rng([seed, 1, 0]).permutation(np.linspace(0.01, 0.06, arms))
    rng = np.random.default_rng([seed, 1, 1])
    probs = np.broadcast_to(ctr, (rounds, arms)).copy()
    return Stream(
        name="bernoulli",
        probs=probs,
        clicks=rng.random((rounds, arms)) < probs,
        user=np.zeros((rounds, 1), np.float32),
        description=f"{arms} arms, fixed CTRs evenly spaced in [1%, 6%] (shuffled)",
    )


def contextual_stream(rounds: int, arms: int, dim: int, seed: int) -> Stream:
    params = np.random.default_rng([seed, 2, 0])  # the model, independent of `rounds`
    bias = params.uniform(-0.35, 0.35, arms)
    w = params.standard_normal((dim, arms)) * (0.3 / np.sqrt(dim))
    rng = np.random.default_rng([seed, 2, 1])
    user = rng.standard_normal((rounds, dim)).astype(np.float32)
    probs = expit(logit(0.025) + bias + user.astype(np.float64) @ w)
    q = np.percentile(probs, [1, 50, 99])
    return Stream(
        name="contextual",
        probs=probs,
        clicks=rng.random((rounds, arms)) < probs,
        user=user,
        description=(
            f"{arms} arms, {dim}-dim N(0, I) context, P(click) = sigmoid(logit(2.5%) + b_k + u·w_k)"
            f"; CTR percentiles 1/50/99: {q[0]:.2%} / {q[1]:.2%} / {q[2]:.2%}"
        ),
    )


# ---- agents: ours --------------------------------------------------------------------------------
def ours(factory: Callable[[int], Any], batch: int) -> Maker:
    """A copyloop Policy on batches: each arm is a candidate with a one-hot feature row."""

    def make(s: Stream, seed: int) -> Run:
        pol = factory(seed)
        cand = np.tile(np.eye(s.arms, dtype=np.float32).ravel(), (batch, 1))
        mask = np.ones((batch, s.arms), np.int8)
        rows = np.arange(batch)

        def run(n: int) -> IntArr:
            out = np.empty(n, np.int64)
            for t0 in range(0, n, batch):
                t1 = min(n, t0 + batch)
                b = t1 - t0
                obs = {"user": s.user[t0:t1], "candidates": cand[:b], "action_mask": mask[:b]}
                d = pol.act(obs)
                r = s.clicks[t0:t1][rows[:b], d.actions].astype(np.float64)
                pol.update(obs, d.actions, r)
                out[t0:t1] = d.actions
            return out

        return run

    return make


# ---- agents: peers -------------------------------------------------------------------------------
def obp_bernoulli(batch_size: int, alpha: float, beta: float) -> Maker:
    def make(s: Stream, seed: int) -> Run:
        from obp.policy import BernoulliTS

        k = s.arms
        pol = BernoulliTS(
            n_actions=k,
            batch_size=batch_size,
            random_state=seed,
            alpha=np.full(k, alpha),
            beta=np.full(k, beta),
        )
        clicks = s.clicks

        def run(n: int) -> IntArr:
            out = np.empty(n, np.int64)
            select, update = pol.select_action, pol.update_params
            for t in range(n):
                a = int(select()[0])
                update(a, float(clicks[t, a]))
                out[t] = a
            return out

        return run

    return make


def obp_lints(batch_size: int) -> Maker:
    def make(s: Stream, seed: int) -> Run:
        from obp.policy import LinTS

        x = s.context_1
        pol = LinTS(dim=x.shape[1], n_actions=s.arms, batch_size=batch_size, random_state=seed)
        clicks = s.clicks

        def run(n: int) -> IntArr:
            out = np.empty(n, np.int64)
            select, update = pol.select_action, pol.update_params
            for t in range(n):
                ctx = x[t : t + 1]
                a = int(select(ctx)[0])
                update(a, float(clicks[t, a]), ctx)
                out[t] = a
            return out

        return run

    return make


def mabwiser_lints(
    batch: int, alpha: float, l2_lambda: float, independent_rngs: bool = False
) -> Maker:
    """MABWiser's LinTS, ``predict``/``partial_fit`` per batch of ``batch`` rows.

    As shipped, ``partial_fit`` deep-copies each arm's model *with its random generator*
    (``_Linear._fit_arm``), so after the first batch that updates every arm, all arms hold
    copies of one generator state and, drawing the same number of normals per ``predict``,
    stay in lockstep: every arm's posterior draw for a row uses the same standard normals.
    ``independent_rngs=True`` (a diagnostic) gives each arm its own generator instead.
    """

    def make(s: Stream, seed: int) -> Run:
        from mabwiser.mab import MAB, LearningPolicy
        from mabwiser.utils import create_rng

        x = s.context_1
        mab = MAB(
            arms=list(range(s.arms)),
            learning_policy=LearningPolicy.LinTS(alpha=alpha, l2_lambda=l2_lambda),
            seed=seed,
        )
        # An empty fit sets up the per-arm ridge models (prior only), like our untrained agents.
        mab.fit(decisions=np.zeros(0, np.int64), rewards=np.zeros(0), contexts=x[:0])
        if independent_rngs:
            models = mab._imp.arm_to_model  # type: ignore[attr-defined]
            for i, arm in enumerate(sorted(models)):
                models[arm].rng = create_rng(seed * 1_000 + i)
        rows = np.arange(batch)

        def run(n: int) -> IntArr:
            out = np.empty(n, np.int64)
            for t0 in range(0, n, batch):
                t1 = min(n, t0 + batch)
                ctx = x[t0:t1]
                a = np.asarray(mab.predict(ctx), np.int64).reshape(-1)
                r = s.clicks[t0:t1][rows[: t1 - t0], a].astype(np.float64)
                mab.partial_fit(decisions=a, rewards=r, contexts=ctx)
                out[t0:t1] = a
            return out

        return run

    return make


def vw_squarecb(gamma_scale: float | None = None) -> Maker:
    """VW ``--cb_explore_adf --squarecb``; ``gamma_scale`` None = VW's default (10)."""
    extra = "" if gamma_scale is None else f" --gamma_scale {gamma_scale:g}"

    def make(s: Stream, seed: int) -> Run:
        import vowpalwabbit

        ws = vowpalwabbit.Workspace(
            f"--cb_explore_adf --squarecb -q ua --quiet --random_seed {seed}{extra}"
        )
        # The text of every context is formatted before the clock starts (generous to VW: our
        # agents take the numpy arrays as they come).
        shared = [
            "shared |u " + " ".join(f"{j}:{v:.5f}" for j, v in enumerate(row))
            for row in s.user.tolist()
        ]
        arm_lines = [f"|a a{k}" for k in range(s.arms)]
        clicks = s.clicks
        draws = np.random.default_rng([seed, 3]).random(s.rounds).tolist()  # to sample the pmf
        last = s.arms - 1

        def run(n: int) -> IntArr:
            out = np.empty(n, np.int64)
            predict, learn = ws.predict, ws.learn
            for t in range(n):
                ex = [shared[t], *arm_lines]
                pmf = predict(ex)
                u = draws[t] * sum(pmf)
                a, acc = last, 0.0
                for k, p in enumerate(pmf):
                    acc += p
                    if u < acc:
                        a = k
                        break
                cost = -1 if clicks[t, a] else 0
                ex[a + 1] = f"0:{cost}:{pmf[a]} {ex[a + 1]}"
                learn(ex)
                out[t] = a
            return out

        return run

    return make


# ---- the harness ---------------------------------------------------------------------------------
@dataclass
class Spec:
    """One agent of the comparison."""

    key: str
    name: str
    role: str  # "ours", "peer" or "diagnostic"
    library: str
    config: str
    make: Maker
    per_round: bool  # a Python loop per round (probe, maybe subsample)
    propensities: bool  # hands back the distribution it chose from


@dataclass
class Result:
    """Timing and regret of one agent over ``len(seconds)`` runs, each with its own agent seed."""

    key: str
    name: str
    role: str
    library: str
    config: str
    propensities: bool
    rounds: int = 0
    subsampled: bool = False
    seeds: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # the thread's CPU time of each run
    clicks: list[int] = field(default_factory=list)
    regrets: list[float] = field(default_factory=list)
    regret_curve: list[float] = field(default_factory=list)  # mean cumulative regret
    error: str | None = None

    @property
    def rate(self) -> float:
        return statistics.median(self.rounds / s for s in self.seconds) if self.seconds else 0.0

    @property
    def regret(self) -> float:
        return statistics.fmean(self.regrets) if self.regrets else float("nan")

    @property
    def regret_se(self) -> float:
        n = len(self.regrets)
        return statistics.stdev(self.regrets) / n**0.5 if n > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        rates = [self.rounds / s for s in self.seconds]
        return {
            **{k: v for k, v in vars(self).items() if not k.startswith("_")},
            "decisions_per_s": self.rate,
            "rates": rates,
            "min": min(rates, default=0.0),
            "max": max(rates, default=0.0),
            "decisions_per_cpu_s": (
                statistics.median(self.rounds / c for c in self.cpu_seconds if c > 0)
                if any(c > 0 for c in self.cpu_seconds)
                else None
            ),
            "regret_mean": self.regret,
            "regret_se": self.regret_se,
            "clicks_mean": statistics.fmean(self.clicks) if self.clicks else float("nan"),
        }


def cumulative_regret(s: Stream, actions: IntArr) -> npt.NDArray[np.float64]:
    """Expected regret against the per-round oracle, accumulated over rounds."""
    n = actions.size
    p = s.probs[:n]
    return np.cumsum(p.max(axis=1) - p[np.arange(n), actions])


def curve_index(n: int) -> npt.NDArray[np.int64]:
    return np.unique(np.linspace(0, n - 1, min(CURVE_POINTS, n)).round().astype(np.int64))


def measure(spec: Spec, s: Stream, args: argparse.Namespace, console: Console) -> Result:
    """Run ``spec`` on ``s``: once per agent seed (``--repeats`` seeds if the first run is
    cheap, else one), each run timed; regret is averaged over the runs."""
    res = Result(spec.key, spec.name, spec.role, spec.library, spec.config, spec.propensities)
    n = s.rounds
    base = args.seed + 1
    cums: list[npt.NDArray[np.float64]] = []
    try:
        if spec.per_round and args.max_peer_seconds > 0:
            probe = min(PROBE_ROUNDS, n)
            run = spec.make(s, base)
            t0 = time.perf_counter()
            run(probe)
            rate = probe / (time.perf_counter() - t0)
            if n / rate > args.max_peer_seconds:
                n = max(probe, int(rate * args.max_peer_seconds) // 1000 * 1000)
                res.subsampled = n < s.rounds
        res.rounds = n
        for i in range(args.repeats):
            if i and res.seconds[0] >= args.repeat_below:
                break
            run = spec.make(s, base + i)
            c0, t0 = time.thread_time(), time.perf_counter()
            actions = run(n)
            res.seconds.append(time.perf_counter() - t0)
            res.cpu_seconds.append(time.thread_time() - c0)
            res.seeds.append(base + i)
            res.clicks.append(int(s.clicks[np.arange(n), actions].sum()))
            cums.append(cumulative_regret(s, actions))
            res.regrets.append(float(cums[-1][-1]))
    except Exception as e:  # a peer that fails is reported, not fatal
        res.error = f"{type(e).__name__}: {e}"
        console.print(f"  [red]{spec.name} failed: {res.error}[/red]")
        return res
    cum = np.mean(cums, axis=0)
    res.regret_curve = [float(v) for v in cum[curve_index(n)]]
    res._cum = cum  # type: ignore[attr-defined]  # kept in memory for prefix comparisons
    console.print(
        f"  {spec.name}: {res.rate:,.0f} decisions/s over {n:,} rounds (median of "
        f"{len(res.seconds)}), regret {res.regret:.1f} ± {res.regret_se:.1f}, clicks "
        f"{statistics.fmean(res.clicks):.0f}"
    )
    return res


def profile_ours(spec: Spec, s: Stream, seed: int) -> dict[str, Any]:
    """One full run of ``spec`` under cProfile: the top functions by own time (with the agents/
    function they were called from), and the agents/ functions by cumulative time."""
    run = spec.make(s, seed)
    prof = cProfile.Profile()
    prof.enable()
    run(s.rounds)
    prof.disable()
    stats = pstats.Stats(prof)
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in table.values())
    agents_dir = str(REPO_ROOT / "agents") + "/"

    def row(fn: tuple[str, int, str], own: bool) -> dict[str, Any]:
        _, ncalls, tottime, cumtime, _ = table[fn]
        return {
            "function": _fname(fn),
            "via": _agents_caller(stats, fn) if own else "",
            "calls": ncalls,
            "tottime_s": tottime,
            "cumtime_s": cumtime,
            "share": (tottime if own else cumtime) / total if total else 0.0,
        }

    by_own = sorted(table, key=lambda fn: table[fn][2], reverse=True)[:PROFILE_TOP]
    ours_fns = [fn for fn in table if fn[0].startswith(agents_dir)]
    by_cum = sorted(ours_fns, key=lambda fn: table[fn][3], reverse=True)[:PROFILE_TOP]
    return {
        "total_s": total,
        "own": [row(fn, True) for fn in by_own],
        "agents_cumulative": [row(fn, False) for fn in by_cum],
    }


def _fname(fn: tuple[str, int, str]) -> str:
    file, line, func = fn
    for root in (str(REPO_ROOT) + "/", "site-packages/"):
        if root in file:
            file = file.split(root, 1)[1]
    return f"{file}:{line}({func})" if line else func


def _agents_caller(stats: pstats.Stats, fn: tuple[str, int, str]) -> str:
    """The nearest function in agents/ above ``fn`` (following the costliest caller)."""
    table = stats.stats  # type: ignore[attr-defined]
    agents_dir = str(REPO_ROOT / "agents") + "/"
    seen = {fn}
    cur = fn
    for _ in range(8):
        callers = table.get(cur, (0, 0, 0, 0, {}))[4]
        if not callers:
            return ""
        cur = max(callers, key=lambda c: callers[c][3])
        if cur in seen:
            return ""
        seen.add(cur)
        if cur[0].startswith(agents_dir):
            return _fname(cur)
    return ""


# ---- machine info ------------------------------------------------------------------------------
def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _blas() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "num_threads", "threading_layer")
    return [{k: d.get(k) for k in keys} for d in threadpool_info()]


def machine_info() -> dict[str, Any]:
    return {**host_info(), "versions": _versions(), "blas": _blas()}


# ---- the run -----------------------------------------------------------------------------------
LIN_DEFAULTS = {"noise": 0.15, "reg": 1.0}  # LinearTSPolicy's defaults
TUNE_SEED_OFFSET = 1000  # the tuning stream: seed + 1000 (other arm weights, contexts, clicks)
TUNE_GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    # key: (parameter, grid). The posterior-scale grids are the same for ours and MABWiser.
    "ours_linear_ts": ("noise", (0.025, 0.05, 0.1, 0.15, 0.25)),
    "ours_logistic_ts": ("alpha", (0.25, 0.5, 1.0, 2.0)),
    "mabwiser_lints": ("alpha", (0.025, 0.05, 0.1, 0.15, 0.25)),
    "vw_squarecb": ("gamma_scale", (1.0, 10.0, 100.0)),
}
UNTUNED = {"ours_linear_ts": 0.15, "ours_logistic_ts": 1.0, "mabwiser_lints": 0.15}


def tunable(key: str, value: float, batch: int) -> Maker:
    """The agent ``key`` with its exploration parameter set to ``value``."""
    from copyloop.agents.ts import LinearTSPolicy, LogisticTSPolicy

    reg = LIN_DEFAULTS["reg"]
    if key == "ours_linear_ts":
        return ours(lambda sd: LinearTSPolicy(noise=value, reg=reg, seed=sd), batch)
    if key == "ours_logistic_ts":
        return ours(lambda sd: LogisticTSPolicy(alpha=value, seed=sd), batch)
    if key == "mabwiser_lints":
        return mabwiser_lints(batch, value, reg)
    if key == "vw_squarecb":
        return vw_squarecb(value)
    raise KeyError(key)


def tune(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Each library's exploration scale, chosen on a *different* stream than the benchmark's.

    Every agent in :data:`TUNE_GRIDS` (ours and the peers alike) runs ``--tune-repeats`` agent
    seeds per grid value on the contextual stream of seed ``--seed + 1000``; the value with
    the lowest mean regret is used in the benchmark run. No value is chosen on the benchmark
    stream itself.
    """
    s = contextual_stream(args.rounds, args.arms, args.context_dim, args.seed + TUNE_SEED_OFFSET)
    console.print(f"[bold]tuning[/bold] on the stream of seed {args.seed + TUNE_SEED_OFFSET}")
    out: dict[str, Any] = {}
    for key, (param, grid) in TUNE_GRIDS.items():
        rows = {}
        for v in grid:
            regs = []
            try:
                for i in range(args.tune_repeats):
                    acts = tunable(key, v, args.batch)(s, args.seed + TUNE_SEED_OFFSET + 1 + i)(
                        s.rounds
                    )
                    regs.append(float(cumulative_regret(s, acts)[-1]))
            except ImportError as e:
                console.print(f"  [yellow]{key}: not tuned ({e})[/yellow]")
                break
            se = statistics.stdev(regs) / len(regs) ** 0.5 if len(regs) > 1 else float("nan")
            rows[v] = (statistics.fmean(regs), se)
        if rows:
            best = min(rows, key=lambda v: rows[v][0])
            out[key] = {"param": param, "chosen": best, "grid": rows}
            console.print(
                f"  {key}: {param}="
                + ", ".join(f"{v:g}: {m:.0f} ± {e:.0f}" for v, (m, e) in rows.items())
                + f" -> {best:g}"
            )
    return {"stream_seed": args.seed + TUNE_SEED_OFFSET, "repeats": args.tune_repeats, **out}


def specs(args: argparse.Namespace, tuned: dict[str, Any]) -> dict[str, list[Spec]]:
    from copyloop.agents.ts import BernoulliTSPolicy, LinearTSPolicy

    b = args.batch

    def pick(key: str) -> float:
        t = tuned.get(key)
        return float(t["chosen"]) if isinstance(t, dict) else UNTUNED.get(key, float("nan"))

    how = "tuned on seed " + str(tuned["stream_seed"]) if tuned else "untuned"
    noise, reg = pick("ours_linear_ts"), LIN_DEFAULTS["reg"]
    log_alpha, mab_alpha = pick("ours_logistic_ts"), pick("mabwiser_lints")
    vw_gamma = tuned["vw_squarecb"]["chosen"] if "vw_squarecb" in tuned else None
    bern = [
        Spec(
            "ours_bernoulli_ts",
            "ours BernoulliTSPolicy",
            "ours",
            "copyloop",
            f"Beta(1, 50) prior, n_draws=128, batch {b}",
            ours(lambda sd: BernoulliTSPolicy(seed=sd), b),
            False,
            True,
        ),
        Spec(
            "obp_bernoulli_ts",
            "obp BernoulliTS (default)",
            "peer",
            "obp",
            "Beta(1, 1) prior, batch_size=1 (per-round refresh)",
            obp_bernoulli(1, 1.0, 1.0),
            True,
            False,
        ),
        Spec(
            "obp_bernoulli_ts_matched",
            "obp BernoulliTS (matched)",
            "peer",
            "obp",
            f"Beta(1, 50) prior, batch_size={b}",
            obp_bernoulli(b, 1.0, 50.0),
            True,
            False,
        ),
    ]
    ctx = [
        Spec(
            "ours_linear_ts",
            f"ours LinearTSPolicy noise={noise:g}",
            "ours",
            "copyloop",
            f"noise={noise:g} ({how}), reg={reg:g}, interaction, n_draws=128, batch {b}",
            tunable("ours_linear_ts", noise, b),
            False,
            True,
        ),
        Spec(
            "ours_logistic_ts",
            f"ours LogisticTSPolicy alpha={log_alpha:g}",
            "ours",
            "copyloop",
            f"reg=1, alpha={log_alpha:g} ({how}), interaction, n_draws=128, batch {b}",
            tunable("ours_logistic_ts", log_alpha, b),
            False,
            True,
        ),
        Spec(
            "ours_linear_ts_default",
            "ours LinearTSPolicy noise=0.15 (library default)",
            "diagnostic",
            "copyloop",
            f"noise=0.15, reg={reg:g}, interaction, n_draws=128, batch {b}",
            tunable("ours_linear_ts", 0.15, b),
            False,
            True,
        ),
        Spec(
            "ours_linear_ts_min32",
            f"ours LinearTSPolicy noise={noise:g} min_draws=32",
            "diagnostic",
            "copyloop",
            "as ours LinearTS, with early stop: rows whose first 32 draws agree act on them",
            ours(lambda sd: LinearTSPolicy(noise=noise, reg=reg, min_draws=32, seed=sd), b),
            False,
            True,
        ),
        Spec(
            "ours_linear_ts_1draw",
            "ours LinearTSPolicy n_draws=1",
            "diagnostic",
            "copyloop",
            f"as ours LinearTS but n_draws=1 (probs = one-hot), batch {b}",
            ours(lambda sd: LinearTSPolicy(noise=noise, reg=reg, n_draws=1, seed=sd), b),
            False,
            False,
        ),
        Spec(
            "mabwiser_lints",
            f"MABWiser LinTS alpha={mab_alpha:g}",
            "peer",
            "mabwiser",
            f"alpha={mab_alpha:g} ({how}), l2_lambda={reg:g}, predict/partial_fit per batch of {b}",
            tunable("mabwiser_lints", mab_alpha, b),
            False,
            False,
        ),
        Spec(
            "mabwiser_lints_independent",
            "MABWiser LinTS, independent arm RNGs",
            "diagnostic",
            "mabwiser",
            "as MABWiser LinTS but each arm model gets its own generator (as shipped, all arms "
            "share one generator state after the first batch: the same normals for every arm)",
            mabwiser_lints(b, mab_alpha, reg, independent_rngs=True),
            False,
            False,
        ),
        Spec(
            "mabwiser_lints_per_round",
            "MABWiser LinTS per round",
            "diagnostic",
            "mabwiser",
            "as MABWiser LinTS but predict/partial_fit on one row at a time",
            mabwiser_lints(1, mab_alpha, reg),
            True,
            False,
        ),
        Spec(
            "obp_lints",
            "obp LinTS",
            "peer",
            "obp",
            f"per round, batch_size={b} (noise 1, lambda 1: not settable)",
            obp_lints(b),
            True,
            False,
        ),
        Spec(
            "vw_squarecb",
            "VW cb_explore_adf squarecb"
            + ("" if vw_gamma is None else f" gamma_scale={vw_gamma:g}"),
            "peer",
            "vowpalwabbit",
            "--cb_explore_adf --squarecb -q ua, per example, cost = -reward"
            + ("" if vw_gamma is None else f", --gamma_scale {vw_gamma:g} ({how})"),
            vw_squarecb(vw_gamma),
            True,
            True,
        ),
    ]
    return {"bernoulli": bern, "contextual": ctx}


@dataclass
class Goal:
    name: str
    value: float | None
    target: float
    kind: str  # ">=" or "<="
    note: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "SKIP"
        ok = self.value >= self.target if self.kind == ">=" else self.value <= self.target
        return "PASS" if ok else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "status": self.status}


def _prefix_regret(res: Result, n: int) -> float | None:
    """Mean cumulative regret of ``res`` after its first ``n`` rounds."""
    cum = getattr(res, "_cum", None)
    return float(cum[n - 1]) if cum is not None and 0 < n <= cum.size else None


def regret_goal(name: str, ours_res: Result, peers: list[Result]) -> tuple[Goal, dict[str, Any]]:
    """ours / peer regret over each peer's horizon; the goal uses the least favourable peer."""
    ratios = {}
    for p in peers:
        if p.error is None and p.rounds > 0 and p.regret > 0:
            ours_regret = _prefix_regret(ours_res, p.rounds)
            if ours_regret is not None:
                ratios[p.key] = ours_regret / p.regret
    if not ratios:
        return Goal(name, None, GOAL_REGRET, "<="), {}
    best = max(ratios, key=lambda k: ratios[k])
    return Goal(name, ratios[best], GOAL_REGRET, "<=", f"best peer: {best}"), ratios


def rate_goal(name: str, ours_res: Result, peers: list[Result], target: float) -> Goal:
    ok = [p for p in peers if p.error is None and p.rate > 0]
    if not ok or ours_res.error is not None:
        return Goal(name, None, target, ">=")
    fastest = max(ok, key=lambda p: p.rate)
    return Goal(name, ours_res.rate / fastest.rate, target, ">=", f"vs {fastest.key}")


def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    t_start = time.perf_counter()
    load_start = _loadavg()
    streams = {
        "bernoulli": bernoulli_stream(args.rounds, args.bernoulli_arms, args.seed),
        "contextual": contextual_stream(args.rounds, args.arms, args.context_dim, args.seed),
    }
    results: dict[str, dict[str, Result]] = {}
    profiles: dict[str, dict[str, Any]] = {}
    references: dict[str, dict[str, float]] = {}
    tuned = tune(args, console) if args.tune_repeats > 0 else {}
    for task, task_specs in specs(args, tuned).items():
        s = streams[task]
        console.print(f"[bold]{task}[/bold]: {s.description}; {s.rounds:,} rounds")
        best = s.probs.max(axis=1).sum()
        references[task] = {
            "oracle_expected_reward": float(best),
            "best_fixed_arm_regret": float(best - s.probs.sum(axis=0).max()),
            "uniform_regret": float(best - s.probs.mean(axis=1).sum()),
            "oracle_clicks": int(s.clicks[np.arange(s.rounds), s.probs.argmax(axis=1)].sum()),
        }
        results[task] = {}
        for spec in task_specs:
            with console.status(f"running {spec.name}..."):
                res = measure(spec, s, args, console)
            results[task][spec.key] = res
            if args.profile and spec.role == "ours" and res.error is None:
                with console.status(f"profiling {spec.name}..."):
                    profiles[spec.key] = profile_ours(spec, s, args.seed + 1)

    bern, ctx = results["bernoulli"], results["contextual"]
    bern_peers = [bern["obp_bernoulli_ts"], bern["obp_bernoulli_ts_matched"]]
    ctx_peers = [ctx["mabwiser_lints"], ctx["obp_lints"], ctx["vw_squarecb"]]
    goals = [
        rate_goal(
            "ours LinearTS / MABWiser LinTS decisions/s",
            ctx["ours_linear_ts"],
            [ctx["mabwiser_lints"]],
            GOAL_LINTS_VS_MABWISER,
        ),
        rate_goal(
            "ours LinearTS / VW decisions/s",
            ctx["ours_linear_ts"],
            [ctx["vw_squarecb"]],
            GOAL_VS_VW,
        ),
        rate_goal(
            "ours LogisticTS / VW decisions/s",
            ctx["ours_logistic_ts"],
            [ctx["vw_squarecb"]],
            GOAL_VS_VW,
        ),
        rate_goal(
            "ours BernoulliTS / obp BernoulliTS decisions/s",
            bern["ours_bernoulli_ts"],
            bern_peers,
            GOAL_BERNOULLI_VS_OBP,
        ),
    ]
    goals.append(
        rate_goal(
            "ours LinearTS / MABWiser LinTS per round decisions/s (proposed re-scope)",
            ctx["ours_linear_ts"],
            [ctx["mabwiser_lints_per_round"]],
            GOAL_LINTS_VS_MABWISER,
        )
    )
    goals.append(
        rate_goal(
            "ours LinearTS / MABWiser LinTS batched decisions/s (proposed re-scope)",
            ctx["ours_linear_ts"],
            [ctx["mabwiser_lints"]],
            1.0,
        )
    )
    regret_ratios: dict[str, dict[str, float]] = {}
    for name, key, task_res, peers in (
        ("ours BernoulliTS regret / best obp", "ours_bernoulli_ts", bern, bern_peers),
        ("ours LinearTS regret / best peer", "ours_linear_ts", ctx, ctx_peers),
        ("ours LogisticTS regret / best peer", "ours_logistic_ts", ctx, ctx_peers),
    ):
        g, ratios = regret_goal(name, task_res[key], peers)
        goals.append(g)
        regret_ratios[key] = ratios
    pmf_peers = [p for p in ctx_peers if p.propensities]
    for label, key in (("LinearTS", "ours_linear_ts"), ("LogisticTS", "ours_logistic_ts")):
        name = f"ours {label} regret / best pmf-reporting peer (proposed re-scope)"
        goals.append(regret_goal(name, ctx[key], pmf_peers)[0])
    return {
        "benchmark": "agents",
        "command": command_line(args),
        "config": {
            "rounds": args.rounds,
            "batch": args.batch,
            "seed": args.seed,
            "repeats": args.repeats,
            "repeat_below_s": args.repeat_below,
            "max_peer_seconds": args.max_peer_seconds,
            "blas_threads": args.blas_threads,
            "streams": {k: v.description for k, v in streams.items()},
        },
        "machine": {**machine_info(), "loadavg_start": load_start, "loadavg_end": _loadavg()},
        "references": references,
        "results": {
            t: {
                k: {
                    **r.to_dict(),
                    "ref_regret_same_rounds": _prefix_regret(rs[REFERENCE[t]], r.rounds),
                }
                for k, r in rs.items()
            }
            for t, rs in results.items()
        },
        "regret_ratios": regret_ratios,
        "tuning": tuned,
        "goals": [g.to_dict() for g in goals],
        "all_goals_passed": all(g.status == "PASS" for g in goals if "proposed" not in g.name),
        "profiles": profiles,
        "total_seconds": time.perf_counter() - t_start,
    }


def command_line(args: argparse.Namespace) -> str:
    return (
        f".venv/bin/python bench/agents.py --rounds {args.rounds} --seed {args.seed} "
        f"--batch {args.batch} --repeats {args.repeats} --tune-repeats {args.tune_repeats} "
        f"--blas-threads {args.blas_threads} --out-dir {args.out_dir}"
    )


# ---- reporting ---------------------------------------------------------------------------------
RESULT_HEADER = [
    "agent",
    "rounds",
    "decisions/s",
    "spread",
    "ref / this",
    "clicks",
    "exp. regret",
    "regret / 1k rounds",
    "ref regret / this",
    "pmf",
]
REFERENCE = {"bernoulli": "ours_bernoulli_ts", "contextual": "ours_linear_ts"}


def result_rows(report: dict[str, Any], task: str) -> list[list[str]]:
    rs = report["results"][task]
    ref = rs[REFERENCE[task]]
    rows = []
    for r in rs.values():
        if r["error"]:
            rows.append([r["name"], "-", "failed", "", "", "", "", "", "", ""])
            continue
        spread = 100.0 * (r["max"] - r["min"]) / r["decisions_per_s"] / 2
        is_ref = r["key"] == REFERENCE[task]
        ratio = "" if is_ref else f"{ref['decisions_per_s'] / r['decisions_per_s']:,.2f}x"
        ref_reg = r.get("ref_regret_same_rounds")
        reg_ratio = "" if is_ref or not ref_reg else f"{ref_reg / r['regret_mean']:.2f}"
        se = "" if len(r["regrets"]) < 2 else f" ± {r['regret_se']:.0f}"
        rows.append(
            [
                r["name"],
                f"{r['rounds']:,}{'*' if r['subsampled'] else ''}",
                f"{r['decisions_per_s']:,.0f}",
                f"±{spread:.0f}% (n={len(r['seconds'])})",
                ratio,
                f"{r['clicks_mean']:,.0f}",
                f"{r['regret_mean']:.0f}{se}",
                f"{1000 * r['regret_mean'] / r['rounds']:.2f}",
                reg_ratio,
                "yes" if r["propensities"] else "no",
            ]
        )
    return rows


GOAL_HEADER = ["goal", "value", "target", "result", "note"]


def goal_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            g["name"],
            "-" if g["value"] is None else f"{g['value']:.3g}",
            f"{g['kind']} {g['target']:g}",
            g["status"],
            g["note"],
        ]
        for g in report["goals"]
    ]


def profile_table_rows(prof: dict[str, Any], part: str) -> list[list[str]]:
    """Rows of one profile's ``own`` or cumulative table (shared with bench/serve_agents.py)."""
    return [
        [
            p["function"],
            p["via"],
            f"{p['calls']:,}",
            f"{p['tottime_s' if part == 'own' else 'cumtime_s']:.3f}",
            f"{100 * p['share']:.0f}%",
        ]
        for p in prof[part]
    ]


def profile_rows(report: dict[str, Any], key: str, part: str) -> list[list[str]]:
    return profile_table_rows(report["profiles"][key], part)


PROFILE_HEADERS = {
    "own": ["function (own time)", "called from (agents/)", "calls", "seconds", "share"],
    "agents_cumulative": ["agents/ function (cumulative)", "", "calls", "seconds", "share"],
}


def print_tables(report: dict[str, Any], console: Console) -> None:
    for task in ("bernoulli", "contextual"):
        ref = report["results"][task][REFERENCE[task]]["name"]
        t = Table(title=f"{task}: {report['config']['streams'][task]} (ref = {ref})")
        for i, h in enumerate(RESULT_HEADER):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in result_rows(report, task):
            t.add_row(*row)
        console.print(t)
    g = Table(title="goals")
    for i, h in enumerate(GOAL_HEADER):
        g.add_column(h, justify="left" if i in (0, 4) else "right")
    for row in goal_rows(report):
        style = {"PASS": "green", "FAIL": "red"}.get(row[3], "yellow")
        g.add_row(*row[:3], f"[{style}]{row[3]}[/{style}]", row[4])
    console.print(g)
    for key, prof in report["profiles"].items():
        for part, header in PROFILE_HEADERS.items():
            p = Table(title=f"cProfile of {key}, one full run ({prof['total_s']:.2f} s profiled)")
            for i, h in enumerate(header):
                p.add_column(h, justify="left" if i < 2 else "right")
            for row in profile_rows(report, key, part):
                p.add_row(*row)
            console.print(p)


def _md_table(header: list[str], rows: list[list[str]], text_cols: int = 1) -> str:
    """A Markdown table; the first ``text_cols`` columns left-aligned, the rest right-aligned."""
    align = ["---"] * text_cols + ["---:"] * (len(header) - text_cols)

    def cell(i: int, c: str) -> str:
        c = c.replace("|", "\\|")
        return f"`{c}`" if i < text_cols and c.startswith("<") else c  # `<method ...>` is no tag

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(i, c) for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    blas = "; ".join(
        " ".join(str(v) for v in (b["internal_api"], b["version"]) if v)
        + f" (threads={b['num_threads']})"
        for b in m["blas"]
    )
    out = [
        "# Agents vs peer libraries",
        "",
        f"{m['date']} · {m['cpu_model']} · {m['cpu_count']} CPUs · {m['platform']} · "
        f"Python {m['python']} · commit {m['git_commit']}",
        "",
        f"Versions: {vers}. BLAS: {blas or 'unknown'}. Load average at start / end: "
        f"{m['loadavg_start']} / {m['loadavg_end']} (a shared machine: compare numbers only "
        "within one run).",
        "",
        f"{cfg['rounds']:,} rounds per stream, batch {cfg['batch']}, seed {cfg['seed']}; "
        f"every agent runs up to {cfg['repeats']} times on the same stream, with agent seeds "
        f"{cfg['seed'] + 1}, {cfg['seed'] + 2}, ... (once if its first run takes over "
        f"{cfg['repeat_below_s']:g} s). decisions/s = rounds / seconds of the act + update loop "
        "(agent construction excluded), median over the runs, spread = ±half the (max − min) "
        "range; exp. regret = Σ_t max_k p[t, k] − p[t, a_t] against the per-round oracle, mean "
        "± standard error over the runs; `ref regret / this` = the reference agent's mean "
        "regret over the same rounds / this agent's (< 1: ours is better). `*` = a per-round "
        "peer run on a prefix of the stream to stay under "
        f"{cfg['max_peer_seconds']:g} s. `pmf` = hands back the distribution it chose from. "
        f"BLAS limited to {cfg['blas_threads']} thread(s) for every agent (0 = as found).",
        "",
    ]
    for task in ("bernoulli", "contextual"):
        ref = report["references"][task]
        out += [
            f"## {task}: {cfg['streams'][task]}",
            "",
            f"Reference: oracle clicks {ref['oracle_clicks']:,}; regret of the best fixed arm "
            f"{ref['best_fixed_arm_regret']:.1f}, of uniform random {ref['uniform_regret']:.1f}. "
            f"`ref` = {report['results'][task][REFERENCE[task]]['name']}.",
            "",
            _md_table(RESULT_HEADER, result_rows(report, task)),
            "",
        ]
    tuned = report.get("tuning") or {}
    if tuned:
        rows = []
        for key, t in tuned.items():
            if not isinstance(t, dict):
                continue
            for v, (mean, se) in t["grid"].items():
                mark = " **(chosen)**" if float(v) == float(t["chosen"]) else ""
                rows.append([key, f"{t['param']}={float(v):g}{mark}", f"{mean:.0f} ± {se:.0f}"])
        out += [
            f"## Exploration scale, tuned on another stream (seed {tuned['stream_seed']})",
            "",
            "Each library's exploration parameter is chosen by the lowest mean regret over "
            f"{tuned['repeats']} agent seeds on the contextual stream of seed "
            f"{tuned['stream_seed']} (other arm weights, contexts and clicks than the "
            "benchmark's); the benchmark above runs the chosen value. Regret ± standard error:",
            "",
            _md_table(["agent", "value", "regret on the tuning stream"], rows, text_cols=2),
            "",
        ]
    out += ["## Goals", "", _md_table(GOAL_HEADER, goal_rows(report)), ""]
    out += ["All goals passed." if report["all_goals_passed"] else "Some goals failed.", ""]
    for key, prof in report["profiles"].items():
        out += [f"### cProfile: {key} (one full run, {prof['total_s']:.2f} s profiled)", ""]
        for part, header in PROFILE_HEADERS.items():
            out += [_md_table(header, profile_rows(report, key, part), text_cols=2), ""]
    out += ["Repeat with:", "", "```bash", report["command"], "```", ""]
    return "\n".join(out)


def _finite(obj: Any) -> Any:
    """The report with NaN / inf floats as null (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=50_000, help="rounds per stream")
    p.add_argument("--seed", type=int, default=0, help="seed of the streams (agents: seed + 1)")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="output folder")
    p.add_argument("--batch", type=int, default=512, help="batch of the batched agents")
    p.add_argument(
        "--repeats", type=int, default=5, help="runs (agent seeds) per agent, if the first is cheap"
    )
    p.add_argument(
        "--repeat-below", type=float, default=20.0, help="repeat only runs shorter than this (s)"
    )
    p.add_argument(
        "--max-peer-seconds",
        type=float,
        default=60.0,
        help="run a per-round peer on a prefix if the full stream would take longer (0: never)",
    )
    p.add_argument("--bernoulli-arms", type=int, default=20, help="arms of the Bernoulli stream")
    p.add_argument("--arms", type=int, default=10, help="arms of the contextual stream")
    p.add_argument("--context-dim", type=int, default=10, help="context features")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads for every numpy-based agent (0: leave as is)",
    )
    p.add_argument(
        "--tune-repeats",
        type=int,
        default=6,
        help="agent seeds per grid value when tuning exploration on the seed+1000 stream "
        "(0: no tuning, library defaults)",
    )
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip cProfile")
    args = p.parse_args(argv)
    for name in ("rounds", "batch", "repeats", "bernoulli_arms", "arms", "context_dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.arms < 2 or args.bernoulli_arms < 2:
        p.error("need at least 2 arms")
    return args


def preload() -> None:
    """Import every library that may load a BLAS before the thread limit is set (threadpoolctl
    only limits the libraries already loaded)."""
    import contextlib
    import importlib

    for name in ("scipy.linalg", "scipy.optimize", "copyloop.agents.ts", *PEER_MODULES):
        with contextlib.suppress(ImportError):  # a missing peer is reported when it runs
            importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    preload()
    if args.blas_threads > 0:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.blas_threads, user_api="blas"):
            report = run_all(args, console)
    else:
        report = run_all(args, console)
    print_tables(report, console)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "agents.json"
    md_path = args.out_dir / "agents.md"
    json_path.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown(report))
    console.print(
        f"wrote {json_path} and {md_path} in {report['total_seconds']:.0f} s; "
        f"all goals passed: {report['all_goals_passed']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
