"""copyloop's OPE estimators vs obp 0.5.7: point estimates, bootstrap intervals, a streamed 100M DR.

What it measures, on the same synthetic logs for both libraries (K = ``--actions`` actions,
uniform logging, a softmax target over a linear score of the context, Bernoulli rewards from a
logistic model, a fixed — deliberately imperfect — reward model ``q``; ours get (n, K) arrays,
obp gets (n, K, 1) views of the same memory):

1. **Point estimates** of IPW, SNIPW, DM and DR at each ``--sizes`` (default 10k, 1M, 10M rows):
   median wall time of ``Estimator.estimate`` vs obp's ``estimate_policy_value`` (the values are
   checked to agree to 1e-9). obp validates its inputs on every call (``check_ope_inputs``:
   shapes, ``action_dist`` sums); ours does not (``check_target`` is a separate step), so the
   time of ``check_target`` is reported in its own column. Goal: ours >= 20× faster.
2. **Bootstrap intervals** at equal resamples (``--n-boot``): ours
   ``Estimator.interval(method="bootstrap")`` (the percentile bootstrap over the estimator's
   per-row sufficient statistics ``Estimator.parts``, Poisson weights over 10k random row
   groups beyond 10k rows) vs obp's ``estimate_interval(n_bootstrap_samples=...)`` (resamples
   its round rewards row by row); goal >= 50×. Also ours studentised
   (``method="bootstrap-t"``), which carries the per-group cross-products for the SEs. As a
   check of both, an **exact row bootstrap reference** (here, not
   in ``copyloop.ope``): the textbook multinomial resampling of rows, one draw of ``n`` uint32
   indices per resample shared by the four estimators, gathering their per-row statistics
   ``(w r, w, Σπq̂, DR term)``. Interval widths are reported relative to the CLT interval's.
   Also the time of a few numpy kernels the estimators spend their time in, next to faster
   equivalents (``--kernels``, at >= 1M rows).
3. **Streamed DR at 100M rows** (``--stream-rows``): a DecisionLog written in batches with
   ``DecisionLogWriter`` (20 actions, context of ``--stream-context-dim`` floats, reward from the
   same logistic model), then read with ``DecisionLog.iter_batches(batch_size=1M)``; per batch
   the target policy's probabilities and the fixed reward model are evaluated and copyloop's
   ``DR`` gives the per-row terms, of which only (n, Σ terms, Σ terms²) are kept. The estimate's
   CLT interval is checked against the true value (Monte Carlo over 2M fresh contexts). Time
   and peak RSS (``ru_maxrss``/``VmHWM``, reset per phase through ``/proc/self/clear_refs``).

Every obp measurement is skipped (and reported "skipped") when its predicted time — linear in
the rows from the previous size, or from a calibration run with few resamples — is above
``--obp-cap-s`` (120 s); ours likewise with ``--ours-cap-s``.

Run: ``.venv/bin/python bench/ope.py`` (writes ``bench/results/ope.json`` and
``bench/results/ope.md``). Quick check: ``--sizes 10000 100000 --stream-rows 2000000``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from copyloop.contract import DecisionLog, DecisionLogWriter
from copyloop.ope import DM, DR, IPW, SNIPW, BanditFeedback, Estimator
from copyloop.ope.data import check_target

Array = npt.NDArray[np.float64]
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, git_commit, reset_peak, ru_maxrss_bytes, status_kib  # noqa: E402  # noqa: E402

MIB = 1024.0 * 1024.0
ESTIMATORS: dict[str, Estimator] = {"ipw": IPW(), "snipw": SNIPW(), "dm": DM(), "dr": DR()}
OBP_NAMES = {
    "ipw": "InverseProbabilityWeighting",
    "snipw": "SelfNormalizedInverseProbabilityWeighting",
    "dm": "DirectMethod",
    "dr": "DoublyRobust",
}
VERSIONED = ("numpy", "scipy", "pyarrow", "obp", "scikit-learn", "pandas")
POINT_GOAL = 20.0
BOOT_GOAL = 50.0
CHUNK = 1_000_000


# ---- the synthetic world ------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """Fixed parameters: true reward logits, the reward model's (shrunk, shifted) logits, the
    target policy's score."""

    beta: Array  # (d, K) true reward slopes
    bias: Array  # (K,) true reward intercepts
    beta_q: Array  # (d, K) the fixed reward model's slopes
    bias_q: Array  # (K,)
    score: Array  # (d, K) the target policy's score
    temperature: float

    @staticmethod
    def make(d: int, k: int, seed: int) -> World:
        rng = np.random.default_rng(seed)
        beta = rng.normal(0, 0.4, (d, k))
        bias = rng.normal(-3.5, 0.4, k)  # CTRs around 3%
        return World(
            beta=beta,
            bias=bias,
            beta_q=0.5 * beta + rng.normal(0, 0.1, (d, k)),
            bias_q=bias + rng.normal(0, 0.2, k),
            score=beta + rng.normal(0, 0.3, (d, k)),
            temperature=0.7,
        )

    def target(self, x: Array) -> Array:
        z = (x @ self.score) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def ctr(self, x: Array) -> Array:
        return 1.0 / (1.0 + np.exp(-(x @ self.beta + self.bias)))

    def q(self, x: Array) -> Array:
        return 1.0 / (1.0 + np.exp(-(x @ self.beta_q + self.bias_q)))


@dataclass
class Log:
    data: BanditFeedback
    target: Array
    q: Array


def make_log(world: World, n: int, d: int, k: int, seed: int) -> Log:
    """n rows, built in chunks so the temporaries stay ~CHUNK × K."""
    rng = np.random.default_rng(seed)
    context = np.empty((n, d))
    action = np.empty(n, np.int64)
    reward = np.empty(n)
    target = np.empty((n, k))
    q = np.empty((n, k))
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        m = e - s
        x = rng.standard_normal((m, d))
        a = rng.integers(0, k, m)
        p = world.ctr(x)[np.arange(m), a]
        context[s:e], action[s:e] = x, a
        reward[s:e] = (rng.random(m) < p).astype(np.float64)
        target[s:e] = world.target(x)
        q[s:e] = world.q(x)
    data = BanditFeedback(
        context=context,
        mask=np.ones((n, k), bool),
        action=action,
        reward=reward,
        pscore=np.full(n, 1.0 / k),
    )
    return Log(data, target, q)


def obp_inputs(log: Log) -> dict[str, Any]:
    return {
        "reward": log.data.reward,
        "action": log.data.action,
        "pscore": log.data.pscore,
        "action_dist": log.target[:, :, None],
        "estimated_rewards_by_reg_model": log.q[:, :, None],
        "position": None,
    }


# ---- timing helpers -----------------------------------------------------------------------------
def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """(median seconds, all runs, last result)."""
    runs = []
    out = None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return float(np.median(runs)), runs, out


def repeats_for(n: int) -> int:
    return 7 if n <= 100_000 else 5 if n <= 2_000_000 else 3


# ---- the exact row bootstrap (reference) --------------------------------------------------------
def sufficient_columns(log: Log) -> npt.NDArray[np.float64]:
    """(n, 4): w r, w, Σ_a π q̂, the DR term — everything the four estimators need per row."""
    d = log.data
    rows = np.arange(d.n_rows)
    w = log.target[rows, d.action] / d.pscore
    dm = np.einsum("nk,nk->n", log.target, log.q)
    qa = log.q[rows, d.action]
    out = np.empty((d.n_rows, 4))
    out[:, 0] = w * d.reward
    out[:, 1] = w
    out[:, 2] = dm
    out[:, 3] = dm + w * (d.reward - qa)
    return out


def exact_row_bootstrap(
    cols: npt.NDArray[np.float64], n_boot: int, alpha: float = 0.05, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ipw, snipw, dm, dr from ``n_boot`` multinomial resamples of the
    rows (the textbook bootstrap), sharing each resample's indices between the four estimators.
    Each resample is one gather of (n, 4) float64 rows by uint32 indices and a column sum."""
    n = cols.shape[0]
    rng = np.random.default_rng(seed)
    sums = np.empty((n_boot, 4))
    idx_dtype = np.uint32 if n < 2**32 else np.uint64
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n, dtype=idx_dtype)
        sums[b] = cols.take(idx, axis=0).sum(axis=0)
    stats = {
        "ipw": sums[:, 0] / n,
        "snipw": sums[:, 0] / sums[:, 1],
        "dm": sums[:, 2] / n,
        "dr": sums[:, 3] / n,
    }
    out = {}
    for k, s in stats.items():
        lo, hi = np.quantile(s, [alpha / 2, 1 - alpha / 2])
        out[k] = (float(lo), float(hi))
    return out


# ---- in-memory comparison -----------------------------------------------------------------------
def bench_size(
    n: int,
    args: argparse.Namespace,
    world: World,
    obp_mod: Any,
    prev: dict[str, Any] | None,
    console: Console,
) -> dict[str, Any]:
    console.print(f"[bold]n = {n:,}[/bold]: building the log ...")
    t0 = time.perf_counter()
    log = make_log(world, n, args.context_dim, args.actions, args.seed + n)
    res: dict[str, Any] = {"n": n, "build_s": time.perf_counter() - t0, "estimators": {}}
    reps = repeats_for(n)
    ct, _, _ = timed(partial(check_target, log.target, log.data), max(1, reps // 2))
    res["check_target_s"] = ct
    oin: dict[str, Any] = obp_inputs(log) if obp_mod is not None else {}
    for name, est in ESTIMATORS.items():
        r: dict[str, Any] = {}
        q = log.q if est.needs_reward_model else None
        tm, runs, val = timed(partial(est.estimate, log.data, log.target, q), reps)
        r["ours_point_s"], r["ours_point_runs"], r["ours_value"] = tm, runs, float(val)
        # obp's point estimate
        prev_r: dict[str, Any] | None = prev["estimators"][name] if prev else None
        prev_n = prev["n"] if prev else n
        if obp_mod is None:
            r["obp_point"] = "obp not importable"
        else:
            predicted = (
                prev_r["obp_point_s"] * n / prev_n
                if prev_r and isinstance(prev_r.get("obp_point_s"), float)
                else 0.0
            )
            if prev_r and prev_r.get("obp_point") == "skipped":
                predicted = math.inf
            if predicted * reps > args.obp_cap_s:
                r["obp_point"] = "skipped"
            else:
                o = getattr(obp_mod, OBP_NAMES[name])()
                to, oruns, oval = timed(partial(o.estimate_policy_value, **oin), reps)
                oval = float(oval)
                r["obp_point_s"], r["obp_point_runs"], r["obp_value"] = to, oruns, oval
                r["point_ratio"] = to / tm
                r["rel_diff"] = abs(oval - val) / abs(oval)
        res["estimators"][name] = r
        console.print(
            f"  {name}: ours {tm * 1e3:.2f} ms"
            + (
                f", obp {r['obp_point_s'] * 1e3:.2f} ms ({r['point_ratio']:.1f}×, rel diff "
                f"{r['rel_diff']:.1e})"
                if "obp_point_s" in r
                else f", obp {r.get('obp_point')}"
            )
        )
    # ---- bootstrap at equal resamples
    b = args.n_boot
    for name, est in ESTIMATORS.items():
        r = res["estimators"][name]
        q = log.q if est.needs_reward_model else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clt = est.interval(log.data, log.target, q)
        r["clt_iv"] = [clt.lower, clt.upper]
        # ours: the percentile bootstrap on sufficient statistics (what obp computes: a
        # percentile interval with the reward model fixed); calibrate on 2 resamples
        ours_boot = partial(est.interval, log.data, log.target, q, method="bootstrap", seed=0)
        t_cal, _, _ = timed(partial(ours_boot, n_boot=2), 1)
        if t_cal * b / 2 > args.ours_cap_s:
            r["ours_boot"] = "skipped"
            r["ours_boot_predicted_s"] = t_cal * b / 2
        else:
            # median of 3 (one cold call on this VM can pay ~0.3 s of page faults for its
            # fresh buffers); obp's 20-s runs are single
            tb, _, iv = timed(partial(ours_boot, n_boot=b), 3)
            r["ours_boot_s"], r["ours_boot_iv"] = tb, [iv.lower, iv.upper]
        if obp_mod is None:
            r["obp_boot"] = "obp not importable"
        else:
            o = getattr(obp_mod, OBP_NAMES[name])()
            cal = max(2, b // 10)
            obp_boot = partial(o.estimate_interval, **oin, random_state=0)
            t_ocal = min(timed(partial(obp_boot, n_bootstrap_samples=cal), 1)[0] for _ in "ab")
            # fixed cost (the round rewards, ~ a point estimate) + per-resample cost
            fixed = min(r.get("obp_point_s", 0.0), t_ocal)
            predicted = fixed + (t_ocal - fixed) * b / cal
            if predicted > args.obp_cap_s:
                r["obp_boot"] = "skipped"
                r["obp_boot_predicted_s"] = predicted
            else:
                tob, _, oiv = timed(partial(obp_boot, n_bootstrap_samples=b), 1)
                keys = sorted(oiv)
                lo = next(oiv[k] for k in keys if "lower" in k)
                hi = next(oiv[k] for k in keys if "upper" in k)
                r["obp_boot_s"], r["obp_boot_iv"] = tob, [float(lo), float(hi)]
                if "ours_boot_s" in r:
                    r["boot_ratio"] = tob / r["ours_boot_s"]
        # ours, studentised (bootstrap-t: also the resamples' standard errors)
        tf, _, fiv = timed(
            partial(est.interval, log.data, log.target, q, method="bootstrap-t", n_boot=b, seed=0),
            3,
        )
        r["boot_t_s"], r["boot_t_iv"] = tf, [fiv.lower, fiv.upper]
        if abs(fiv.estimate - r["ours_value"]) > 1e-9 * abs(r["ours_value"]):
            raise AssertionError(f"{name}: bootstrap point {fiv.estimate} != {r['ours_value']}")
        if "obp_boot_s" in r:
            r["boot_t_ratio"] = r["obp_boot_s"] / tf
        console.print(
            f"  {name} bootstrap ×{b}: ours "
            + (f"{r['ours_boot_s']:.2f} s" if "ours_boot_s" in r else "skipped")
            + ", obp "
            + (f"{r['obp_boot_s']:.2f} s" if "obp_boot_s" in r else str(r.get("obp_boot")))
            + f", ours bootstrap-t {tf:.3f} s"
        )
    # the exact row bootstrap reference: all four estimators from one set of resamples
    t_cols, _, cols = timed(partial(sufficient_columns, log), 1)
    t_vb, _, viv = timed(partial(exact_row_bootstrap, cols, b, seed=0), 1)
    res["reference_boot"] = {"columns_s": t_cols, "resample_s": t_vb, "intervals": viv}
    console.print(f"  exact row bootstrap reference ×{b}, all four: {t_cols + t_vb:.2f} s")
    if n <= args.width_max_n:
        bw = args.width_boot
        ref = exact_row_bootstrap(cols, bw, seed=1)
        for name, est in ESTIMATORS.items():
            r = res["estimators"][name]
            q = log.q if est.needs_reward_model else None
            iv = est.interval(log.data, log.target, q, method="bootstrap", n_boot=bw, seed=1)
            ivt = est.interval(log.data, log.target, q, method="bootstrap-t", n_boot=bw, seed=1)
            r["width_check"] = {
                "ours_iv": [iv.lower, iv.upper],
                "ours_t_iv": [ivt.lower, ivt.upper],
                "reference_iv": list(ref[name]),
            }
        console.print(f"  interval-width check at {bw} resamples done")
    del cols
    if n >= 1_000_000 and args.kernels:
        res["kernels"] = kernel_timings(log, max(3, reps))
    return res


def kernel_timings(log: Log, repeats: int) -> dict[str, float]:
    """Seconds (best of ``repeats``) of the kernels the estimators and the bootstrap spend their
    time in, each next to an equivalent that is faster in numpy."""
    t, q, a = log.target, log.q, log.data.action
    n, k = t.shape
    rows = np.arange(n)
    flat = rows * k + a
    rng = np.random.default_rng(0)
    blocks = 10_000
    cases: dict[str, Callable[[], Any]] = {
        "importance weights: target[arange(n), action]": lambda: t[rows, a],
        "importance weights: target.ravel().take(arange(n)*K + action)": lambda: t.ravel().take(
            flat
        ),
        "DM values: (target * q).sum(axis=1)": lambda: (t * q).sum(axis=1),
        'DM values: np.einsum("nk,nk->n", target, q)': lambda: np.einsum("nk,nk->n", t, q),
        "bootstrap groups: rng.permutation(n) % 10_000": lambda: rng.permutation(n) % blocks,
        "bootstrap groups: rng.integers(0, 10_000, n, dtype=int32)": lambda: rng.integers(
            0, blocks, n, dtype=np.int32
        ),
    }
    out = {}
    for name, fn in cases.items():
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        out[name] = min(runs)
    return out


# ---- streamed DR --------------------------------------------------------------------------------
def _release() -> None:
    gc.collect()
    pa.default_memory_pool().release_unused()


ACTIONS_CACHE: dict[int, pa.Array] = {}


def stream_batch(
    world: World, rng: np.random.Generator, start: int, n: int, k: int, d: int
) -> dict[str, Any]:
    if k not in ACTIONS_CACHE:
        ACTIONS_CACHE[k] = pa.array([f"a{i}" for i in range(k)], pa.string())
    ids = pa.array(np.arange(start, start + n, dtype=np.int64)).cast(pa.string())
    x = rng.standard_normal((n, d)).astype(np.float32)
    a = rng.integers(0, k, size=n, dtype=np.int32)
    p = world.ctr(x.astype(np.float64))[np.arange(n), a]
    epoch = np.datetime64("2026-01-01T00:00:00", "us")
    return {
        "event_id": pc.binary_join_element_wise("ev", ids, "-"),
        "ts": epoch + np.arange(start, start + n, dtype=np.int64).astype("timedelta64[ms]"),
        "campaign_id": pa.array(["camp-0"], pa.string()).take(pa.array(np.zeros(n, np.int32))),
        "context": x,
        "action": ACTIONS_CACHE[k].take(pa.array(a)),
        "action_index": a,
        "propensity": np.full(n, 1.0 / k),
        "reward": (rng.random(n) < p).astype(np.float64),
        "policy_id": "uniform-random",
        "model_version": "1",
    }


def stream_phase(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    rows, batch, k, d = args.stream_rows, args.stream_batch, args.actions, args.stream_context_dim
    world = World.make(d, k, args.seed + 7)
    out_dir = Path(args.stream_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    need = rows * (12 + 4 * d + 8) * 1.3  # rough zstd size; the check only guards against ENOSPC
    free = shutil.disk_usage(out_dir).free
    if free < need:
        return {"skipped": f"{free / 1e9:.1f} GB free in {out_dir}, need ~{need / 1e9:.1f} GB"}
    path = out_dir / "ope_stream.parquet"
    res: dict[str, Any] = {"rows": rows, "batch": batch, "actions": k, "context_dim": d}
    # write
    _release()
    reset_peak()
    rng = np.random.default_rng(args.seed + 11)
    t0 = time.perf_counter()
    with DecisionLogWriter(path, d, metadata={"bench": "ope"}) as writer:
        for start in range(0, rows, batch):
            m = min(batch, rows - start)
            writer.write(DecisionLog.from_arrays(**stream_batch(world, rng, start, m, k, d)))
            if (start // batch) % max(1, rows // batch // 10) == 0:
                console.print(
                    f"  write {start + m:,}/{rows:,} rows, {time.perf_counter() - t0:.0f} s"
                )
    res["write_s"] = time.perf_counter() - t0
    res["write_peak_rss_mib"] = ru_maxrss_bytes() / MIB
    res["file_bytes"] = path.stat().st_size
    # stream DR
    _release()
    reset_peak()
    est = DR()
    n_tot, s1, s2 = 0, 0.0, 0.0
    t_read = t_comp = 0.0
    t0 = time.perf_counter()
    it = DecisionLog.iter_batches(path, batch_size=batch)
    while True:
        ta = time.perf_counter()
        log = next(it, None)
        tb = time.perf_counter()
        t_read += tb - ta
        if log is None:
            break
        x = log.context.astype(np.float64)
        m = log.n_rows
        data = BanditFeedback(
            context=x,
            mask=np.ones((m, k), bool),
            action=log.action_index.astype(np.int64),
            reward=log.reward,
            pscore=log.propensity,
        )
        value, psi = est._terms(data, world.target(x), world.q(x))
        terms = psi + value
        n_tot += m
        s1 += float(terms.sum())
        s2 += float(terms @ terms)
        t_comp += time.perf_counter() - tb
        del log, data, x, psi, terms
        if (n_tot // batch) % max(1, rows // batch // 10) == 0:
            console.print(f"  DR stream {n_tot:,}/{rows:,} rows, {time.perf_counter() - t0:.0f} s")
    res["stream_s"] = time.perf_counter() - t0
    res["stream_read_validate_s"] = t_read
    res["stream_compute_s"] = t_comp
    res["stream_peak_rss_mib"] = ru_maxrss_bytes() / MIB
    hwm = status_kib("VmHWM")
    res["stream_vmhwm_mib"] = None if hwm is None else hwm / 1024
    mean = s1 / n_tot
    se = math.sqrt(max(s2 / n_tot - mean * mean, 0.0) / n_tot)
    # truth: E_x Σ_a π(a|x) ctr(x, a), Monte Carlo over fresh contexts
    rng_t = np.random.default_rng(args.seed + 99)
    vals = []
    for _ in range(2):
        x = rng_t.standard_normal((CHUNK, d)).astype(np.float32).astype(np.float64)
        vals.append((world.target(x) * world.ctr(x)).sum(1))
    v = np.concatenate(vals)
    truth, truth_se = float(v.mean()), float(v.std() / math.sqrt(v.size))
    res.update(
        {
            "rows_read": n_tot,
            "dr": mean,
            "dr_se": se,
            "truth": truth,
            "truth_mc_se": truth_se,
            "z": (mean - truth) / math.hypot(se, truth_se),
            "covers_95": abs(mean - truth) <= 1.96 * math.hypot(se, truth_se),
        }
    )
    if not args.keep_stream:
        path.unlink(missing_ok=True)
    return res


# ---- reporting ----------------------------------------------------------------------------------
def _fmt_s(v: Any) -> str:
    if isinstance(v, float):
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"
    return str(v) if v is not None else "—"


def _fmt_x(v: Any) -> str:
    return f"{v:.1f}×" if isinstance(v, float) and math.isfinite(v) else "—"


def rows_for_table(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for size in report["sizes"]:
        for name, r in size["estimators"].items():
            out.append(
                [
                    f"{size['n']:,}",
                    name,
                    _fmt_s(r["ours_point_s"]),
                    _fmt_s(r.get("obp_point_s", r.get("obp_point"))),
                    _fmt_x(r.get("point_ratio")),
                    f"{r['rel_diff']:.0e}" if "rel_diff" in r else "—",
                    _fmt_s(r.get("ours_boot_s", r.get("ours_boot"))),
                    _fmt_s(r.get("obp_boot_s", r.get("obp_boot"))),
                    _fmt_x(r.get("boot_ratio")),
                    _fmt_s(r.get("boot_t_s")),
                    _fmt_x(r.get("boot_t_ratio")),
                ]
            )
    return out


HEADERS = [
    "rows",
    "estimator",
    "ours point",
    "obp point",
    "point ×",
    "|Δ| rel",
    "ours bootstrap",
    "obp bootstrap",
    "bootstrap ×",
    "ours bootstrap-t",
    "bootstrap-t ×",
]


def total_rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for size in report["sizes"]:
        est = size["estimators"]
        ours = sum(est[k].get("ours_boot_s", math.nan) for k in ESTIMATORS)
        obp = sum(est[k].get("obp_boot_s", math.nan) for k in ESTIMATORS)
        fixed = sum(est[k].get("boot_t_s", math.nan) for k in ESTIMATORS)
        ref = size["reference_boot"]
        out.append(
            [
                f"{size['n']:,}",
                _fmt_s(ours) if math.isfinite(ours) else "skipped",
                _fmt_s(obp) if math.isfinite(obp) else "skipped (some)",
                _fmt_x(obp / ours),
                _fmt_s(fixed),
                _fmt_x(obp / fixed),
                _fmt_s(ref["columns_s"] + ref["resample_s"]),
                _fmt_s(size["check_target_s"]),
            ]
        )
    return out


TOTAL_HEADERS = [
    "rows",
    "ours, 4 estimators",
    "obp, 4 estimators",
    "ours ×",
    "ours bootstrap-t",
    "bootstrap-t ×",
    "exact row bootstrap (reference, shared resamples)",
    "check_target (once)",
]


def width_rows(report: dict[str, Any]) -> list[list[str]]:
    """Bootstrap interval widths relative to the CLT interval's (1.00 = the same width)."""
    out = []
    for size in report["sizes"]:
        for name, r in size["estimators"].items():
            if "width_check" not in r:
                continue
            clt = r["clt_iv"][1] - r["clt_iv"][0]
            wc = r["width_check"]
            out.append(
                [
                    f"{size['n']:,}",
                    name,
                    f"[{r['clt_iv'][0]:.5f}, {r['clt_iv'][1]:.5f}]",
                    f"{(wc['ours_iv'][1] - wc['ours_iv'][0]) / clt:.3f}",
                    f"{(wc['ours_t_iv'][1] - wc['ours_t_iv'][0]) / clt:.3f}"
                    if "ours_t_iv" in wc
                    else "—",
                    f"{(wc['reference_iv'][1] - wc['reference_iv'][0]) / clt:.3f}",
                ]
            )
    return out


WIDTH_HEADERS = [
    "rows",
    "estimator",
    "CLT 95% interval",
    "ours percentile bootstrap width / CLT",
    "ours bootstrap-t width / CLT",
    "exact row bootstrap width / CLT",
]


def machine_info() -> dict[str, Any]:

    versions: dict[str, str | None] = {}
    for p in VERSIONED:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = None
    git = git_commit()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": git,
        "versions": versions,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m = report["machine"]
    lines = [
        "# OPE: copyloop vs obp",
        "",
        f"{m['date']} · {m['cpu_model']} · {m['cpu_count']} CPUs · {m['platform']} · Python "
        f"{m['python']} · git {m['git_commit']} · load at start {report['loadavg_start']}, at "
        f"end {report['loadavg_end']}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Synthetic logs: {report['args']['actions']} actions, uniform logging, context dim "
        f"{report['args']['context_dim']}, softmax target, Bernoulli rewards (CTR ≈ 3%), a fixed "
        "reward model q. Point times are medians; bootstrap times the median of 3 runs for ours "
        "and "
        "one run for obp (20+ s each at 10M rows), at "
        f"{report['args']['n_boot']} resamples (equal for both libraries). obp gets (n, K, 1) "
        "views of the same arrays. 'skipped' = predicted above the cap "
        f"({report['args']['obp_cap_s']:.0f} s for obp, {report['args']['ours_cap_s']:.0f} s "
        "for ours).",
        "",
        "## Point estimates and bootstrap intervals",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows_for_table(report)]
    lines += [
        "",
        f"Goals: point ≥ {POINT_GOAL:.0f}× obp, bootstrap ≥ {BOOT_GOAL:.0f}× obp. "
        + report["verdicts"],
        "",
        "## Bootstrap, all four estimators",
        "",
        "| " + " | ".join(TOTAL_HEADERS) + " |",
        "|" + "---|" * len(TOTAL_HEADERS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in total_rows(report)]
    lines += [
        "",
        "## Interval widths (sanity check of the bootstrap schemes)",
        "",
        f"Percentile intervals from {report['args']['width_boot']} resamples (a width from B "
        "resamples carries ~4/sqrt(B/100) % Monte-Carlo noise) at sizes up to "
        f"{report['args']['width_max_n']:,} rows: `Estimator.interval(method=...)` with "
        "'bootstrap' and 'bootstrap-t' (Poisson "
        "weights over the row groups i mod 10k beyond 10k rows) and the exact row bootstrap; "
        "the CLT interval is "
        "`Estimator.interval`. (obp's SNIPW bootstrap resamples round rewards `w r / mean(w)` "
        "normalised by the full sample's mean weight, not the ratio; its intervals are in the "
        "JSON.)",
        "",
        "| " + " | ".join(WIDTH_HEADERS) + " |",
        "|" + "---|" * len(WIDTH_HEADERS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in width_rows(report)]
    kern = [sz for sz in report["sizes"] if "kernels" in sz]
    if kern:
        lines += [
            "",
            "## Kernels (best of several runs)",
            "",
            "| kernel | " + " | ".join(f"{sz['n']:,} rows" for sz in kern) + " |",
            "|---|" + "---|" * len(kern),
        ]
        for name in kern[0]["kernels"]:
            lines.append(
                f"| `{name}` | " + " | ".join(_fmt_s(sz["kernels"][name]) for sz in kern) + " |"
            )
    lines += ["", "## Notes", "", *[f"- {x}" for x in report["notes"]], ""]
    s = report.get("stream")
    if s:
        lines += ["## Streamed DR", ""]
        if "skipped" in s:
            lines.append(f"Skipped: {s['skipped']}")
        else:
            lines += [
                "| rows | file | write | stream DR (read + validate / compute) | rows/s | "
                "peak RSS write / stream | DR ± SE | truth | z |",
                "|---|---|---|---|---|---|---|---|---|",
                f"| {s['rows']:,} | {s['file_bytes'] / 1e9:.2f} GB | {s['write_s']:.0f} s | "
                f"{s['stream_s']:.0f} s ({s['stream_read_validate_s']:.0f} / "
                f"{s['stream_compute_s']:.0f}) | {s['rows'] / s['stream_s'] / 1e6:.2f} M | "
                f"{s['write_peak_rss_mib']:,.0f} / {s['stream_peak_rss_mib']:,.0f} MiB | "
                f"{s['dr']:.6f} ± {s['dr_se']:.6f} | {s['truth']:.6f} | {s['z']:+.2f} |",
            ]
    path.write_text("\n".join(lines) + "\n")


def make_notes(sizes: list[dict[str, Any]]) -> list[str]:
    """What the numbers say."""
    return [
        "Point estimates. IPW reads the (n, K) target only on rows with a non-zero reward "
        "(`np.flatnonzero(reward)`, then a flat `take`): O(n) over the reward column plus "
        "O(clicks), against obp's O(n·K) input check and gather. DM is one `einsum` contraction "
        "of target and q (no n-long temporary). SNIPW, DR and SNDR sum over blocks of 16,384 "
        "rows (65,536 before commit 4034e52; flat `take` of the logged slot, `einsum` of each "
        "block while it is in cache), "
        "again without n-long temporaries. What is left is memory traffic: SNIPW needs π(a_i) "
        "on every row, and a flat `take` from the (n, K) target touches one cache line per "
        "row (K = 20 float64 = 160 bytes a row), while obp's SNIPW reads the whole target a "
        "few times; DM/DR must read all of target and q (3.2 GB at 10M rows), which obp reads "
        "3–4 times — so for SNIPW, DM and DR the ratio is bounded by obp's number of passes "
        "over the same bytes, not by arithmetic, unless the input format changes (e.g. only "
        "the logged slot's probability for IPW/SNIPW).",
        "Bootstrap. `Estimator.interval(method='bootstrap')` (percentile, the reward model "
        "fixed — what obp's `estimate_interval` computes) builds the estimator's per-row parts "
        "once, puts row i in group i mod 10k (independent rows: as good as random groups, and "
        "every group sum is one contiguous reshape-sum), and draws Poisson(1) group counts for "
        "all resamples in one "
        "(B × 10k) matrix; cost O(n) once + O(B × 10k). obp resamples rows: O(B × n). Up to "
        "10k rows ours is the exact multinomial row bootstrap (index draws), like obp. "
        "`method='bootstrap-t'` also carries the groups' cross-products for each resample's "
        "delta-method SE (for SNDR 3 parts → 6 cross-products).",
        "A bootstrap that refits the reward model per resample (`bootstrap_interval(refit=True)`, "
        "what the CLI uses for DM) does B cross-fits and is not compared with obp's fixed-model "
        "bootstrap here: the work differs.",
        "The exact row bootstrap reference costs about what obp costs at equal resamples: one "
        "`rng.integers(0, n, n)` and one row gather per resample is the floor of any exact "
        "multinomial bootstrap; the large-n speed-up comes from resampling groups, whose "
        "widths match the exact reference's (width table).",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    ap.add_argument("--actions", type=int, default=20)
    ap.add_argument("--context-dim", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=100)
    ap.add_argument("--obp-cap-s", type=float, default=120.0)
    ap.add_argument("--ours-cap-s", type=float, default=300.0)
    ap.add_argument("--stream-rows", type=int, default=100_000_000)
    ap.add_argument("--stream-batch", type=int, default=1_000_000)
    ap.add_argument("--stream-context-dim", type=int, default=4)
    ap.add_argument("--stream-dir", default="/tmp/copyloop-ope-stream")
    ap.add_argument("--keep-stream", action="store_true")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--width-boot", type=int, default=1000, help="resamples of the width check")
    ap.add_argument("--width-max-n", type=int, default=1_000_000, help="largest width-check size")
    ap.add_argument(
        "--kernels",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the estimators' numpy kernels and faster equivalents at >= 1M rows",
    )
    ap.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench/results")
    ap.add_argument("--name", default="ope", help="results file stem")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    console = Console()
    command = " ".join([".venv/bin/python bench/ope.py", *(sys.argv[1:] if argv is None else argv)])
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import obp.ope as obp_mod
    except Exception as e:  # any import failure means: no peer
        console.print(
            f"[yellow]obp is not importable ({type(e).__name__}: {e}); run `bash "
            "scripts/setup_bench.sh`. Timing ours only.[/yellow]"
        )
        obp_mod = None
    load_start = [round(x, 2) for x in os.getloadavg()]
    world = World.make(args.context_dim, args.actions, args.seed)
    sizes: list[dict[str, Any]] = []
    prev = None
    for n in args.sizes:
        prev = bench_size(n, args, world, obp_mod, prev, console)
        sizes.append(prev)
    stream = None
    if not args.no_stream:
        console.print(f"[bold]streamed DR over {args.stream_rows:,} rows[/bold]")
        stream = stream_phase(args, console)
    point_ratios = [
        r["point_ratio"] for s in sizes for r in s["estimators"].values() if "point_ratio" in r
    ]
    boot_ratios = [
        r["boot_ratio"] for s in sizes for r in s["estimators"].values() if "boot_ratio" in r
    ]
    verdicts = (
        f"Point: {sum(x >= POINT_GOAL for x in point_ratios)}/{len(point_ratios)} comparisons "
        f"meet the goal (range {min(point_ratios, default=math.nan):.1f}–"
        f"{max(point_ratios, default=math.nan):.1f}×). Bootstrap: "
        f"{sum(x >= BOOT_GOAL for x in boot_ratios)}/{len(boot_ratios)} (range "
        f"{min(boot_ratios, default=math.nan):.2f}–{max(boot_ratios, default=math.nan):.2f}×)."
    )
    notes = make_notes(sizes)
    report = {
        "command": command,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "loadavg_start": load_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "sizes": sizes,
        "stream": stream,
        "verdicts": verdicts,
        "notes": notes,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    jpath = args.out_dir / f"{args.name}.json"
    mpath = args.out_dir / f"{args.name}.md"
    jpath.write_text(json.dumps(report, indent=1, default=str))
    write_markdown(mpath, report)
    t = Table(title="copyloop vs obp (OPE)")
    for h in HEADERS:
        t.add_column(h, justify="right")
    for r in rows_for_table(report):
        t.add_row(*r)
    console.print(t)
    t2 = Table(title=f"bootstrap ×{args.n_boot}, all four estimators")
    for h in TOTAL_HEADERS:
        t2.add_column(h, justify="right")
    for r in total_rows(report):
        t2.add_row(*r)
    console.print(t2)
    t3 = Table(title="bootstrap interval width / CLT width")
    for h in WIDTH_HEADERS:
        t3.add_column(h, justify="right")
    for r in width_rows(report):
        t3.add_row(*r)
    console.print(t3)
    console.print(verdicts)
    if stream and "skipped" not in stream:
        console.print(
            f"streamed DR over {stream['rows']:,} rows: write {stream['write_s']:.0f} s, stream "
            f"{stream['stream_s']:.0f} s, peak RSS {stream['stream_peak_rss_mib']:,.0f} MiB; DR "
            f"{stream['dr']:.6f} ± {stream['dr_se']:.6f} vs truth {stream['truth']:.6f} "
            f"(z {stream['z']:+.2f})"
        )
    console.print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
