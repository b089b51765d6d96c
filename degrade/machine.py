"""What the machine lets this process use (imported by the CLI before torch: torch is imported only
by the function that needs it)."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from degrade.text import counted

if TYPE_CHECKING:
    import torch


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity set where the OS keeps one (Linux), which
    ``taskset``, a Slurm job's CPU binding or a container's CPU set make smaller than the machine;
    else every core. ``os.cpu_count()`` counts the machine's: a job given 8 of a node's 128 cores
    started 16 decoding workers on its 8."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def out_of_space(error: BaseException) -> bool:
    """Whether ``error`` is a write that found its disk full or its owner's quota spent (an HPC home
    folder's, where the datasets cache lives by default): room to make, not a file to mend."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def missing_cuda(device: torch.device) -> str | None:
    """Why the CUDA ``device`` cannot be used in this process (CUDA not available: a CPU build of
    torch, no driver; or fewer devices than its index), else None. Imports torch."""
    import torch

    if not torch.cuda.is_available():
        return f"CUDA is not available here (torch {torch.__version__})"
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        return f"this machine has {counted(count, 'CUDA device')}, from cuda:0"
    return None
