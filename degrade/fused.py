"""Whether the single-pass Triton kernels of :mod:`degrade.triton_kernels` run for a tensor.

They run on CUDA tensors when Triton is installed and the GPU is one Triton compiles for
(compute capability 7.0 or newer); everywhere else the torch code they stand in for runs.
``DEGRADE_TRITON=0`` in the environment turns them off (read once, at the first call).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch


@functools.lru_cache(maxsize=1)
def _triton_kernels() -> ModuleType | None:
    if os.environ.get("DEGRADE_TRITON", "1") == "0":
        return None
    try:
        from degrade import triton_kernels
    except ImportError:
        return None
    return triton_kernels


@functools.lru_cache(maxsize=8)
def _capable(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (7, 0)


def kernels_for(tensor: torch.Tensor) -> ModuleType | None:
    """:mod:`degrade.triton_kernels` if its kernels run on ``tensor``'s device, else None."""
    if not tensor.is_cuda or not _capable(tensor.device):
        return None
    return _triton_kernels()
