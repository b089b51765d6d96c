"""Face sources: ``demo`` (synthetic) or a folder of identity sub-folders."""

from __future__ import annotations

from typing import Protocol

import torch

from degrade.sources.folder import SourceError


class Source(Protocol):
    """What the engine needs of a source: a length and batched decoding by key."""

    name: str

    def __len__(self) -> int: ...

    def identity_name(self, identity: int) -> str: ...

    def load_batch(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) int64 keys -> ((N, 3, S, S) uint8 RGB, (N,) int64 identity indices)."""
        ...


def open_source(spec: str, size: int = 112) -> Source:
    """``demo`` for the built-in synthetic faces, otherwise a folder path."""
    if spec == "demo":
        from degrade.sources.demo import DemoSource

        return DemoSource(size=size)
    from degrade.sources.folder import FolderSource

    return FolderSource(spec, size=size)


__all__ = ["Source", "SourceError", "open_source"]
