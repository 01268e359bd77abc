"""Throughput of the copy-market envs against a raw-numpy floor, in one run.

What is measured (every rate is the median of ``--repeats`` timed runs; each run lasts at least
``--min-seconds`` after a warm-up, timed with :func:`time.perf_counter`):

1. **Batched env** -- :class:`~copyloop.envs.CopyMarketVectorEnv` with ``--batch`` sessions
   (default 1,024) and ``session_length`` 1 and 5: impressions/s = steps x batch. Actions are
   pre-generated integers in [0, 6) (every campaign has at least 6 variants), so the agent
   costs nothing.
2. **Single env** -- :class:`~copyloop.envs.CopyMarketEnv` steps/s (session_length 1 and 5),
   including the ``reset()`` that follows every ended session.
3. **Raw-numpy floor** -- the least a batched click simulator must do at the same shapes
   (B, K, dv, du taken from the market): per step ``logits = cand @ w_c + (user @ w_u)[:, None]``,
   ``p = sigmoid(logits)``, ``click = rng.random(B) < p[arange(B), actions]`` on pre-generated
   float32 arrays. No sessions, no info, no observations.
4. **Gymnasium's SyncVectorEnv** over ``--sync-envs`` (default 16) single-env copies, autoreset
   ``SAME_STEP`` like the batched env, for context: what native batching buys.

Goals (reported with pass/fail, they do not change the exit code): batched / raw-numpy >= 0.30,
batched >= 1,000,000 impressions/s, single env >= 100,000 steps/s, at both session lengths.

Run: ``.venv/bin/python bench/env_throughput.py`` (writes ``bench/results/env_throughput.json``
and ``bench/results/env_throughput.md``; about 1-2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

SESSION_LENGTHS = (1, 5)
ACTION_HIGH = 6  # every campaign has >= 6 variants, so [0, 6) is always a valid slot
N_ACTION_ROWS = 512  # pre-generated action rows, cycled through
GOAL_RATIO = 0.30
GOAL_BATCHED = 1_000_000.0
GOAL_SINGLE = 100_000.0
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model as _cpu_model  # noqa: E402
from _common import git_commit as _git_commit  # noqa: E402

# A measured loop: run(n) performs n steps; each step is worth `units_per_step` units.
StepLoop = Callable[[int], None]


@dataclass
class Measurement:
    """The result of timing one loop ``repeats`` times."""

    name: str
    unit: str  # "impressions/s" or "steps/s"
    steps_per_run: int
    units_per_step: int
    seconds: list[float] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.steps_per_run * self.units_per_step / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rates=self.rates, median=self.median, min=min(self.rates), max=max(self.rates))
        return d


@dataclass
class Goal:
    """One goal: ``value >= target``."""

    name: str
    value: float
    target: float
    unit: str

    @property
    def passed(self) -> bool:
        return self.value >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


# ---- timing ------------------------------------------------------------------------------------
def _timed(run: StepLoop, n: int) -> float:
    t0 = time.perf_counter()
    run(n)
    return time.perf_counter() - t0


def measure(
    name: str,
    run: StepLoop,
    *,
    unit: str,
    units_per_step: int,
    repeats: int,
    min_seconds: float,
) -> Measurement:
    """Warm up and calibrate ``n`` so one run lasts ~``min_seconds``, then time ``repeats`` runs.

    Calibration doubles ``n`` until a run takes >= 0.1 s (or ``min_seconds`` / 4 if smaller);
    those runs double as the warm-up.
    """
    n, probe = 8, min(0.1, min_seconds / 4)
    elapsed = _timed(run, n)
    while elapsed < probe:
        n *= 2
        elapsed = _timed(run, n)
    steps = max(1, int(np.ceil(1.1 * min_seconds * n / elapsed)))
    m = Measurement(name, unit, steps, units_per_step)
    for _ in range(repeats):
        m.seconds.append(_timed(run, steps))
    return m


# ---- the loops ---------------------------------------------------------------------------------
def batched_loop(env: Any, actions: npt.NDArray[np.int64]) -> StepLoop:
    rows = actions.shape[0]

    def run(n: int) -> None:
        step = env.step
        for i in range(n):
            step(actions[i % rows])

    return run


def single_loop(env: Any, actions: list[int]) -> StepLoop:
    rows = len(actions)

    def run(n: int) -> None:
        step, reset = env.step, env.reset
        for i in range(n):
            if step(actions[i % rows])[2]:
                reset()

    return run


def raw_numpy_loop(
    batch: int, k: int, dv: int, du: int, actions: npt.NDArray[np.int64], seed: int
) -> StepLoop:
    rng = np.random.default_rng(seed)
    user = rng.standard_normal((batch, du), dtype=np.float32)
    cand = rng.standard_normal((batch, k, dv), dtype=np.float32)
    w_u = (0.1 * rng.standard_normal(du)).astype(np.float32)
    w_c = (0.1 * rng.standard_normal(dv)).astype(np.float32)
    arange = np.arange(batch)
    rows = actions.shape[0]
    sink: list[int] = [0]

    def run(n: int) -> None:
        clicks = 0
        for i in range(n):
            logits = cand @ w_c + (user @ w_u)[:, None]
            p = 1.0 / (1.0 + np.exp(-logits))
            click = rng.random(batch) < p[arange, actions[i % rows]]
            clicks += int(click.sum())
        sink[0] = clicks  # keep the result alive

    return run


# ---- machine info ------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gym.__version__,
        "git_commit": _git_commit(),
    }


# ---- the run -----------------------------------------------------------------------------------
def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from copyloop.envs import CopyMarketEnv, CopyMarketVectorEnv, Market, MarketConfig

    t0 = time.perf_counter()
    with console.status("building the market (cached MiniLM embeddings)..."):
        market = Market.get(MarketConfig())
    build_s = time.perf_counter() - t0
    batch, k, dv, du = args.batch, market.max_candidates, market.candidate_dim, market.user_dim
    console.print(
        f"market built in {build_s:.1f} s: K={k}, dv={dv}, du={du}; batch={batch}, "
        f"repeats={args.repeats}, min_seconds={args.min_seconds}"
    )
    rng = np.random.default_rng(args.seed)
    actions = rng.integers(0, ACTION_HIGH, size=(N_ACTION_ROWS, batch), dtype=np.int64)
    single_actions = [int(a) for a in actions.ravel()[: N_ACTION_ROWS * 16]]
    sync_actions = actions[:, : args.sync_envs]
    timing = {"repeats": args.repeats, "min_seconds": args.min_seconds}

    results: dict[str, Measurement] = {}

    def record(key: str, name: str, loop: StepLoop, unit: str, per_step: int) -> None:
        with console.status(f"timing {name}..."):
            m = measure(name, loop, unit=unit, units_per_step=per_step, **timing)
        results[key] = m
        console.print(f"  {name}: {m.median:,.0f} {unit} (median of {len(m.seconds)})")

    for length in SESSION_LENGTHS:
        venv = CopyMarketVectorEnv(num_envs=batch, market=market, session_length=length)
        venv.reset(seed=args.seed)
        record(
            f"batched_L{length}",
            f"batched env, B={batch}, L={length}",
            batched_loop(venv, actions),
            "impressions/s",
            batch,
        )
        venv.close()

    for length in SESSION_LENGTHS:
        env = CopyMarketEnv(market=market, session_length=length)
        env.reset(seed=args.seed)
        record(
            f"single_L{length}",
            f"single env, L={length}",
            single_loop(env, single_actions),
            "steps/s",
            1,
        )
        env.close()

    record(
        "raw_numpy",
        f"raw numpy floor, B={batch}",
        raw_numpy_loop(batch, k, dv, du, actions, args.seed),
        "impressions/s",
        batch,
    )

    for length in SESSION_LENGTHS:

        def make(length: int = length) -> gym.Env[Any, Any]:
            return CopyMarketEnv(market=market, session_length=length)

        sync = gym.vector.SyncVectorEnv(
            [make] * args.sync_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
        )
        sync.reset(seed=args.seed)
        record(
            f"sync_L{length}",
            f"SyncVectorEnv x{args.sync_envs}, L={length}",
            batched_loop(sync, sync_actions),
            "impressions/s",
            args.sync_envs,
        )
        sync.close()

    raw = results["raw_numpy"].median
    goals: list[Goal] = []
    ratios: dict[str, float] = {}
    for length in SESSION_LENGTHS:
        b = results[f"batched_L{length}"].median
        ratios[f"batched_over_raw_L{length}"] = b / raw
        ratios[f"batched_over_sync_L{length}"] = b / results[f"sync_L{length}"].median
        goals += [
            Goal(f"batched / raw numpy, L={length}", b / raw, GOAL_RATIO, "x"),
            Goal(f"batched impressions/s, L={length}", b, GOAL_BATCHED, "impressions/s"),
            Goal(
                f"single env steps/s, L={length}",
                results[f"single_L{length}"].median,
                GOAL_SINGLE,
                "steps/s",
            ),
        ]
    return {
        "benchmark": "env_throughput",
        "command": command_line(args),
        "config": {
            "batch": batch,
            "session_lengths": list(SESSION_LENGTHS),
            "sync_envs": args.sync_envs,
            "repeats": args.repeats,
            "min_seconds": args.min_seconds,
            "seed": args.seed,
            "actions": f"uniform integers in [0, {ACTION_HIGH})",
            "shapes": {"K": k, "dv": dv, "du": du},
            "market_build_seconds": build_s,
        },
        "machine": machine_info(),
        "measurements": {key: m.to_dict() for key, m in results.items()},
        "ratios": ratios,
        "goals": [g.to_dict() for g in goals],
        "all_goals_passed": all(g.passed for g in goals),
        "total_seconds": time.perf_counter() - t0,
    }


def command_line(args: argparse.Namespace) -> str:
    return (
        f".venv/bin/python bench/env_throughput.py --batch {args.batch} "
        f"--repeats {args.repeats} --min-seconds {args.min_seconds} --out-dir {args.out_dir}"
    )


# ---- reporting ---------------------------------------------------------------------------------
def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f}x" if unit == "x" else f"{value:,.0f}"


def table_rows(report: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """Rows of the measurement table and of the goal table (plain strings)."""
    meas = []
    for m in report["measurements"].values():
        spread = 100.0 * (m["max"] - m["min"]) / m["median"]
        meas.append(
            [
                m["name"],
                f"{m['median']:,.0f}",
                m["unit"],
                f"±{spread / 2:.0f}%",
                str(m["steps_per_run"]),
            ]
        )
    for length in report["config"]["session_lengths"]:
        r = report["ratios"][f"batched_over_sync_L{length}"]
        meas.append([f"batched / SyncVectorEnv, L={length}", f"{r:.1f}x", "speed-up", "", ""])
    goals = [
        [
            g["name"],
            _fmt(g["value"], g["unit"]),
            f">= {_fmt(g['target'], g['unit'])}",
            f"{g['value'] / g['target']:.2f}",
            "PASS" if g["passed"] else "FAIL",
        ]
        for g in report["goals"]
    ]
    return meas, goals


MEAS_HEADER = ["measurement", "median", "unit", "spread", "steps/run"]
GOAL_HEADER = ["goal", "value", "target", "value/target", "result"]


def print_tables(report: dict[str, Any], console: Console) -> None:
    meas, goals = table_rows(report)
    t = Table(title="env throughput (median of repeats)")
    for i, h in enumerate(MEAS_HEADER):
        t.add_column(h, justify="left" if i == 0 else "right")
    for row in meas:
        t.add_row(*row)
    console.print(t)
    g = Table(title="goals")
    for i, h in enumerate(GOAL_HEADER):
        g.add_column(h, justify="left" if i == 0 else "right")
    for row in goals:
        style = "green" if row[-1] == "PASS" else "red"
        g.add_row(*row[:-1], f"[{style}]{row[-1]}[/{style}]")
    console.print(g)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    meas, goals = table_rows(report)
    mach, cfg = report["machine"], report["config"]
    shapes = cfg["shapes"]
    return "\n".join(
        [
            "# Env throughput",
            "",
            f"{mach['date']} · {mach['cpu_model']} · {mach['cpu_count']} CPUs · "
            f"{mach['platform']} · Python {mach['python']} · numpy {mach['numpy']} · "
            f"gymnasium {mach['gymnasium']} · commit {mach['git_commit']}",
            "",
            f"Batch {cfg['batch']}, K={shapes['K']}, dv={shapes['dv']}, du={shapes['du']}; "
            f"actions {cfg['actions']}; median of {cfg['repeats']} runs of >= "
            f"{cfg['min_seconds']} s each; spread = ±half the (max − min) range.",
            "",
            _md_table(MEAS_HEADER, meas),
            "",
            _md_table(GOAL_HEADER, goals),
            "",
            "All goals passed." if report["all_goals_passed"] else "Some goals failed.",
            "",
            "Repeat with:",
            "",
            "```bash",
            report["command"],
            "```",
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--batch", type=int, default=1024, help="sessions in the batched env")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    p.add_argument("--min-seconds", type=float, default=1.0, help="least duration of one run")
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"), help="output folder")
    p.add_argument("--sync-envs", type=int, default=16, help="env copies in SyncVectorEnv")
    p.add_argument("--seed", type=int, default=0, help="seed of envs, actions and arrays")
    args = p.parse_args(argv)
    for name in ("batch", "repeats", "sync_envs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.min_seconds <= 0:
        p.error("--min-seconds must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped or logged: do not wrap the tables at 80 columns
        console = Console(width=120)
    report = run_all(args, console)
    print_tables(report, console)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "env_throughput.json"
    md_path = args.out_dir / "env_throughput.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    console.print(
        f"wrote {json_path} and {md_path} in {report['total_seconds']:.0f} s; "
        f"all goals passed: {report['all_goals_passed']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
