"""Decoding batches of source keys in DataLoader worker processes, in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from degrade.sources import Faces, Source


class _KeyBatches(Dataset):
    def __init__(self, source: Source, batches: Sequence[torch.Tensor]) -> None:
        self.source, self.batches = source, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Faces:
        return self.source.load(self.batches[index])


def _as_is(faces: Faces) -> Faces:
    return faces


def decoded_batches(source: Source, batches: Sequence[torch.Tensor], num_workers: int = 0,
                    pin_memory: bool = False) -> Iterator[Faces]:
    """Yield ``source.load(keys)`` for each key batch, in order, decoded by ``num_workers`` processes."""
    if num_workers == 0:
        for keys in batches:
            faces = source.load(keys)
            yield _pinned(faces) if pin_memory else faces
        return
    loader = DataLoader(_KeyBatches(source, batches), batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                        prefetch_factor=4, persistent_workers=False)
    for faces in loader:
        yield _pinned(faces) if pin_memory else faces


def _pinned(faces: Faces) -> Faces:
    faces.hq = faces.hq.pin_memory()
    return faces
