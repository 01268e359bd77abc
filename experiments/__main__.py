"""``python -m copyloop.experiments CONFIG --out DIR [--workers N] [--overwrite]
[--backend process|ray] [--ray-address ADDRESS]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Run an experiment config and print its summary (see :mod:`copyloop.experiments.runner`)."""
    from copyloop.experiments.runner import run_experiment
    from copyloop.experiments.summary import summary_text

    ap = argparse.ArgumentParser(
        description="Compare agents on the copy market: agents × seeds × market variants, in "
        "parallel processes."
    )
    ap.add_argument("config", help="experiment TOML, or a shipped config name (smoke, ...)")
    ap.add_argument("--out", required=True, help="output folder (new or empty)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default min(2, CPUs))")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ap.add_argument(
        "--backend", choices=("process", "ray"), default="process", help="where the runs go"
    )
    ap.add_argument("--ray-address", default=None, help="Ray cluster (--backend ray)")
    args = ap.parse_args(argv)
    result = run_experiment(
        args.config,
        args.out,
        workers=args.workers,
        overwrite=args.overwrite,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    print(summary_text(result))
    print(f"wrote {result.out_dir} in {result.elapsed_s:.1f} s")


if __name__ == "__main__":
    main()
