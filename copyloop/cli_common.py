"""What every ``copyloop`` command shares: consoles, progress bars, errors and exit codes.

The exit codes are one table for every command (also in ``docs/cli.md``):

====  =========================================================================================
code  meaning
====  =========================================================================================
0     success (``ope gate``: promote)
1     ``ope gate`` and ``agent eval`` only: hold — the candidate did not clear the gate
2     bad input or usage: a missing or malformed file, a bad option, data that breaks the
      contract; the message names what was wrong and how to fix it; nothing was written
3     internal error (a bug in copyloop): a one-line message, the traceback saved to a file
      whose path is printed
130   interrupted (Ctrl-C); nothing half-written is left
143   terminated (SIGTERM, as sent by ``timeout``, systemd, Kubernetes); nothing half-written
====  =========================================================================================

Commands raise ordinary exceptions; :class:`CopyloopGroup` (the root command's class) maps them
to these codes in one place, so a command body never decides an exit code by itself except
``ope gate``'s hold.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

console = Console()
err = Console(stderr=True)


class ExitCode(IntEnum):
    """The CLI's exit codes (see the module docstring)."""

    OK = 0
    HOLD = 1
    BAD_INPUT = 2
    INTERNAL = 3
    INTERRUPTED = 130
    TERMINATED = 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that ``finally`` blocks clean up, as on Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def handle_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration (main thread only)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (exit 2) rather than a bug (exit 3).

    Project errors derive from ``ValueError`` (``LogValidationError``, ``ConfigError``,
    ``UnreadableFileError``, …); missing files, folders and permissions are ``OSError``s.
    """
    return (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    )


# Library messages name Python parameters in backticks (`n_boot`); on the command line the
# user typed a flag. A command's own parameter names map to its flags; a few library names that
# differ from the flag are listed here.
_PARAM_ALIASES: dict[str, str] = {"kind": "reward_model"}  # RewardModel(kind=...) ← --reward-model


def flag_names(message: str, command: Any) -> str:
    """Rewrite `` `param` `` and ``param=value`` in ``message`` to ``command``'s flags."""
    if command is None:
        return message
    flags: dict[str, str] = {}
    for p in command.params:
        if getattr(p, "param_type_name", "") == "option" and p.name:
            long = [o for o in p.opts if o.startswith("--")]
            if long:
                flags[p.name] = long[0]
    for lib, opt in _PARAM_ALIASES.items():
        if opt in flags and lib not in flags:
            flags[lib] = flags[opt]

    def tick(m: re.Match[str]) -> str:
        return flags[m.group(1)] if m.group(1) in flags else m.group(0)

    def kwarg(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if name not in flags:
            return m.group(0)
        return flags[name] if value == "True" else f"{flags[name]} {value}"

    message = re.sub(r"`([a-z_][a-z0-9_]*)`", tick, message)
    return re.sub(r"\b([a-z_][a-z0-9_]*)=('[^']*'|\S+)", kwarg, message)


def crash_dir() -> Path:
    """Where tracebacks of internal errors go (``$COPYLOOP_CACHE/crash``)."""
    base = Path(os.environ.get("COPYLOOP_CACHE", Path.home() / ".cache" / "copyloop"))
    return base / "crash"


def save_traceback(exc: BaseException) -> Path | None:
    """Write the traceback and command line of an internal error; None if that fails too."""
    try:
        d = crash_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"copyloop-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        path.write_text(f"command: {' '.join(sys.argv)}\n\n{text}", encoding="utf-8")
        return path
    except OSError:
        return None


def print_error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class CopyloopGroup(TyperGroup):
    """The root command: maps every command's exceptions to the one exit-code table."""

    def invoke(self, ctx: Any) -> Any:
        with handle_sigterm():
            try:
                return super().invoke(ctx)
            except (typer.Exit, typer.Abort, typer.TyperException):
                raise  # exit codes decided already, and click's usage errors (exit 2)
            except KeyboardInterrupt:
                print_error("interrupted — nothing half-written was left")
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            except Terminated:
                print_error("terminated (SIGTERM) — nothing half-written was left")
                raise typer.Exit(ExitCode.TERMINATED) from None
            except BrokenPipeError:
                # the reader went away (``copyloop … | head``): not an error of ours; point
                # stdout at /dev/null so the interpreter's final flush stays quiet too
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                raise typer.Exit(ExitCode.OK) from None
            except user_error_types() as e:
                print_error(flag_names(str(e), _leaf(e)))
                raise typer.Exit(ExitCode.BAD_INPUT) from None
            except Exception as e:
                where = save_traceback(e)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                print_error(
                    f"internal error: {type(e).__name__}{': ' + first if first else ''} — "
                    + (f"the traceback is in {where}; " if where else "")
                    + "please report it"
                )
                raise typer.Exit(ExitCode.INTERNAL) from None


def _leaf(exc: BaseException) -> Any:
    """The command whose body raised ``exc``: the deepest ``Command.invoke`` frame in its
    traceback (after the exception, click has already popped that command's context)."""
    leaf = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        me = frame.f_locals.get("self") if frame.f_code.co_name == "invoke" else None
        if me is not None and hasattr(me, "params") and hasattr(me, "callback"):
            leaf = me  # a (typer-vendored) click Command or Group
    return leaf


def fail(message: str) -> typer.Exit:
    """Print a bad-input error and return the exit to raise (``raise fail("…")``)."""
    print_error(message)
    return typer.Exit(code=ExitCode.BAD_INPUT)


@contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``tick(done)``."""
    with Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as prog:
        task = prog.add_task(what, total=total)
        yield lambda done: prog.update(task, completed=done)


def progress_with_info() -> Progress:
    """A rich progress bar with time remaining and a free-text ``info`` field (generator)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
    )


def json_text(data: Any) -> str:
    """Strict JSON text: non-finite floats become ``null`` (``-Infinity`` is not JSON)."""
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False)


def print_json(data: Any) -> None:
    """Strict JSON on stdout (see :func:`json_text`)."""
    sys.stdout.write(json_text(data) + "\n")


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", None) == 0:
        return _finite(x.item())
    return x


def market(
    config: Path | None, session_length: int | None = None, *, world: str | None = None
) -> Any:
    """The market of a config file (or the defaults), built once and cached; ``world``
    (``"v1"``/``"v2"``) overrides the click world's version."""
    from dataclasses import replace

    from copyloop.envs import Market, MarketConfig

    cfg = MarketConfig.from_toml(config) if config is not None else MarketConfig()
    if world is not None:
        cfg = replace(cfg, world=replace(cfg.world, version=world))  # type: ignore[arg-type]
    with err.status("building the market (catalog from the real ad corpus, MiniLM embeddings)…"):
        m = Market.get(cfg)
    return m if session_length is None else m.with_session_length(session_length)


def split_list(s: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(c.strip() for c in s.split(",") if c.strip())
