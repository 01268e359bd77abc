"""``python -m copyloop.experiments CONFIG --out DIR [--workers N] [--overwrite]``."""

from __future__ import annotations

from copyloop.experiments.runner import main

if __name__ == "__main__":
    main()
