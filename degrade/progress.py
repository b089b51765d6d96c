"""Progress bars that suit a terminal and a log file alike."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm

# Seconds between a bar's lines when it writes to a file (a Slurm log, `nohup ... > log`, CI).
# tqdm's default of 0.1 s appends ten lines a second there, about 75 bytes each: 65 MB a day of training.
LOG_INTERVAL_S = 30.0


def progress_bar(*, file: TextIO | None = None, **options) -> tqdm:
    """A tqdm bar on ``file`` (default stderr) taking tqdm's ``options``. In a terminal it redraws up
    to ten times a second; written to anything else, at most every :data:`LOG_INTERVAL_S` seconds
    (its first and last lines always), unless ``TQDM_MININTERVAL`` in the environment says otherwise.
    Postfixes set on it should pass ``refresh=False``: a forced refresh writes whatever the interval."""
    stream = sys.stderr if file is None else file
    if not stream.isatty() and "TQDM_MININTERVAL" not in os.environ:
        options.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(file=stream, **options)
