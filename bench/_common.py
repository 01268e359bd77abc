"""Helpers shared by the benchmark commands: where they run and at which commit."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # a copy of the tree without .git (a lent GPU machine): the caller may name the commit
        return os.environ.get("COPYLOOP_COMMIT")
    return f"{out}{'-dirty' if dirty else ''}"


def host_info() -> dict[str, Any]:
    """When and where a benchmark runs: date, platform, CPU, cores, Python, commit."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }


def status_kib(key: str) -> int | None:
    """A ``kB`` line of /proc/self/status (``VmRSS``, ``VmHWM``), in KiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def ru_maxrss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(v) if sys.platform == "darwin" else int(v) * 1024


def run_limited(blas_threads: int, run: Any, *args: Any) -> Any:
    """``run(*args)`` with BLAS held to ``blas_threads`` threads (0 = no limit)."""
    if blas_threads <= 0:
        return run(*args)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return run(*args)


def write_results(out_dir: Any, name: str, report: dict[str, Any], md: str, console: Any) -> None:
    """Write ``<name>.json`` (strict JSON) and ``<name>.md`` into ``out_dir`` and say so."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    md_path.write_text(md)
    console.print(
        f"wrote {json_path} and {md_path} in {report['total_seconds']:.0f} s; "
        f"all goals passed: {report['all_goals_passed']}"
    )
