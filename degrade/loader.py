"""Decoding batches of source keys in DataLoader worker processes, in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from degrade.sources import Faces, Source, SourceError


class _KeyBatches(Dataset):
    """Item i = ``source.load(batches[i])``; a SourceError is returned (not raised) so the
    consuming process can raise it with its own message rather than a worker traceback."""

    def __init__(self, source: Source, batches: Sequence[torch.Tensor]) -> None:
        self.source, self.batches = source, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Faces | SourceError:
        try:
            return self.source.load(self.batches[index])
        except SourceError as error:
            return error


def _as_is(item):
    return item


def decoded_batches(source: Source, batches: Sequence[torch.Tensor], num_workers: int = 0,
                    pin_memory: bool = False) -> Iterator:
    """Yield ``source.load(keys)`` for each key batch, in order, decoded by ``num_workers`` processes.

    Works for any object with a ``load(keys)`` method whose result has ``pin_memory()``.
    """
    items = _KeyBatches(source, batches)
    stream = (items[i] for i in range(len(items))) if num_workers == 0 else DataLoader(
        items, batch_size=None, num_workers=num_workers, collate_fn=_as_is, prefetch_factor=4)
    for item in stream:
        if isinstance(item, SourceError):
            raise item
        yield item.pin_memory() if pin_memory else item
