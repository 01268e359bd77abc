"""PPO training throughput on the batched copy market against SB3's defaults, and a fatigue check.

**Throughput** (default mode). Trains :class:`~copyloop.agents.ppo.PPOPolicy` (sb3-contrib's
MaskablePPO, ``MultiInputPolicy``) with SB3's unchanged ``learn`` and reports frames per second
= env steps × envs per second, two ways: ``fps (wall)`` = timesteps trained / wall-clock of the
whole ``train()`` call (model building included), and ``fps (median iter)`` = the median over
PPO iterations (one rollout plus its update) of samples / seconds, which is what SB3 logs as
``time/fps`` minus the start-up, and robust to other jobs on a shared machine. Rows:

1. **batched** -- :class:`~copyloop.envs.sb3.CopyMarketSB3VecEnv` over the natively batched
   :class:`~copyloop.envs.vector.CopyMarketVectorEnv` with ``--num-envs`` (default 256 and 1024)
   sessions, ``n_steps = --rollout // num_envs`` so each rollout holds ``--rollout`` samples,
   ``--batch-size``, ``--n-epochs``, ``--learning-rate``, ``--net-arch``.
2. **SB3 defaults** -- ``DummyVecEnv`` of ``--default-envs`` (default 1 and 8) single
   :class:`~copyloop.envs.market.CopyMarketEnv` copies with SB3's default PPO
   hyper-parameters (n_steps 2048, batch 64, 10 epochs, lr 3e-4, net [64, 64]); trained for
   ``--default-timesteps`` (they are ~20× slower: the rate is steady after two iterations).
3. **SB3 defaults on the batched adapter** -- the same default hyper-parameters with 8 envs
   of the adapter: separates what the env buys from what the hyper-parameters buy.

So that speed does not come from not learning, every trained policy is evaluated on the same
fixed sessions (``--eval-sessions`` sessions from a fixed seed, common random numbers) against
uniform random and the true-CTR oracle: ``expected CTR`` is the mean true click probability of
the chosen variants (low noise), ``clicks/imp`` the realised clicks per impression.

**Fatigue check** (``--fatigue-check``). Sessions of ``--session-length`` (default 5)
impressions of one campaign to one user; showing a variant again multiplies its CTR by
``fatigue_same`` (0.55) per earlier showing. Trains PPO (gamma 0.99, and gamma 0 as a myopic
learner that still sees the ``shown`` counts) for ``--fatigue-timesteps`` and a PPO trained on
single-impression sessions (a contextual-bandit learner, blind to fatigue), then compares clicks
per impression on fixed sessions with: uniform; the *myopic first-impression oracle*, which
knows every variant's true first-impression CTR for the user (``info["true_ctr"]`` at the
session's first step) and always shows the best one — an unfair information advantage, but
blind to fatigue; and the *fatigue-aware oracle*, which knows the true current CTRs (first CTR
× fatigue) and shows the best each step.

Torch runs on ``--threads`` CPU threads (default 1: ``torch.set_num_threads(1)``).

Run: ``.venv/bin/python bench/ppo_fps.py`` (3-6 minutes on 2 cores; writes
``bench/results/ppo_fps.json`` and ``.md``) and ``.venv/bin/python bench/ppo_fps.py
--fatigue-check`` (about 8 minutes; writes ``bench/results/ppo_fatigue.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import host_info  # noqa: E402

GOAL_FPS = 20_000.0
SB3_DEFAULTS: dict[str, Any] = {
    "n_steps": 2048,
    "batch_size": 64,
    "n_epochs": 10,
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "ent_coef": 0.0,
    "net_arch": (64, 64),
}
"""SB3's PPO defaults (``net_arch`` is SB3's default for MLP policies)."""

Chooser = Callable[[dict[str, npt.NDArray[Any]], npt.NDArray[np.float64]], npt.NDArray[np.int64]]
"""(observation batch, first-impression CTRs (B, K)) -> chosen slots (B,)."""


# ---- timing ------------------------------------------------------------------------------------
def _iteration_timer() -> Any:
    """An SB3 callback recording the wall-clock of every PPO iteration (rollout + update)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class IterationTimer(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.marks: list[tuple[float, int]] = []

        def _on_rollout_start(self) -> None:
            self.marks.append((time.perf_counter(), self.num_timesteps))

        def _on_training_end(self) -> None:
            self.marks.append((time.perf_counter(), self.num_timesteps))

        def _on_step(self) -> bool:
            return True

        def rates(self) -> list[float]:
            return [
                (n1 - n0) / (t1 - t0)
                for (t0, n0), (t1, n1) in zip(self.marks, self.marks[1:], strict=False)
                if n1 > n0
            ]

    return IterationTimer()


@dataclass
class TrainRun:
    """One training run and what it learned."""

    name: str
    env: str
    num_envs: int
    params: dict[str, Any]
    timesteps: int = 0
    wall_s: float = 0.0
    iteration_fps: list[float] = field(default_factory=list)
    evaluation: dict[str, float] = field(default_factory=dict)

    @property
    def fps_wall(self) -> float:
        return self.timesteps / self.wall_s if self.wall_s else 0.0

    @property
    def fps_median(self) -> float:
        return statistics.median(self.iteration_fps) if self.iteration_fps else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(fps_wall=self.fps_wall, fps_median_iteration=self.fps_median)
        return d


def train_policy(policy: Any, env: Any, timesteps: int, run: TrainRun) -> Any:
    """Train ``policy`` on ``env`` and fill in ``run``'s timings."""
    timer = _iteration_timer()
    t0 = time.perf_counter()
    policy.train(env, timesteps, callback=timer)
    run.wall_s = time.perf_counter() - t0
    run.timesteps = policy.trained_timesteps
    run.iteration_fps = timer.rates()
    return policy


# ---- evaluation --------------------------------------------------------------------------------
def evaluate(
    market: Any,
    choose: Chooser,
    *,
    session_length: int,
    batch: int,
    blocks: int,
    seed: int,
) -> dict[str, float]:
    """Run ``choose`` on ``blocks × batch`` fixed sessions (the same for every chooser).

    Every block starts from ``reset(seed=seed + block)``, whose ``info["true_ctr"]`` gives the
    sessions' first-impression CTRs, and runs whole sessions; click draws are the env's own, so
    two choosers that pick the same slot get the same click.
    """
    from copyloop.envs import CopyMarketVectorEnv

    env = CopyMarketVectorEnv(batch, market=market, session_length=session_length)
    rows = np.arange(batch)
    expected = clicks = 0.0
    per_block: list[float] = []
    n = 0
    for block in range(blocks):
        obs, info = env.reset(seed=seed + block)
        first = np.asarray(info["true_ctr"], np.float64)
        block_clicks = 0.0
        for _ in range(session_length):
            a = np.asarray(choose(obs, first), np.int64)
            obs, reward, _, _, info = env.step(a)
            valid = ~info["invalid_action"]
            expected += float(np.where(valid, info["true_ctr"][rows, a], 0.0).sum())
            block_clicks += float(reward.sum())
            n += batch
        clicks += block_clicks
        per_block.append(block_clicks / (batch * session_length))
    se = statistics.stdev(per_block) / np.sqrt(blocks) if blocks > 1 else float("nan")
    return {
        "expected_ctr": expected / n,
        "clicks_per_impression": clicks / n,
        "clicks_se": float(se),
        "impressions": n,
    }


def policy_chooser(policy: Any) -> Chooser:
    return lambda obs, first: policy.act(obs).actions


def myopic_oracle(
    obs: dict[str, npt.NDArray[Any]], first: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """The variant with the highest true first-impression CTR, every step (fatigue-blind)."""
    return np.where(obs["action_mask"].astype(bool), first, -1.0).argmax(axis=1)


def fatigue_oracle(fatigue_same: float) -> Chooser:
    """The variant with the highest true *current* CTR: first CTR × fatigue_same^times shown
    (the session-wide ``fatigue_any`` factor is the same for every slot)."""

    def choose(
        obs: dict[str, npt.NDArray[Any]], first: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int64]:
        now = first * fatigue_same ** np.asarray(obs["shown"], np.float64)
        return np.where(obs["action_mask"].astype(bool), now, -1.0).argmax(axis=1)

    return choose


# ---- machine info ------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import gymnasium as gym
    import sb3_contrib
    import stable_baselines3
    import torch

    return {
        **host_info(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "gymnasium": gym.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
    }


# ---- the runs ----------------------------------------------------------------------------------
def _batched_params(args: argparse.Namespace, num_envs: int) -> dict[str, Any]:
    return {
        "n_steps": max(1, args.rollout // num_envs),
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "learning_rate": args.learning_rate,
        "gamma": 0.99,
        "ent_coef": 0.0,
        "net_arch": tuple(args.net_arch),
    }


def run_fps(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from stable_baselines3.common.vec_env import DummyVecEnv

    from copyloop.agents import UniformPolicy
    from copyloop.agents.ppo import PPOPolicy
    from copyloop.envs import CopyMarketEnv, Market, MarketConfig
    from copyloop.envs.sb3 import CopyMarketSB3VecEnv

    t_start = time.perf_counter()
    machine = machine_info()
    with console.status("building the market (cached MiniLM embeddings)..."):
        market = Market.get(MarketConfig())
    ev = {
        "session_length": 1,
        "batch": 4096,
        "blocks": max(1, args.eval_sessions // 4096),
        "seed": 10_000 + args.seed,
    }
    runs: list[TrainRun] = []

    def finish(run: TrainRun, policy: Any) -> None:
        with console.status(f"evaluating {run.name}..."):
            run.evaluation = evaluate(market, policy_chooser(policy), **ev)
        runs.append(run)
        console.print(
            f"  {run.name}: {run.fps_wall:,.0f} fps (wall), {run.fps_median:,.0f} fps (median "
            f"iteration) over {run.timesteps:,} steps in {run.wall_s:.1f} s; expected CTR "
            f"{run.evaluation['expected_ctr']:.4f}"
        )

    for b in args.num_envs:
        params = _batched_params(args, b)
        run = TrainRun(f"batched × {b}, tuned", "CopyMarketSB3VecEnv", b, params)
        with console.status(f"training {run.name} for {args.timesteps:,} steps..."):
            pol = PPOPolicy(**params, seed=args.seed)
            train_policy(pol, CopyMarketSB3VecEnv.make(market, b), args.timesteps, run)
        finish(run, pol)

    for n in args.default_envs:
        run = TrainRun(
            f"SB3 defaults, DummyVecEnv × {n}", "DummyVecEnv(CopyMarketEnv)", n, dict(SB3_DEFAULTS)
        )
        with console.status(f"training {run.name} for {args.default_timesteps:,} steps..."):
            pol = PPOPolicy(**SB3_DEFAULTS, seed=args.seed)
            env = DummyVecEnv([lambda: CopyMarketEnv(market=market)] * n)
            train_policy(pol, env, args.default_timesteps, run)
        finish(run, pol)

    if args.default_envs:
        n = max(args.default_envs)
        run = TrainRun(f"SB3 defaults, batched × {n}", "CopyMarketSB3VecEnv", n, dict(SB3_DEFAULTS))
        with console.status(f"training {run.name} for {args.default_timesteps:,} steps..."):
            pol = PPOPolicy(**SB3_DEFAULTS, seed=args.seed)
            train_policy(pol, CopyMarketSB3VecEnv.make(market, n), args.default_timesteps, run)
        finish(run, pol)

    with console.status("evaluating uniform and the oracle..."):
        reference = {
            "uniform": evaluate(market, policy_chooser(UniformPolicy(seed=args.seed)), **ev),
            "true-CTR oracle": evaluate(market, myopic_oracle, **ev),
        }
    batched = [r for r in runs if "tuned" in r.name]
    defaults = [r for r in runs if r.env.startswith("DummyVecEnv")]
    best_b = max(batched, key=lambda r: r.fps_median) if batched else None
    best_d = max(defaults, key=lambda r: r.fps_median) if defaults else None
    ratio = best_b.fps_median / best_d.fps_median if best_b and best_d else None
    goal_value = best_b.fps_median if best_b else 0.0
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "benchmark": "ppo_fps",
        "command": command_line(args),
        "config": {
            "market": "MarketConfig() (default market), session_length 1",
            "algorithm": "sb3_contrib.MaskablePPO, MultiInputPolicy, device cpu",
            "timesteps": args.timesteps,
            "default_timesteps": args.default_timesteps,
            "rollout": args.rollout,
            "threads": args.threads,
            "seed": args.seed,
            "evaluation": ev,
        },
        "machine": machine,
        "runs": [r.to_dict() for r in runs],
        "reference": reference,
        "fps_ratio_best_batched_over_best_default": ratio,
        "goal": {
            "name": "batched fps (median iteration) >= 20,000",
            "value": goal_value,
            "target": GOAL_FPS,
            "passed": goal_value >= GOAL_FPS,
        },
        "total_seconds": time.perf_counter() - t_start,
    }


def run_fatigue(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from copyloop.agents import UniformPolicy
    from copyloop.agents.ppo import PPOPolicy
    from copyloop.envs import Market, MarketConfig
    from copyloop.envs.sb3 import CopyMarketSB3VecEnv

    t_start = time.perf_counter()
    machine = machine_info()
    length = args.session_length
    with console.status("building the market (cached MiniLM embeddings)..."):
        market = Market.get(MarketConfig()).with_session_length(length)
    wc = market.world.config
    b = args.num_envs[-1]
    ev = {
        "session_length": length,
        "batch": 4096,
        "blocks": max(1, args.eval_sessions // 4096),
        "seed": 20_000 + args.seed,
    }
    runs: list[TrainRun] = []
    results: dict[str, dict[str, float]] = {}

    def train_eval(name: str, gamma: float, train_length: int, timesteps: int) -> None:
        params = {**_batched_params(args, b), "gamma": gamma}
        run = TrainRun(name, f"CopyMarketSB3VecEnv, session_length {train_length}", b, params)
        with console.status(f"training {name} for {timesteps:,} steps..."):
            pol = PPOPolicy(**params, seed=args.seed)
            env = CopyMarketSB3VecEnv.make(market, b, session_length=train_length)
            train_policy(pol, env, timesteps, run)
        with console.status(f"evaluating {name}..."):
            run.evaluation = evaluate(market, policy_chooser(pol), **ev)
        runs.append(run)
        results[name] = run.evaluation
        console.print(
            f"  {name}: {run.timesteps:,} steps in {run.wall_s:.0f} s "
            f"({run.fps_median:,.0f} fps); clicks/imp "
            f"{run.evaluation['clicks_per_impression']:.4f}"
        )

    train_eval(f"PPO, gamma 0.99 (trained on L={length})", 0.99, length, args.fatigue_timesteps)
    train_eval(f"PPO, gamma 0 (trained on L={length})", 0.0, length, args.fatigue_timesteps)
    train_eval("PPO trained on L=1 (fatigue-blind learner)", 0.99, 1, args.timesteps)
    with console.status("evaluating uniform and the oracles..."):
        results["uniform"] = evaluate(market, policy_chooser(UniformPolicy(seed=args.seed)), **ev)
        results["myopic first-impression oracle"] = evaluate(market, myopic_oracle, **ev)
        results["fatigue-aware oracle"] = evaluate(market, fatigue_oracle(wc.fatigue_same), **ev)
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "benchmark": "ppo_fatigue",
        "command": command_line(args),
        "config": {
            "market": f"MarketConfig() (default market), session_length {length}",
            "fatigue_same": wc.fatigue_same,
            "fatigue_any": wc.fatigue_any,
            "algorithm": "sb3_contrib.MaskablePPO, MultiInputPolicy, device cpu",
            "fatigue_timesteps": args.fatigue_timesteps,
            "bandit_timesteps": args.timesteps,
            "threads": args.threads,
            "seed": args.seed,
            "evaluation": ev,
        },
        "machine": machine,
        "runs": [r.to_dict() for r in runs],
        "results": results,
        "total_seconds": time.perf_counter() - t_start,
    }


def command_line(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python bench/ppo_fps.py"]
    if args.fatigue_check:
        parts += [
            "--fatigue-check",
            f"--session-length {args.session_length}",
            f"--fatigue-timesteps {args.fatigue_timesteps}",
        ]
    parts += [
        f"--timesteps {args.timesteps}",
        "--num-envs " + " ".join(map(str, args.num_envs)),
        f"--rollout {args.rollout} --batch-size {args.batch_size} --n-epochs {args.n_epochs}",
        f"--learning-rate {args.learning_rate}",
        "--net-arch " + " ".join(map(str, args.net_arch)),
        f"--threads {args.threads} --seed {args.seed} --eval-sessions {args.eval_sessions}",
    ]
    if not args.fatigue_check:
        parts += [
            "--default-envs " + " ".join(map(str, args.default_envs)),
            f"--default-timesteps {args.default_timesteps}",
        ]
    parts.append(f"--out-dir {args.out_dir}")
    return " ".join(parts)


# ---- reporting ---------------------------------------------------------------------------------
HYPER = "n_steps/batch/epochs/lr/net"


def _hyper(p: dict[str, Any]) -> str:
    arch = "x".join(map(str, p["net_arch"]))
    return f"{p['n_steps']}/{p['batch_size']}/{p['n_epochs']}/{p['learning_rate']:g}/{arch}"


def fps_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "run",
        HYPER,
        "timesteps",
        "wall s",
        "fps (wall)",
        "fps (median iter)",
        "expected CTR",
        "clicks/imp",
    ]
    rows = [
        [
            r["name"],
            _hyper(r["params"]),
            f"{r['timesteps']:,}",
            f"{r['wall_s']:.0f}",
            f"{r['fps_wall']:,.0f}",
            f"{r['fps_median_iteration']:,.0f}",
            f"{r['evaluation']['expected_ctr']:.4f}",
            f"{r['evaluation']['clicks_per_impression']:.4f}",
        ]
        for r in report["runs"]
    ]
    for name, e in report["reference"].items():
        rows.append(
            [
                name,
                "no training",
                "",
                "",
                "",
                "",
                f"{e['expected_ctr']:.4f}",
                f"{e['clicks_per_impression']:.4f}",
            ]
        )
    return header, rows


def fatigue_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["policy", "clicks/imp", "± s.e.", "expected CTR", "vs uniform"]
    base = report["results"]["uniform"]["expected_ctr"]
    rows = [
        [
            name,
            f"{e['clicks_per_impression']:.4f}",
            f"{e['clicks_se']:.4f}",
            f"{e['expected_ctr']:.4f}",
            f"{e['expected_ctr'] / base:.2f}x",
        ]
        for name, e in report["results"].items()
    ]
    return header, rows


def print_table(title: str, header: list[str], rows: list[list[str]], console: Console) -> None:
    t = Table(title=title)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 else "right")
    for row in rows:
        t.add_row(*row)
    console.print(t)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---", "---"] + ["---:"] * (len(header) - 2)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _machine_line(m: dict[str, Any]) -> str:
    load = m.get("load_average_at_start")
    load_s = f"{load[0]:.1f}" if load else "?"
    end = m.get("load_average_at_end")
    end_s = f"{end[0]:.1f}" if end else "?"
    return (
        f"{m['date']} · {m['cpu_model']} · {m['cpu_affinity']} usable cores (load average "
        f"{load_s} at start, {end_s} at end) · {m['platform']} · Python {m['python']} · torch "
        f"{m['torch']} ({m['torch_threads']} threads) · SB3 {m['stable_baselines3']} · "
        f"sb3-contrib {m['sb3_contrib']} · numpy {m['numpy']} · gymnasium {m['gymnasium']} · "
        f"commit {m['git_commit']}"
    )


def markdown(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    if report["benchmark"] == "ppo_fps":
        header, rows = fps_rows(report)
        g = report["goal"]
        ratio = report["fps_ratio_best_batched_over_best_default"]
        body = [
            "# PPO training throughput",
            "",
            _machine_line(m),
            "",
            f"{cfg['algorithm']}; {cfg['market']}. fps = env steps × envs per second; "
            "`fps (median iter)` is the median over PPO iterations (rollout + update). "
            f"Evaluation: {cfg['evaluation']['batch'] * cfg['evaluation']['blocks']:,} fixed "
            "sessions, the same for every row.",
            "",
            _md_table(header, rows),
            "",
            f"Best batched / best SB3-defaults fps: **{ratio:.1f}x**" if ratio else "",
            "",
            f"Goal: {g['name']}: {g['value']:,.0f} → **{'PASS' if g['passed'] else 'FAIL'}**",
        ]
    else:
        header, rows = fatigue_rows(report)
        run_rows = [
            [
                r["name"],
                _hyper(r["params"]),
                f"{r['params']['gamma']:g}",
                f"{r['timesteps']:,}",
                f"{r['wall_s']:.0f} s",
                f"{r['fps_median_iteration']:,.0f}",
            ]
            for r in report["runs"]
        ]
        body = [
            f"# PPO with fatigue: sessions of {cfg['market'].rsplit(' ', 1)[-1]} impressions",
            "",
            _machine_line(m),
            "",
            f"{cfg['algorithm']}; {cfg['market']}; fatigue_same {cfg['fatigue_same']}, "
            f"fatigue_any {cfg['fatigue_any']}. Evaluation: "
            f"{cfg['evaluation']['batch'] * cfg['evaluation']['blocks']:,} fixed sessions "
            "(common random numbers); s.e. over blocks of 4,096 sessions.",
            "",
            _md_table(header, rows),
            "",
            "Training runs:",
            "",
            _md_table(["run", HYPER, "gamma", "timesteps", "wall", "fps (median iter)"], run_rows),
        ]
    body += ["", "Repeat with:", "", "```bash", report["command"], "```", ""]
    return "\n".join(body)


# ---- entry point -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--timesteps",
        type=int,
        default=2_000_000,
        help="training steps of each batched run (and of the L=1 learner)",
    )
    p.add_argument(
        "--num-envs",
        type=int,
        nargs="+",
        default=[256, 1024],
        help="batch sizes of the batched runs (the fatigue check uses the last)",
    )
    p.add_argument("--rollout", type=int, default=16_384, help="samples per PPO rollout")
    p.add_argument("--batch-size", type=int, default=4096, help="PPO minibatch size")
    p.add_argument("--n-epochs", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--net-arch", type=int, nargs="+", default=[64, 64])
    p.add_argument(
        "--default-envs",
        type=int,
        nargs="*",
        default=[1, 8],
        help="DummyVecEnv sizes of the SB3-defaults runs (none: skip them)",
    )
    p.add_argument("--default-timesteps", type=int, default=65_536)
    p.add_argument("--eval-sessions", type=int, default=102_400)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fatigue-check",
        action="store_true",
        help="run the fatigue comparison instead of the throughput runs",
    )
    p.add_argument("--session-length", type=int, default=5)
    p.add_argument("--fatigue-timesteps", type=int, default=5_000_000)
    p.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=max(Console().width, 150))
    if args.fatigue_check:
        report = run_fatigue(args, console)
        name = "ppo_fatigue"
        print_table("PPO vs myopic oracle with fatigue", *fatigue_rows(report), console)
    else:
        report = run_fps(args, console)
        name = "ppo_fps"
        print_table("PPO training throughput", *fps_rows(report), console)
        ratio = report["fps_ratio_best_batched_over_best_default"]
        g = report["goal"]
        if ratio:
            console.print(f"best batched / best SB3 defaults: {ratio:.1f}x")
        style = "green" if g["passed"] else "red"
        console.print(
            f"goal {g['name']}: {g['value']:,.0f} [{style}]"
            f"{'PASS' if g['passed'] else 'FAIL'}[/{style}]"
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"{name}.md").write_text(markdown(report))
    console.print(f"wrote {args.out_dir / name}.json and .md in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
