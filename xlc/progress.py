"""Progress bars for the steps that take more than a few seconds: tqdm on standard error, never standard output.

One switch for all of them: `XLC_PROGRESS=0` in the environment turns them off. The CLI sets it for `--json`
(`quiet()`), and the processes a run starts (a local Ray and its workers, torchrun ranks) inherit it. Ranks
other than 0 (`RANK`, set by torchrun and by Ray Train) draw none, so a multi-rank run shows one bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

SWITCH = "XLC_PROGRESS"


def quiet() -> None:
    """No progress bars in this process or the processes it starts from now on."""
    os.environ[SWITCH] = "0"


def progress(iterable: Iterable | None = None, desc: str = "", total: float | None = None, **options) -> tqdm:
    """`tqdm(iterable, desc=desc, total=total, **options)` on stderr, drawn only once the step has run 2 s and
    cleared when done; disabled when quiet or not rank 0. Without `iterable`, advance it with `.update(n)`."""
    off = os.environ.get(SWITCH) == "0" or os.environ.get("RANK", "0") != "0"
    # A log file (a Ray worker's, CI's) keeps every redraw: there, one every 30 s instead of 10 a second.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, disable=off, delay=2.0,
                mininterval=interval, **options)
