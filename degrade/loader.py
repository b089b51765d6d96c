"""Decoding batches of source keys in DataLoader worker processes, in order, and degrading them."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from degrade.engine import PairBatch, degrade_faces
from degrade.recipe import Recipe
from degrade.sources import Faces, Source, SourceError
from degrade.workers import SharedMemoryFull, in_shared_memory, named_worker_losses, prepare_worker


# Batches each decoding worker has under way or waiting to be taken (the DataLoader's own default is 2).
PREFETCH = 4
# How long a decoding worker waits for the consumer to take a batch out of the slot it needs next
# before it gives up: the consumer takes every batch as it arrives, so only a stalled one hits this.
SLOT_WAIT_SECONDS = 600.0


@dataclasses.dataclass
class _InSlot:
    """A decoded batch whose HQ faces lie in slot ``slot`` of decoding worker ``worker``. The
    slot's tensor travels along only the first time the slot is used; after that the consumer
    has it mapped, and the batch crosses between the processes as a few small tensors (sent
    inside the pickle: ``workers.INLINE_TENSOR_BYTES``)."""

    worker: int
    slot: int
    key: torch.Tensor       # (M,) int64, the faces in the slot's first M rows
    identity: torch.Tensor  # (M,) int64
    skipped: list
    fixes: collections.Counter
    images: torch.Tensor | None  # the slot, (capacity, 3, S, S) uint8 in shared memory, or None


class SlotRing:
    """Shared-memory batches that the decoding workers decode HQ faces into and reuse, for a
    consumer that copies every batch away (to a GPU) as it arrives.

    A batch returned from a DataLoader worker the usual way is decoded into fresh memory, copied
    into a fresh shared-memory segment, sent as a file descriptor, mapped, read and unmapped: page
    faults and system calls on every batch, on both sides. Here each worker makes ``depth`` slots,
    the first time it needs each, sends each to the consumer once and decodes into them (the
    sources' ``load(keys, out=slot)``). On the 2-core machine, LFW x8 as a RecordIO, batches of
    1,024, 2 workers, the consumer copying each batch into one buffer as a copy to a GPU would:
    17,400-18,800 faces/s the usual way, 27,700-31,000 through the ring (docs/benchmarks.md).

    ``free`` (workers x depth, shared) says which slots the consumer has emptied. With ``depth``
    one more than the batches a worker may have under way, the DataLoader hands a worker a new
    batch only after the consumer has taken the one that last used its slot, so no worker waits
    in practice; ``free`` makes that certain whatever the scheduling.
    """

    def __init__(self, workers: int, capacity: int, depth: int = PREFETCH + 1) -> None:
        self.capacity, self.depth = capacity, depth
        self.free = torch.ones(workers, depth, dtype=torch.bool).share_memory_()
        self._made: dict[int, torch.Tensor] = {}                # in a worker: its slots
        self._used = 0                                          # in a worker: batches put so far
        self._mapped: dict[tuple[int, int], torch.Tensor] = {}  # in the consumer: every worker's slots

    def load(self, source: Source, keys: torch.Tensor) -> _InSlot:
        """In a decoding worker: decode ``keys`` into this worker's next slot once the consumer has
        emptied it. A SourceError leaves the slot as it was."""
        worker, slot = get_worker_info().id, self._used % self.depth
        deadline = time.monotonic() + SLOT_WAIT_SECONDS
        while not self.free[worker, slot]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"decoding worker {worker}: slot {slot} not taken by the consumer "
                                   f"in {SLOT_WAIT_SECONDS:.0f} s")
            time.sleep(0.001)
        first_use = slot not in self._made
        if first_use:
            self._made[slot] = in_shared_memory(torch.empty(self.capacity, 3, source.size, source.size, dtype=torch.uint8))
        faces = source.load(keys, out=self._made[slot])
        if len(faces.key) and faces.hq.data_ptr() != self._made[slot].data_ptr():  # a source that ignores `out`
            self._made[slot][:len(faces.key)].copy_(faces.hq)
        self.free[worker, slot] = False
        self._used += 1
        return _InSlot(worker, slot, faces.key, faces.identity, faces.skipped, faces.fixes,
                       self._made[slot] if first_use else None)

    def take(self, item: _InSlot, device: torch.device) -> Faces:
        """In the consumer: the batch with its HQ faces copied to ``device``; the slot is free again
        when this returns (a copy from pageable memory to a GPU has read its source by then)."""
        if item.images is not None:
            self._mapped[item.worker, item.slot] = item.images
        hq = self._mapped[item.worker, item.slot][:len(item.key)].to(device, non_blocking=True, copy=True)
        self.free[item.worker, item.slot] = True
        return Faces(item.key, item.identity, hq, item.skipped, item.fixes)


class _KeyBatches(Dataset):
    """Item i = ``then(source.load(batches[i]))``, or with a ring the batch decoded into one of its
    slots; in a worker, its large tensors already in shared memory (:func:`in_shared_memory`). A
    SourceError or SharedMemoryFull is returned (not raised) so the consuming process can raise it
    with its own message rather than a worker traceback."""

    def __init__(self, source: Source, batches: Sequence[torch.Tensor], then: Callable | None = None,
                 ring: SlotRing | None = None) -> None:
        self.source, self.batches, self.then, self.ring = source, batches, then, ring

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        try:
            if self.ring is not None:
                return self.ring.load(self.source, self.batches[index])
            faces = self.source.load(self.batches[index])
            made = faces if self.then is None else self.then(faces)
            return made if get_worker_info() is None else in_shared_memory(made)
        except (SourceError, SharedMemoryFull) as error:
            return error


def _as_is(item):
    return item


def decoded_batches(source: Source, batches: Sequence[torch.Tensor], num_workers: int = 0,
                    pin_memory: bool = False, then: Callable | None = None,
                    to: torch.device | None = None) -> Iterator:
    """Yield ``source.load(keys)`` for each key batch, in order, decoded by ``num_workers`` processes.

    Works for any object with a ``load(keys)`` method whose result has ``pin_memory()``. With
    ``then`` (a picklable callable), the workers yield ``then(faces)`` instead. With ``to`` (and
    neither ``then`` nor ``pin_memory``; ``source`` a :class:`Source`), each batch's HQ faces come
    on that device, passed from the workers through a :class:`SlotRing`.
    """
    if to is not None and (then is not None or pin_memory):
        raise ValueError("decoded_batches: `to` moves the decoded faces themselves; give it without `then` or `pin_memory`")
    ring = None
    if to is not None and num_workers > 0:
        ring = SlotRing(num_workers, capacity=max((len(keys) for keys in batches), default=1))
    items = _KeyBatches(source, batches, then, ring)
    if num_workers == 0:
        stream = (items[i] for i in range(len(items)))
    else:  # the DataLoader pins on a thread of its own, beside the loop that consumes the batches
        stream = named_worker_losses(DataLoader(items, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                                                prefetch_factor=PREFETCH, pin_memory=pin_memory,
                                                worker_init_fn=prepare_worker))
    for item in stream:
        if isinstance(item, (SourceError, SharedMemoryFull)):
            raise item
        if ring is not None:
            yield ring.take(item, to)
        elif to is not None:
            yield dataclasses.replace(item, hq=item.hq.to(to, non_blocking=True))
        else:
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
    they are copied to it; without, they are copied to it from the workers' :class:`SlotRing`.
    """
    device = torch.device(device)
    if device.type == "cpu" and num_workers > 0:
        yield from decoded_batches(source, batches, num_workers, then=_Degrade(recipe, seed, finish))
        return
    pinned = pin_memory and device.type == "cuda"
    for faces in decoded_batches(source, batches, num_workers, pin_memory=pinned, to=None if pinned else device):
        yield finish(faces, degrade_faces(recipe, faces, device, seed))
