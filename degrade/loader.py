"""Decoding batches of source keys in DataLoader worker processes, in order, and degrading them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from degrade.engine import PairBatch, degrade_faces, prepare_cpu_worker
from degrade.recipe import Recipe
from degrade.sources import Faces, Source, SourceError


class _KeyBatches(Dataset):
    """Item i = ``then(source.load(batches[i]))``; a SourceError is returned (not raised) so the
    consuming process can raise it with its own message rather than a worker traceback."""

    def __init__(self, source: Source, batches: Sequence[torch.Tensor], then: Callable | None = None) -> None:
        self.source, self.batches, self.then = source, batches, then

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        try:
            faces = self.source.load(self.batches[index])
        except SourceError as error:
            return error
        return faces if self.then is None else self.then(faces)


def _as_is(item):
    return item


def _prepare_worker(worker_id: int) -> None:
    """Before a decoding worker's first batch: one torch thread, malloc keeping freed blocks (the
    demo source draws a batch of 256 faces in 1.7 against 6.6 ms per face on one core)."""
    prepare_cpu_worker()


def decoded_batches(source: Source, batches: Sequence[torch.Tensor], num_workers: int = 0,
                    pin_memory: bool = False, then: Callable | None = None) -> Iterator:
    """Yield ``source.load(keys)`` for each key batch, in order, decoded by ``num_workers`` processes.

    Works for any object with a ``load(keys)`` method whose result has ``pin_memory()``. With
    ``then`` (a picklable callable), the workers yield ``then(faces)`` instead.
    """
    items = _KeyBatches(source, batches, then)
    if num_workers == 0:
        stream = (items[i] for i in range(len(items)))
    else:  # the DataLoader pins on a thread of its own, beside the loop that consumes the batches
        stream = DataLoader(items, batch_size=None, num_workers=num_workers, collate_fn=_as_is, prefetch_factor=4,
                            pin_memory=pin_memory, worker_init_fn=_prepare_worker)
    for item in stream:
        if isinstance(item, SourceError):
            raise item
        yield item.pin_memory() if pin_memory and num_workers == 0 else item


def _as_tuple(faces: Faces, pairs: PairBatch) -> tuple[Faces, PairBatch]:
    return faces, pairs


@dataclasses.dataclass
class _Degrade:
    """Degrade decoded faces on the CPU, in the worker that decoded them, and ``finish`` there."""

    recipe: Recipe
    seed: int | None
    finish: Callable

    def __call__(self, faces: Faces):
        return self.finish(faces, degrade_faces(self.recipe, faces, "cpu", self.seed))


def pair_batches(recipe: Recipe, source: Source, batches: Sequence[torch.Tensor], device: str | torch.device = "cpu",
                 seed: int | None = None, num_workers: int = 0, finish: Callable = _as_tuple,
                 pin_memory: bool = True) -> Iterator:
    """Each key batch decoded and degraded, in order: ``finish(the decoded faces, their pairs on
    ``device``)``, by default the two as a tuple.

    ``num_workers`` processes decode. On a CPU they also degrade what they decoded, each with one
    torch thread: processes scale over the cores where the threads of one process do not (every
    op call holds the GIL between kernels of a few microseconds; `degrade bench --device cpu`).
    ``finish`` (picklable) runs there too, so work on the pairs such as laying them out for
    writing is spread over the workers. On a GPU the engine and ``finish`` run in this process,
    and with ``pin_memory`` the decoded batches are pinned (by a thread of the DataLoader) before
    they are copied to it; without, they are copied from the workers' shared memory as they come.
    """
    device = torch.device(device)
    if device.type == "cpu" and num_workers > 0:
        yield from decoded_batches(source, batches, num_workers, then=_Degrade(recipe, seed, finish))
        return
    for faces in decoded_batches(source, batches, num_workers, pin_memory=pin_memory and device.type == "cuda"):
        yield finish(faces, degrade_faces(recipe, faces, device, seed))
