"""Streaming pairs into training: batches made on the fly (or read from a build), rank-aware.

    stream = PairStream.from_source(load_recipe("maug"), open_source("faces/"), batch_size=512,
                                    device="cuda", num_workers=8)
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for batch in stream:          # {"hq", "lq": uint8 (N, 3, S, S) on the device, "identity", "key", "params"}
            ...                       # native-size recipes add "lq_side": (N,) side of each LQ in its canvas
            ...

HQ faces are decoded as uint8 by DataLoader worker processes and degraded on the device in
the consuming process (on a CPU, in the workers themselves), with no disk in between;
``PairStream.from_dataset`` reads the same pairs from a built dataset instead. Under
``torch.distributed`` each rank gets an equal number of batches (the remainder of an epoch is
dropped), its batch b being global batch ``b * world_size + rank`` of that epoch's shuffled order
(rank and world size read from the process group when the stream is made, so make it after joining);
``start_step`` resumes mid-epoch. Inputs that cannot be read are left out of their batch; a batch
left with none fails with a ``SourceError`` naming one. Because params are keyed by sample, a
sample's LQ does not depend on ranks, workers or order. Made on the fly, each epoch draws every
sample's degradation afresh (epoch 0 with the recipe seed, so it holds a build's pairs; epoch e with
:func:`degrade.keyed.epoch_seed`); read from a build, every epoch gets the build's one draw.
On a GPU the next batches are made ahead by a thread on their own CUDA stream (see
:func:`prefetched`), so the engine's host work never leaves the training stream idle.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from degrade.distributed import launched_ranks, rank_and_world
from degrade.engine import PairBatch, checked_arguments
from degrade.keyed import MAX_SEED, epoch_seed
from degrade.loader import decoded_batches, pair_batches
from degrade.recipe import Recipe
from degrade.sources import Source, SourceError
from degrade.text import counted, every


class PairStream:
    """An iterable of batches of pairs on ``device``; see the module docstring.

    Args:
        recipe: degrades the faces (ignored when reading a build).
        source: anything with ``__len__`` and ``load(keys)`` (a face source or a built dataset).
        batch_size: pairs per batch per rank (before skipped inputs).
        device: where batches are made and yielded.
        seed: recipe seed of epoch 0 (default the recipe's); later epochs draw with ``epoch_seed(seed, epoch)``.
        shuffle, shuffle_seed: epoch order, a permutation drawn from (shuffle_seed, epoch).
        num_workers: DataLoader processes decoding.
        rank, world_size: default from torch.distributed when initialised, else 0 and 1.
        attributes: an Attributes table whose values join each on-the-fly batch as ``attributes``
            (N, A), NaN where unknown; a build's own attributes column is used when present.
    """

    def __init__(self, recipe: Recipe | None, source, *, batch_size: int, device: str | torch.device = "cpu",
                 seed: int | None = None, shuffle: bool = True, shuffle_seed: int = 0, num_workers: int = 0,
                 rank: int | None = None, world_size: int | None = None, degrade_on_the_fly: bool = True,
                 attributes=None) -> None:
        self.device = checked_arguments("PairStream", recipe, source, device, attributes)
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"PairStream: batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        for name, value in (("seed", seed), ("shuffle_seed", shuffle_seed)):
            if value is not None and not 0 <= value <= MAX_SEED:
                raise ValueError(f"PairStream: {name} {value} is outside [0, {MAX_SEED}]")
        self.recipe, self.source, self.batch_size = recipe, source, batch_size
        self.seed, self.shuffle, self.shuffle_seed, self.num_workers = seed, shuffle, shuffle_seed, num_workers
        if rank is None or world_size is None:
            rank, world_size = rank_and_world()
            if world_size == 1 and launched_ranks() > 1:
                warnings.warn(f"PairStream: torchrun started {launched_ranks()} ranks, but no process group is "
                              "initialised: this rank streams every batch of each epoch, as the others do; make the "
                              "stream after init_process_group (or degrade.distributed.join_torchrun), or give it "
                              "rank and world_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"PairStream: rank {rank} of world_size {world_size}; a rank is 0 ... world_size - 1")
        self.rank, self.world_size = rank, world_size
        self.degrade_on_the_fly = degrade_on_the_fly
        self.attributes = attributes
        self.epoch, self.start_step = 0, 0
        if len(source) == 0:
            raise ValueError(f"{source.name}: no samples to stream")
        if len(self) == 0:
            ranks = f" for each of {self.world_size} ranks" if self.world_size > 1 else ""
            raise ValueError(f"{source.name}: no full batch of {batch_size}{ranks} from "
                             f"{counted(len(source), 'sample')}; use a smaller batch size")
        if attributes is not None:
            attributes.check_names(source, len(source))

    @classmethod
    def from_source(cls, recipe: Recipe, source: Source, **options) -> PairStream:
        """Pairs made on the fly from ``source`` with ``recipe``."""
        return cls(recipe, source, **options)

    @classmethod
    def from_dataset(cls, folder: str | Path, attribute_columns: list[str] | tuple[str, ...] | None = None,
                     **options) -> PairStream:
        """The pairs stored in a finished ``degrade build`` folder (``attribute_columns``: the stored
        attributes batches carry, in that order; None: all, []: none)."""
        from degrade.built import BuiltPairs

        unused = [f"{name}=" for name in ("seed", "attributes") if options.get(name) is not None]
        if unused:
            raise ValueError(f"PairStream.from_dataset: {' and '.join(unused)} would have no effect: a build's pairs "
                             f"are read as {folder} holds them, drawn with its seed and carrying the attributes it was "
                             "built with (attribute_columns= picks them)")
        pairs = BuiltPairs(folder, attribute_columns)
        return cls(pairs.recipe, pairs, degrade_on_the_fly=False, **options)

    def made_of(self) -> dict:
        """What the pairs are made of, for a training run resumed from a checkpoint to compare with
        the run it resumes: made on the fly or read from a build, the recipe (name, YAML, seed), the
        number of samples and the values of the attributes joined on the fly; read from a build, also
        what its manifest says it was made from (the path its source had, the values of its attributes
        table), so that another build of the same recipe and size is not taken for it. Not where this
        run's source or build lies (a run may resume with its data moved), nor the batch size or ranks
        (a run may resume on another number of ranks)."""
        recipe = self.recipe
        seed = self.seed if self.seed is not None or recipe is None else recipe.seed
        made = {"pairs": "made on the fly" if self.degrade_on_the_fly else "read from a build",
                "recipe": None if recipe is None else recipe.name, "recipe_text": None if recipe is None else recipe.text,
                "recipe_seed": seed, "samples": len(self.source),
                "attributes_values": None if self.attributes is None else self.attributes.fingerprint()}
        if not self.degrade_on_the_fly:
            manifest = self.source.manifest
            made |= {"build_source": manifest["source"], "build_attributes_values": manifest.get("attributes_values")}
        return made

    def __len__(self) -> int:
        """Batches per rank per epoch."""
        return len(self.source) // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Choose the epoch (>= 0: its shuffle and, on the fly, its draws) and the first batch to yield
        (to resume mid-epoch), from 0 to ``len(self)`` (none left)."""
        if epoch < 0:
            raise ValueError(f"PairStream: epoch {epoch} is negative")
        if not 0 <= start_step <= len(self):
            raise ValueError(f"PairStream: start_step {start_step} is outside the epoch's 0..{len(self)} batches")
        self.epoch, self.start_step = epoch, start_step

    def epoch_order(self) -> torch.Tensor:
        """(len(source),) int64: the order samples are visited this epoch (same on every rank)."""
        if not self.shuffle:
            return torch.arange(len(self.source))
        generator = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.source), generator=generator)

    def rank_batches(self) -> list[torch.Tensor]:
        """This rank's key (or row) batches for the epoch, from ``start_step`` on."""
        order = self.epoch_order()
        span = self.batch_size * self.world_size
        batches = [order[b * span + self.rank * self.batch_size: b * span + (self.rank + 1) * self.batch_size]
                   for b in range(len(self))]
        return batches[self.start_step:]

    def __iter__(self) -> Iterator[dict]:
        if self.device.type == "cuda":
            return prefetched(self._batches(), self.device)
        return self._batches()

    def _batches(self) -> Iterator[dict]:
        if not self.degrade_on_the_fly:
            pin = self.device.type == "cuda"
            for stored in decoded_batches(self.source, self.rank_batches(), self.num_workers, pin_memory=pin):
                yield self._as_dict(stored.to(self.device))
            return
        seed = epoch_seed(self.recipe.seed if self.seed is None else self.seed, self.epoch)
        for faces, batch in pair_batches(self.recipe, self.source, self.rank_batches(), self.device, seed,
                                         self.num_workers):
            if len(faces.key) == 0:  # a step cannot learn from no pair
                key, reason = faces.skipped[0]
                raise SourceError(f"{self.source.name}: {every(len(faces.skipped), 'face')} of a batch was "
                                  f"skipped (key {key}: {reason}); a batch needs one readable face")
            if self.attributes is not None:
                batch.attributes = self.attributes.lookup(self.source, faces.key, faces.identity).to(self.device)
            yield self._as_dict(batch)

    def _as_dict(self, batch: PairBatch) -> dict:
        out = {"hq": batch.hq, "lq": batch.lq, "identity": batch.identity, "key": batch.key, "params": batch.params}
        if batch.attributes is not None:
            out["attributes"] = batch.attributes
        sides = self.recipe.native_sides(batch.params) if self.recipe is not None else None
        if sides is not None:
            out["lq_side"] = sides
        return out


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def prefetched(batches: Iterator[dict], device: torch.device, depth: int = 2) -> Iterator[dict]:
    """``batches``, made up to ``depth`` ahead by a thread.

    On a GPU the thread works on a side CUDA stream: the engine's kernels overlap the training
    step, and the host waits some ops need (a data-dependent row count, a validation) stall that
    stream only. Each batch is handed over behind an event, and its tensors are marked as used by
    the consumer's stream so the caching allocator does not recycle them early. An exception in
    the thread is raised in the consumer; leaving the loop early stops the thread.
    """
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
                for batch in batches:
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(side)
                    hand_over((batch, event))
                    if stop.is_set():
                        return
        except BaseException as error:  # handed to the consumer, which raises it
            hand_over(error)
            return
        hand_over(None)

    thread = threading.Thread(target=produce, name="degrade-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            batch, event = item
            if cuda:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(event)
                for tensor in _tensors(batch):
                    tensor.record_stream(consumer)
            yield batch
    finally:
        stop.set()
        thread.join()
