"""DecisionLog at scale: stream N synthetic decisions to Parquet and back in bounded memory.

What it does (one process, phases timed with :func:`time.perf_counter`):

1. **Write** -- ``--rows`` decisions in batches of ``--batch``: each batch is generated with numpy
   and pyarrow compute (no per-row Python), built and validated with
   :meth:`DecisionLog.from_arrays`, and appended with :class:`DecisionLogWriter` (zstd Parquet,
   renamed into place atomically on success). One campaign, 20 actions ``a0`` .. ``a19`` drawn
   uniformly (propensity 1/20, ``candidates`` null, no variants table), reward
   Bernoulli(``--ctr``), float32 context of width ``--context-dim``, event ids ``ev-<i>`` unique
   across the file, timestamps 1 ms apart.
2. **Read** -- :meth:`DecisionLog.iter_batches` (every batch validated on entry) accumulating
   sufficient statistics: observed CTR, and the IPS estimate (with its standard error) of a
   target policy that always plays action 0, ``mean(1[a == 0] / p * r)``; its true value is the
   CTR, which the run checks (``|IPS - ctr| < 4 SE``).
3. **Read with pre_buffer=False** (skip with ``--no-fixed-read``) -- the same loop as
   ``iter_batches`` and the same validation, with ``pq.ParquetFile(path, pre_buffer=False)``
   spelled out here: pyarrow's default pre-buffering keeps every column chunk read so far until
   the reader is closed (apache/arrow#39808), so a reader opened with the default holds about
   the compressed file size (``iter_batches`` did until commit 09d8cd0; this phase is the
   reference it must match).
4. **Raw reads** (skip with ``--no-raw-read``) -- ``ParquetFile.iter_batches`` alone, no
   contract, with pre_buffer True and False: the decode floor, so the difference to phases 2
   and 3 is what validation costs.
5. **Summary** (skip with ``--no-summarize``) -- :func:`copyloop.stats.summarize_log`, what
   ``copyloop logs info`` runs.

Memory: per phase, the peak resident set (``VmHWM``, reset at the start of the phase through
``/proc/self/clear_refs``, which also resets ``getrusage().ru_maxrss``, after freed memory is
handed back with ``release_unused``), a 20 Hz RSS sample maximum (psutil) and the RSS at the
end; the peak and the growth of the bytes live in Arrow's pool (growth = after the last batch
minus after the first batch: about 0 when memory is bounded by the batch). The process peak
is the maximum over phases and the imports.

Run: ``.venv/bin/python bench/log_scale.py --rows 100000000 --batch 1000000 --context-dim 8
--out-dir /tmp/copyloop-scale`` (writes ``bench/results/log_scale.json`` and
``bench/results/log_scale.md``; deletes the Parquet file unless ``--keep``).

**Commands on dataset folders** (``--commands --sizes 10000000 100000000``): the commands a
user runs on a log larger than memory, each as its own process, timed (wall) with its peak
resident set (``ru_maxrss`` of that child, from ``wait4``), on a dataset folder of Parquet parts
as an export writes them:

* the folder: ``--part-rows`` rows per part, written under ``nice -n 19`` (a child process) by
  resampling the rows of a 50,000-decision uniform log of the tests' small market (24 campaigns,
  context width 28, action_probs kept) with fresh event ids and timestamps; its variants table
  inside; deleted at the end unless ``--keep``;
* ``copyloop logs info DIR`` (every row validated through the contract, ids unique across the
  parts, then one DuckDB aggregate);
* ``copyloop ope --logs DIR --policy eps.npz`` (IPW and SNIPW of an epsilon-greedy agent trained
  on 1,500 impressions, streamed; the agent's probabilities computed batch by batch);
* ``copyloop clicksim fit --logs DIR --max-rows M --members 1 --epochs 1`` (a DuckDB reservoir
  sample of M rows, then the fit);
* reference: the same IPS aggregate as raw DuckDB SQL over the folder (no validation, no
  agent: the scan floor, in this process).

Goal: every command's peak RSS <= 4 GiB at 100M rows. The results go into the ``commands``
key of ``log_scale.json`` (the single-file phases above are kept) and a section of
``log_scale.md``.
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
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from copyloop.contract import DecisionLog, DecisionLogWriter
from copyloop.stats import summarize_log

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model as _cpu_model  # noqa: E402
from _common import git_commit as _git_commit  # noqa: E402
from _common import reset_peak, ru_maxrss_bytes, status_kib  # noqa: E402

N_ACTIONS = 20
CAMPAIGN = "camp-0"
TARGET_ACTION = 0
EPOCH = np.datetime64("2026-01-01T00:00:00", "us")
MIB = 1024.0 * 1024.0
RAW = "raw pyarrow read"

try:
    import psutil

    _PROC: Any = psutil.Process()
except ImportError:  # pragma: no cover - psutil is in the venv, but keep the bench standalone
    _PROC = None


# ---- memory ------------------------------------------------------------------------------------
def current_rss_bytes() -> int:
    if _PROC is not None:
        return int(_PROC.memory_info().rss)
    kib = status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


class RssSampler:
    """Samples the RSS in a background thread; ``peak`` is the largest sample since ``start``."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self.arrow_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak = current_rss_bytes()
        self.arrow_peak = pa.total_allocated_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes())
            self.arrow_peak = max(self.arrow_peak, pa.total_allocated_bytes())

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())
        self.arrow_peak = max(self.arrow_peak, pa.total_allocated_bytes())
        return self.peak


@dataclass
class Phase:
    """One timed phase and the memory it needed."""

    name: str
    rows: int = 0
    seconds: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)  # seconds by sub-step
    peak_rss: int = 0  # VmHWM since the phase began (bytes)
    ru_maxrss: int = 0  # getrusage at the end of the phase (bytes; reset with VmHWM)
    sampled_peak_rss: int = 0  # max of 20 Hz samples (bytes)
    end_rss: int = 0  # RSS when the phase ended (bytes)
    arrow_allocated_end: int = 0  # bytes live in Arrow's memory pool when the phase ended
    arrow_peak: int = 0  # max of 20 Hz samples of the bytes live in Arrow's pool
    loadavg_1m: float = 0.0  # the machine's 1-minute load average when the phase ended
    arrow_after_batch: list[int] = field(default_factory=list)  # live Arrow bytes between batches
    extra: dict[str, Any] = field(default_factory=dict)

    def between_batches(self) -> None:
        """Record what Arrow still holds once a batch has been dropped (growth = retention)."""
        self.arrow_after_batch.append(pa.total_allocated_bytes())

    @property
    def arrow_growth(self) -> int | None:
        """Live Arrow bytes after the last batch minus after the first: ~0 when bounded."""
        a = self.arrow_after_batch
        return a[-1] - a[0] if len(a) >= 2 else None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": self.rows,
            "seconds": self.seconds,
            "rows_per_s": self.rows_per_s,
            "parts_seconds": self.parts,
            "peak_rss_bytes": self.peak_rss,
            "ru_maxrss_bytes": self.ru_maxrss,
            "sampled_peak_rss_bytes": self.sampled_peak_rss,
            "end_rss_bytes": self.end_rss,
            "arrow_allocated_end_bytes": self.arrow_allocated_end,
            "arrow_peak_bytes": self.arrow_peak,
            "loadavg_1m_at_end": self.loadavg_1m,
            "arrow_growth_bytes": self.arrow_growth,
            "arrow_after_first_batch_bytes": self.arrow_after_batch[0]
            if self.arrow_after_batch
            else None,
            "arrow_after_last_batch_bytes": self.arrow_after_batch[-1]
            if self.arrow_after_batch
            else None,
            **self.extra,
        }


@contextmanager
def measured(phase: Phase) -> Iterator[Phase]:
    # Hand back what earlier phases freed (mimalloc keeps it otherwise), so that each phase's
    # peak is its own.
    gc.collect()
    pa.default_memory_pool().release_unused()
    sampler = RssSampler()
    reset_peak()
    sampler.start()
    t0 = time.perf_counter()
    try:
        yield phase
    finally:
        phase.seconds = time.perf_counter() - t0
        phase.sampled_peak_rss = sampler.stop()
        phase.arrow_peak = sampler.arrow_peak
        hwm = status_kib("VmHWM")
        phase.ru_maxrss = ru_maxrss_bytes()
        phase.peak_rss = max(
            phase.sampled_peak_rss, phase.ru_maxrss, 0 if hwm is None else hwm * 1024
        )
        phase.end_rss = current_rss_bytes()
        phase.loadavg_1m = os.getloadavg()[0]
        phase.arrow_allocated_end = pa.total_allocated_bytes()


# ---- synthetic decisions -----------------------------------------------------------------------
ACTIONS = pa.array([f"a{i}" for i in range(N_ACTIONS)], pa.string())
CAMPAIGNS = pa.array([CAMPAIGN], pa.string())


def make_batch(
    rng: np.random.Generator, start: int, n: int, context_dim: int, ctr: float
) -> dict[str, Any]:
    """Columns of decisions ``start .. start + n`` (all vectorised; no per-row Python)."""
    ids = pa.array(np.arange(start, start + n, dtype=np.int64)).cast(pa.string())
    aidx = rng.integers(0, N_ACTIONS, size=n, dtype=np.int32)
    return {
        "event_id": pc.binary_join_element_wise("ev", ids, "-"),
        "ts": EPOCH + np.arange(start, start + n, dtype=np.int64).astype("timedelta64[ms]"),
        "campaign_id": CAMPAIGNS.take(pa.array(np.zeros(n, np.int32))),
        "context": rng.standard_normal((n, context_dim), dtype=np.float32),
        "action": ACTIONS.take(pa.array(aidx)),
        "action_index": aidx,
        "propensity": np.full(n, 1.0 / N_ACTIONS),
        "reward": (rng.random(n) < ctr).astype(np.float64),
        "policy_id": "uniform-random",
        "model_version": "1",
    }


# ---- progress ----------------------------------------------------------------------------------
class RowProgress:
    """A rich progress bar in a terminal; one log line every ~5% when piped (nohup)."""

    def __init__(self, console: Console, description: str, total: int) -> None:
        self.console = console
        self.description = description
        self.total = total
        self.done = 0
        self.t0 = time.perf_counter()
        self._next_line = 0.0
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rows"),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._progress.add_task(description, total=total, rate="")

    def __enter__(self) -> RowProgress:
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def advance(self, rows: int) -> None:
        self.done += rows
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self._progress is not None:
            self._progress.update(self._task, advance=rows, rate=f"{rate / 1e6:.2f} M rows/s")
        elif self.done >= self._next_line or self.done >= self.total:
            eta = (self.total - self.done) / rate if rate > 0 else math.nan
            self.console.print(
                f"{self.description}: {self.done:,}/{self.total:,} rows "
                f"({100 * self.done / self.total:.0f}%), {rate / 1e6:.2f} M rows/s, "
                f"{elapsed:.0f} s elapsed, ~{eta:.0f} s left, RSS "
                f"{current_rss_bytes() / MIB:,.0f} MiB (Arrow live "
                f"{pa.total_allocated_bytes() / MIB:,.0f} MiB)"
            )
            self._next_line = self.done + self.total / 20

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


# ---- phases ------------------------------------------------------------------------------------
def write_phase(args: argparse.Namespace, path: Path, console: Console) -> Phase:
    rng = np.random.default_rng(args.seed)
    phase = Phase("write: from_arrays + DecisionLogWriter")
    gen = build = write = 0.0
    with (
        measured(phase),
        DecisionLogWriter(path, args.context_dim, metadata={"bench": "log_scale"}) as writer,
        RowProgress(console, "write", args.rows) as bar,
    ):
        for start in range(0, args.rows, args.batch):
            n = min(args.batch, args.rows - start)
            t0 = time.perf_counter()
            cols = make_batch(rng, start, n, args.context_dim, args.ctr)
            t1 = time.perf_counter()
            log = DecisionLog.from_arrays(**cols)
            t2 = time.perf_counter()
            writer.write(log)
            t3 = time.perf_counter()
            gen, build, write = gen + t1 - t0, build + t2 - t1, write + t3 - t2
            del cols, log
            phase.between_batches()
            bar.advance(n)
        phase.rows = writer.rows_written
        t_close = time.perf_counter()
    # The writer's close (footer + atomic rename) runs when the `with` exits.
    phase.parts = {
        "generate": gen,
        "from_arrays (build + validate)": build,
        "DecisionLogWriter.write (encode + zstd)": write,
        "close + rename": time.perf_counter() - t_close,
    }
    return phase


@dataclass
class Stats:
    """Sufficient statistics of the CTR and of the IPS estimate of 'always action 0'."""

    n: int = 0
    reward_sum: float = 0.0
    ips_sum: float = 0.0
    ips_sq_sum: float = 0.0
    target_rows: int = 0
    context_sum: float = 0.0

    def update(self, log: DecisionLog) -> None:
        r = log.reward
        p = log.propensity
        a = log.action_index
        terms = np.where(a == TARGET_ACTION, r / p, 0.0)
        self.n += log.n_rows
        self.reward_sum += float(r.sum())
        self.ips_sum += float(terms.sum())
        self.ips_sq_sum += float(np.dot(terms, terms))
        self.target_rows += int(np.count_nonzero(a == TARGET_ACTION))
        self.context_sum += float(log.context.sum(dtype=np.float64))

    def result(self) -> dict[str, float | int]:
        n = max(self.n, 1)
        ips = self.ips_sum / n
        var = max(self.ips_sq_sum / n - ips * ips, 0.0)
        return {
            "rows": self.n,
            "ctr": self.reward_sum / n,
            "ips_always_a0": ips,
            "ips_se": math.sqrt(var / n),
            "rows_with_a0": self.target_rows,
            "context_mean": self.context_sum / n,
        }


def read_phase(args: argparse.Namespace, path: Path, console: Console) -> tuple[Phase, Stats]:
    phase = Phase("read: DecisionLog.iter_batches")
    stats = Stats()
    decode_validate = compute = 0.0
    with measured(phase), RowProgress(console, "read", args.rows) as bar:
        it = DecisionLog.iter_batches(path, batch_size=args.batch)
        while True:
            t0 = time.perf_counter()
            log = next(it, None)
            t1 = time.perf_counter()
            decode_validate += t1 - t0
            if log is None:
                break
            stats.update(log)
            compute += time.perf_counter() - t1
            rows = log.n_rows
            del log
            phase.between_batches()
            bar.advance(rows)
        phase.rows = stats.n
    phase.parts = {"decode + validate": decode_validate, "statistics": compute}
    phase.extra = {"estimates": stats.result()}
    return phase, stats


def iter_batches_no_prebuffer(path: Path, batch_size: int) -> Iterator[DecisionLog]:
    """:meth:`DecisionLog.iter_batches` with ``ParquetFile(..., pre_buffer=False)`` explicit.

    pyarrow's ``ParquetFile`` pre-buffers by default, and its read cache keeps every column
    chunk read so far until the reader is destroyed (apache/arrow#39808), so a reader opened
    with the default retains about the compressed file size. Each batch goes through the same
    public validation (``DecisionLog(table, row_offset=...)``).
    """
    pf = pq.ParquetFile(path, pre_buffer=False)
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        table = pa.Table.from_batches([batch]).replace_schema_metadata(None)
        yield DecisionLog(table, row_offset=offset)
        offset += batch.num_rows


def fixed_read_phase(args: argparse.Namespace, path: Path, console: Console) -> Phase:
    phase = Phase("read: explicit pre_buffer=False + DecisionLog")
    stats = Stats()
    with measured(phase), RowProgress(console, "read pre_buffer=False", args.rows) as bar:
        for log in iter_batches_no_prebuffer(path, args.batch):
            stats.update(log)
            rows = log.n_rows
            del log
            phase.between_batches()
            bar.advance(rows)
        phase.rows = stats.n
    phase.extra = {"estimates": stats.result()}
    return phase


def raw_read_phase(
    args: argparse.Namespace, path: Path, console: Console, *, pre_buffer: bool
) -> Phase:
    phase = Phase(f"{RAW}, pre_buffer={pre_buffer}")
    with measured(phase), RowProgress(console, "raw read", args.rows) as bar:
        pf = pq.ParquetFile(path, pre_buffer=pre_buffer)
        for batch in pf.iter_batches(batch_size=args.batch):
            rows = batch.num_rows
            phase.rows += rows
            del batch
            phase.between_batches()
            bar.advance(rows)
        del pf
    return phase


def summary_phase(args: argparse.Namespace, path: Path, console: Console) -> Phase:
    phase = Phase("summarize_log (logs info)")
    with measured(phase), console.status("summarize_log ..."):
        summary = summarize_log(path, batch_size=args.batch)
        phase.rows = int(summary["rows"])
    phase.extra = {"summary": summary}
    return phase


# ---- machine info ------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    mem_kib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "mem_total_gib": None if mem_kib is None else mem_kib / MIB,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "arrow_cpu_threads": pa.cpu_count(),
        "git_commit": _git_commit(),
    }


def parquet_info(path: Path) -> dict[str, Any]:
    md = pq.ParquetFile(path).metadata
    rg = md.row_group(0) if md.num_row_groups else None
    per_col: dict[str, int] = {}
    for i in range(md.num_row_groups):
        g = md.row_group(i)
        for j in range(g.num_columns):
            c = g.column(j)
            name = c.path_in_schema.split(".")[0]
            per_col[name] = per_col.get(name, 0) + int(c.total_compressed_size)
    return {
        "bytes": path.stat().st_size,
        "row_groups": md.num_row_groups,
        "rows_per_row_group": None if rg is None else rg.num_rows,
        "compressed_bytes_by_column": dict(sorted(per_col.items(), key=lambda kv: -kv[1])),
    }


# ---- reporting ---------------------------------------------------------------------------------
def _mib(b: int) -> str:
    return f"{b / MIB:,.0f}"


HEADER = [
    "phase",
    "rows",
    "seconds",
    "rows/s",
    "peak RSS MiB",
    "RSS at end MiB",
    "Arrow peak MiB",
    "Arrow growth MiB",
    "load avg",
]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for ph in report["phases"]:
        rows.append(
            [
                ph["name"],
                f"{ph['rows']:,}",
                f"{ph['seconds']:,.1f}",
                f"{ph['rows_per_s']:,.0f}",
                _mib(ph["peak_rss_bytes"]),
                _mib(ph["end_rss_bytes"]),
                _mib(ph["arrow_peak_bytes"]),
                "" if ph["arrow_growth_bytes"] is None else _mib(ph["arrow_growth_bytes"]),
                f"{ph['loadavg_1m_at_end']:.1f}",
            ]
        )
    return rows


def part_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for ph in report["phases"]:
        total = ph["seconds"]
        for name, s in ph["parts_seconds"].items():
            rows.append([ph["name"].split(":")[0], name, f"{s:,.1f}", f"{100 * s / total:.0f}%"])
    return rows


PART_HEADER = ["phase", "step", "seconds", "share"]


def copyloop_peak(phases: list[dict[str, Any]]) -> int:
    """Peak RSS over the phases that run copyloop's own code (not the raw pyarrow references)."""
    return max((ph["peak_rss_bytes"] for ph in phases if RAW not in ph["name"]), default=0)


def summary_lines(report: dict[str, Any]) -> list[str]:
    f, est, cfg = report["file"], report["estimates"], report["config"]
    mem = report["memory"]
    ok = "PASS" if report["ips_check_passed"] else "FAIL"
    verdicts = "; ".join(
        f"{ph['name']}: "
        + ("bounded" if ph["bounded"] else "GROWS")
        + f" ({ph['arrow_growth_bytes'] / MIB:+,.0f} MiB"
        + f" = {ph['arrow_growth_bytes'] / f['bytes']:.2f}x the file)"
        for ph in report["phases"]
        if ph["arrow_growth_bytes"] is not None
    )
    return [
        f"File: {f['bytes'] / 1e9:,.2f} GB on disk ({f['bytes'] / cfg['rows']:.1f} bytes/row), "
        f"{f['row_groups']} row groups of {f['rows_per_row_group']:,} rows, zstd.",
        "Largest columns on disk: "
        + ", ".join(
            f"{k} {v / 1e6:,.0f} MB" for k, v in list(f["compressed_bytes_by_column"].items())[:4]
        )
        + ".",
        f"Estimates: CTR {est['ctr']:.5f}; IPS of 'always a0' {est['ips_always_a0']:.5f} "
        f"± {est['ips_se']:.5f} (SE), true value = CTR {cfg['ctr']} -> "
        f"|IPS - {cfg['ctr']}| < 4 SE: {ok}.",
        f"Peak RSS of the copyloop phases (all but the raw pyarrow reads): "
        f"{mem['copyloop_peak_rss_bytes'] / MIB:,.0f} MiB; of the whole process, raw pyarrow "
        f"reference reads included: {mem['process_peak_rss_bytes'] / MIB:,.0f} MiB "
        f"(after imports {mem['after_imports_rss_bytes'] / MIB:,.0f} MiB; Arrow "
        f"{mem['arrow_pool_backend']} pool peak {mem['arrow_pool_max_bytes'] / MIB:,.0f} MiB; "
        f"machine RAM {report['machine']['mem_total_gib'] or math.nan:.1f} GiB).",
        "Bounded memory (Arrow growth = live Arrow bytes after the last batch minus after the "
        f"first, bounded if <= 5% of the file + 16 MiB): {verdicts}.",
    ]


def print_report(report: dict[str, Any], console: Console) -> None:
    t = Table(title=f"DecisionLog at scale: {report['config']['rows']:,} rows")
    for i, h in enumerate(HEADER):
        t.add_column(h, justify="left" if i == 0 else "right")
    for row in table_rows(report):
        t.add_row(*row)
    console.print(t)
    p = Table(title="where the time goes")
    for i, h in enumerate(PART_HEADER):
        p.add_column(h, justify="left" if i < 2 else "right")
    for row in part_rows(report):
        p.add_row(*row)
    console.print(p)
    for line in summary_lines(report):
        console.print(line)


def _md_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    align = ["---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    mach, cfg = report["machine"], report["config"]
    return "\n".join(
        [
            "# DecisionLog at scale",
            "",
            f"{mach['date']} · {mach['cpu_model']} · {mach['cpu_count']} CPUs · "
            f"{mach['mem_total_gib']:.1f} GiB RAM · {mach['platform']} · Python "
            f"{mach['python']} · numpy {mach['numpy']} · pyarrow {mach['pyarrow']} · commit "
            f"{mach['git_commit']}",
            "",
            f"{cfg['rows']:,} decisions in batches of {cfg['batch']:,}; context width "
            f"{cfg['context_dim']} (float32); {N_ACTIONS} actions, 1 campaign, candidates null; "
            f"reward Bernoulli({cfg['ctr']}); seed {cfg['seed']}. Peak RSS per phase = VmHWM "
            "reset at the start of the phase (and never below the 20 Hz RSS samples). Load avg = "
            "the machine's 1-minute load average at the end of the phase: above the CPU count, "
            "other processes shared the cores and the times are slower than an idle machine's.",
            "",
            _md_table(HEADER, table_rows(report)),
            "",
            _md_table(PART_HEADER, part_rows(report), left=2),
            "",
            *[f"- {line}" for line in summary_lines(report)],
            "",
            "Repeat with:",
            "",
            "```bash",
            report["command"],
            "```",
            "",
        ]
    )


# ---- commands on dataset folders ---------------------------------------------------------------
MARKET_TOML = (
    "[market]\nseed = 1\n[market.catalog]\nn_campaigns = 24\nseed = 3\n"
    "[market.population]\nn_users = 4000\n"
)
BASE_ROWS = 50_000
GIB = 1024.0**3
GOAL_RSS = 4 * GIB


def prepare_inputs(work: Path, seed: int) -> dict[str, Path]:
    """The market config, a 50k-row uniform base log (+ variants) and a saved agent."""
    from copyloop.agents import EpsilonGreedyPolicy, UniformPolicy
    from copyloop.envs import Market, MarketConfig
    from copyloop.envs.simulate import simulate

    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "market.toml"
    cfg.write_text(MARKET_TOML)
    market = Market.get(MarketConfig.from_toml(cfg))
    base = work / "base.parquet"
    if not base.exists():
        simulate(market, UniformPolicy(seed=seed), BASE_ROWS, seed=seed, out=base)
    agent = EpsilonGreedyPolicy(seed=seed)
    simulate(market, agent, 1500, seed=seed + 11)
    agent_path = work / "eps.npz"
    agent.save(agent_path)
    return {"config": cfg, "base": base, "agent": agent_path}


def generate_dataset(base: Path, out: Path, rows: int, part_rows: int, seed: int) -> None:
    """Parts of ``part_rows`` rows resampled from ``base`` (fresh event ids and timestamps)."""
    from copyloop.contract import variants_sidecar

    table = pq.read_table(base)
    schema = table.schema
    out.mkdir(parents=True, exist_ok=False)
    shutil.copy(variants_sidecar(base), out / "variants.parquet")
    rng = np.random.default_rng(seed)
    i_ev = schema.get_field_index("event_id")
    i_ts = schema.get_field_index("ts")
    for k, start in enumerate(range(0, rows, part_rows)):
        n = min(part_rows, rows - start)
        t = table.take(pa.array(rng.integers(0, table.num_rows, n)))
        ids = pa.array(np.arange(start, start + n, dtype=np.int64)).cast(pa.string())
        t = t.set_column(i_ev, schema.field(i_ev), pc.binary_join_element_wise("ev", ids, "-"))
        ts = EPOCH + np.arange(start, start + n, dtype=np.int64).astype("timedelta64[ms]")
        t = t.set_column(i_ts, schema.field(i_ts), pa.array(ts, schema.field(i_ts).type))
        pq.write_table(
            t.replace_schema_metadata(schema.metadata),
            out / f"part-{k:05d}.parquet",
            compression="zstd",
            row_group_size=1_000_000,
        )
        del t


def run_measured(cmd: list[str], console: Console) -> dict[str, Any]:
    """Run ``cmd`` as a child process: wall time, its peak RSS (``wait4``), exit code, stdout."""
    console.print("$ " + " ".join(cmd))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read())),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read())),  # type: ignore[union-attr]
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = b"".join(out_chunks).decode()
    result: dict[str, Any] = {
        "command": " ".join(cmd),
        "seconds": seconds,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "exit_code": proc.returncode,
        "loadavg_1m_at_end": os.getloadavg()[0],
    }
    try:
        result["output"] = json.loads(stdout[stdout.index("{") :]) if "{" in stdout else None
    except json.JSONDecodeError:
        result["output"] = None
    if proc.returncode != 0:
        result["stderr_tail"] = b"".join(err_chunks).decode()[-2000:]
        console.print(f"[red]exit {proc.returncode}[/]: {result['stderr_tail']}")
    console.print(
        f"  {seconds:,.1f} s, peak RSS {result['peak_rss_bytes'] / MIB:,.0f} MiB, "
        f"exit {proc.returncode}"
    )
    return result


def raw_duckdb_ips(folder: Path) -> dict[str, Any]:
    """The scan floor: CTR and an IPS-style aggregate (always slot 0) in one DuckDB SQL query
    (run in a child process by ``--reference``, which prints this as JSON)."""
    from copyloop.contract import duckdb_connection, log_files

    files = [str(f) for f in log_files(folder)]
    with duckdb_connection() as con:
        row = con.execute(
            "SELECT count(*), avg(reward), avg(CASE WHEN action_index = 0 THEN reward / "
            "propensity ELSE 0 END) FROM read_parquet(?)",
            [files],
        ).fetchall()[0]
    return {"rows": int(row[0]), "ctr": float(row[1]), "ips_always_slot0": float(row[2])}


def commands_for_size(
    args: argparse.Namespace, inputs: dict[str, Path], rows: int, console: Console
) -> dict[str, Any]:
    folder = args.out_dir / f"dataset_{rows}"
    if folder.exists():
        shutil.rmtree(folder)
    need = int(rows * 80 * 1.3)
    free = shutil.disk_usage(args.out_dir).free
    if free < need:
        raise SystemExit(f"not enough disk in {args.out_dir}: ~{need / 1e9:.0f} GB needed")
    py = sys.executable
    console.print(f"generating {rows:,} rows into {folder} (nice -n 19) …")
    gen = run_measured(
        ["nice", "-n", "19", py, __file__, "--generate", str(folder), "--rows", str(rows),
         "--part-rows", str(args.part_rows), "--seed", str(args.seed),
         "--base", str(inputs["base"])],
        console,
    )  # fmt: skip
    if gen["exit_code"] != 0:
        raise SystemExit("generation failed")
    files = sorted(folder.glob("part-*.parquet"))
    disk = sum(f.stat().st_size for f in files)
    cli = [py, "-m", "copyloop.cli"]
    sim_out = args.out_dir / f"clicksim_{rows}"
    shutil.rmtree(sim_out, ignore_errors=True)
    sim_name = f"clicksim fit (sample {args.clicksim_max_rows:,})"
    runs = {
        "logs info": [*cli, "logs", "info", str(folder), "--json"],
        "ope (ipw, snipw)": [
            *cli, "ope", "--logs", str(folder), "--policy", str(inputs["agent"]),
            "--config", str(inputs["config"]), "--json",
        ],
        sim_name: [
            *cli, "clicksim", "fit", "--logs", str(folder), "--out", str(sim_out),
            "--max-rows", str(args.clicksim_max_rows), "--members", "1", "--epochs", "1",
            "--threads", "1", "--json",
        ],
    }  # fmt: skip
    results: dict[str, Any] = {}
    for name, cmd in runs.items():
        results[name] = run_measured(cmd, console)
    results["reference: raw DuckDB IPS aggregate"] = run_measured(
        [py, __file__, "--reference", str(folder)], console
    )
    shutil.rmtree(sim_out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(folder)
    return {
        "rows": rows,
        "parts": len(files),
        "part_rows": args.part_rows,
        "bytes_on_disk": disk,
        "generate": gen,
        "commands": results,
        "deleted": not args.keep,
    }


def command_rows(sizes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for sz in sizes:
        ref = sz["commands"].get("reference: raw DuckDB IPS aggregate")
        for name, r in sz["commands"].items():
            ratio = (
                f"{r['seconds'] / ref['seconds']:,.1f}×"
                if ref is not None and ref["seconds"] > 0
                else ""
            )
            peak = r["peak_rss_bytes"]
            ok = "" if r["exit_code"] != 0 else ("yes" if peak <= GOAL_RSS else "NO")
            rows.append(
                [
                    f"{sz['rows']:,}",
                    name,
                    f"{r['seconds']:,.1f}",
                    f"{sz['rows'] / r['seconds']:,.0f}",
                    ratio,
                    f"{peak / MIB:,.0f}",
                    ok if r["exit_code"] == 0 else f"exit {r['exit_code']}",
                    f"{r['loadavg_1m_at_end']:.1f}",
                ]
            )
    return rows


COMMAND_HEADER = [
    "rows",
    "command",
    "seconds",
    "rows/s",
    "× raw DuckDB scan",
    "peak RSS MiB",
    "≤ 4 GiB",
    "load avg",
]


def command_notes(sizes: list[dict[str, Any]]) -> list[str]:
    lines = []
    for sz in sizes:
        c = sz["commands"]
        info = (c.get("logs info") or {}).get("output") or {}
        ope = (c.get("ope (ipw, snipw)") or {}).get("output") or {}
        ests = ", ".join(
            f"{e['estimator']} {e['estimate']:.5f} [{e['lower']:.5f}, {e['upper']:.5f}]"
            for e in ope.get("estimates", [])
        )
        ref = (c.get("reference: raw DuckDB IPS aggregate") or {}).get("output") or {}
        date = f" ({sz['date']})" if sz.get("date") else ""
        lines.append(
            f"{sz['rows']:,} rows{date}: {sz['parts']} parts of "
            f"{sz['part_rows']:,} rows, "
            f"{sz['bytes_on_disk'] / 1e9:,.2f} GB on disk "
            f"({sz['bytes_on_disk'] / sz['rows']:.1f} bytes/row), written in "
            f"{sz['generate']['seconds']:,.0f} s under nice 19"
            f"{' and deleted after' if sz['deleted'] else ''}; logs info counted "
            f"{info.get('rows', 0):,} rows, {info.get('campaigns', '?')} campaigns, CTR "
            f"{info.get('reward_mean') or math.nan:.5f} (DuckDB reference: "
            f"{ref.get('ctr', math.nan):.5f}); ope: {ests or 'n/a'}."
        )
    return lines


def commands_markdown(rep: dict[str, Any]) -> str:
    mach = rep["machine"]
    return "\n".join(
        [
            "## Commands on dataset folders (logs larger than memory)",
            "",
            f"{mach['date']} · {mach['cpu_model']} · {mach['cpu_count']} CPUs · "
            f"{mach['mem_total_gib']:.1f} GiB RAM · commit {mach['git_commit']}",
            "",
            "Each command is its own process; seconds = wall time (Python start and imports "
            "included), peak RSS = that process's `ru_maxrss` (from `wait4`), so DuckDB's and "
            "torch's memory count. The reference row is one raw DuckDB SQL aggregate over the "
            "same parts in a child process of the bench (no validation, no agent): "
            "the scan floor the commands are compared to (× = command seconds / reference "
            "seconds, same run). Goal: peak RSS ≤ 4 GiB at 100M rows.",
            "",
            _md_table(COMMAND_HEADER, command_rows(rep["sizes"]), left=2),
            "",
            *[f"- {line}" for line in command_notes(rep["sizes"])],
            "",
            "Repeat with:",
            "",
            "```bash",
            rep["command"],
            "```",
            "",
        ]
    )


def commands_main(args: argparse.Namespace, console: Console) -> int:
    t0 = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    inputs = prepare_inputs(args.out_dir / "inputs", args.seed)
    sizes = []
    for rows in args.sizes:
        sizes.append(commands_for_size(args, inputs, rows, console))
        write_commands(args, sizes, console, time.perf_counter() - t0)  # after every size
    shutil.rmtree(args.out_dir / "inputs", ignore_errors=True)
    failed = [n for sz in sizes for n, r in sz["commands"].items() if r["exit_code"] != 0]
    return 1 if failed else 0


def write_commands(
    args: argparse.Namespace, sizes: list[dict[str, Any]], console: Console, seconds: float
) -> None:
    json_path = args.results_dir / "log_scale.json"
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    # sizes measured by an earlier run (other row counts) stay, each with its own date
    date = machine_info()["date"]
    for sz in sizes:
        sz.setdefault("date", date)
    done = {sz["rows"] for sz in sizes}
    earlier = [sz for sz in report.get("commands", {}).get("sizes", []) if sz["rows"] not in done]
    sizes = sorted(earlier + sizes, key=lambda sz: sz["rows"])
    cmd = (
        ".venv/bin/python bench/log_scale.py --commands --sizes "
        + " ".join(str(sz["rows"]) for sz in sizes)
        + f" --part-rows {args.part_rows} --clicksim-max-rows {args.clicksim_max_rows} "
        f"--out-dir {args.out_dir}"
    )
    rep = {
        "machine": machine_info(),
        "command": cmd,
        "sizes": sizes,
        "goal_peak_rss_bytes": GOAL_RSS,
        "total_seconds": seconds,
    }
    md_path = args.results_dir / "log_scale.md"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    report["commands"] = rep
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(full_markdown(report))
    t = Table(title="commands on dataset folders")
    for i, h in enumerate(COMMAND_HEADER):
        t.add_column(h, justify="left" if i < 2 else "right")
    for row in command_rows(sizes):
        t.add_row(*row)
    console.print(t)
    console.print(f"wrote {json_path} and {md_path}")


def full_markdown(report: dict[str, Any]) -> str:
    """The single-file phases (when measured) followed by the dataset commands (when measured)."""
    parts = []
    if "phases" in report:
        parts.append(markdown(report))
    if "commands" in report:
        parts.append(commands_markdown(report["commands"]))
    return "\n".join(parts)


# ---- main --------------------------------------------------------------------------------------
def command_line(args: argparse.Namespace) -> str:
    cmd = (
        f".venv/bin/python bench/log_scale.py --rows {args.rows} --batch {args.batch} "
        f"--context-dim {args.context_dim} --out-dir {args.out_dir}"
    )
    if args.ctr != 0.03:
        cmd += f" --ctr {args.ctr}"
    if args.seed != 0:
        cmd += f" --seed {args.seed}"
    for flag in ("no_fixed_read", "no_raw_read", "no_summarize", "keep"):
        if getattr(args, flag):
            cmd += " --" + flag.replace("_", "-")
    return cmd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=100_000_000, help="decisions to write")
    p.add_argument("--batch", type=int, default=1_000_000, help="rows per batch (write and read)")
    p.add_argument("--context-dim", type=int, default=8, help="context features per decision")
    p.add_argument("--ctr", type=float, default=0.03, help="click probability of every action")
    p.add_argument(
        "--out-dir", type=Path, default=Path("/tmp/copyloop-scale"), help="where the Parquet goes"
    )
    p.add_argument(
        "--results-dir", type=Path, default=Path("bench/results"), help="JSON + Markdown output"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the Parquet file")
    p.add_argument("--no-raw-read", action="store_true", help="skip the pyarrow-only reads")
    p.add_argument(
        "--no-fixed-read", action="store_true", help="skip the validated pre_buffer=False read"
    )
    p.add_argument("--no-summarize", action="store_true", help="skip summarize_log")
    p.add_argument(
        "--commands", action="store_true", help="time the CLI commands on dataset folders"
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000],
        help="dataset rows (--commands)",
    )  # fmt: skip
    p.add_argument("--part-rows", type=int, default=2_000_000, help="rows per part file")
    p.add_argument(
        "--clicksim-max-rows", type=int, default=1_000_000, help="clicksim fit's --max-rows"
    )
    p.add_argument("--generate", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--base", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--reference", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true", help="only re-render the .md from the .json")
    args = p.parse_args(argv)
    for name in ("rows", "batch", "context_dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 < args.ctr < 1.0:
        p.error("--ctr must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped or logged: do not wrap the tables at 80 columns
        console = Console(width=160)
    if args.render:  # rewrite log_scale.md from log_scale.json (no measuring)
        path = args.results_dir / "log_scale.json"
        (args.results_dir / "log_scale.md").write_text(full_markdown(json.loads(path.read_text())))
        return 0
    if args.reference is not None:  # the child that runs the raw DuckDB aggregate
        print(json.dumps(raw_duckdb_ips(args.reference)))
        return 0
    if args.generate is not None:  # the child that writes a dataset folder (under nice)
        generate_dataset(args.base, args.generate, args.rows, args.part_rows, args.seed)
        return 0
    if args.commands:
        return commands_main(args, console)
    after_imports_hwm = (status_kib("VmHWM") or 0) * 1024
    after_imports = current_rss_bytes()

    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"log_scale_{args.rows}.parquet"
    need = int(args.rows * (4 * args.context_dim + 40) * 1.2)  # generous upper estimate
    free = shutil.disk_usage(args.out_dir).free
    console.print(
        f"writing {args.rows:,} rows to {path}: ~{need / 1e9:.1f} GB needed at most, "
        f"{free / 1e9:.1f} GB free"
    )
    if free < need:
        console.print(f"[red]not enough disk space in {args.out_dir}; choose another --out-dir")
        return 2

    t_start = time.perf_counter()
    phases = [write_phase(args, path, console)]
    file_info = parquet_info(path)
    console.print(f"wrote {file_info['bytes'] / 1e9:.2f} GB in {phases[0].seconds:.0f} s")
    read, stats = read_phase(args, path, console)
    phases.append(read)
    if not args.no_fixed_read:
        phases.append(fixed_read_phase(args, path, console))
    if not args.no_raw_read:
        for pre_buffer in (True, False):
            phases.append(raw_read_phase(args, path, console, pre_buffer=pre_buffer))
    if not args.no_summarize:
        phases.append(summary_phase(args, path, console))
    if not args.keep:
        path.unlink()

    est = stats.result()
    slack = 0.05 * file_info["bytes"] + 16 * MIB
    phase_dicts = [ph.to_dict() for ph in phases]
    for d in phase_dicts:
        growth = d["arrow_growth_bytes"]
        d["bounded"] = None if growth is None else bool(growth <= slack)
    same_estimates = all(
        d["estimates"] == est for d in phase_dicts if "estimates" in d and d["rows"] == est["rows"]
    )
    peaks = [after_imports_hwm, *(ph.peak_rss for ph in phases)]
    report: dict[str, Any] = {
        "config": {
            "rows": args.rows,
            "batch": args.batch,
            "context_dim": args.context_dim,
            "ctr": args.ctr,
            "seed": args.seed,
            "actions": N_ACTIONS,
            "campaigns": 1,
            "parquet": str(path),
            "kept": args.keep,
        },
        "machine": machine_info(),
        "command": command_line(args),
        "file": file_info,
        "phases": phase_dicts,
        "validated_reads_agree": same_estimates,
        "estimates": est,
        "ips_check_passed": abs(est["ips_always_a0"] - args.ctr) < 4 * est["ips_se"]
        and est["rows"] == args.rows
        and same_estimates,
        "memory": {
            "after_imports_rss_bytes": after_imports,
            "process_peak_rss_bytes": max(peaks),
            "copyloop_peak_rss_bytes": copyloop_peak(phase_dicts),
            "peak_rss_by_phase_bytes": {ph.name: ph.peak_rss for ph in phases},
            "arrow_pool_backend": pa.default_memory_pool().backend_name,
            "arrow_pool_max_bytes": pa.default_memory_pool().max_memory(),
            "note": "per-phase peaks are VmHWM/ru_maxrss reset via /proc/self/clear_refs at the "
            "start of each phase; the process peak is their maximum and the pre-bench peak",
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    print_report(report, console)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / "log_scale.json"
    md_path = args.results_dir / "log_scale.md"
    if json_path.exists():  # keep the dataset-commands results of an earlier --commands run
        old = json.loads(json_path.read_text())
        if "commands" in old:
            report["commands"] = old["commands"]
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(full_markdown(report))
    kept = f"; kept {path}" if args.keep else f"; deleted {path}"
    console.print(f"wrote {json_path} and {md_path} in {report['total_seconds']:.0f} s{kept}")
    return 0 if report["ips_check_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
