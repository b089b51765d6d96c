"""The life of a decoding worker process: how it starts, how it ends, and how its death is reported.

DataLoader workers left to themselves outlive a consumer that is killed, hold up one stopped by
Ctrl-C, and fail one that Slurm terminates; a worker killed on its own surfaces as a RuntimeError
traceback. Here each of these ends cleanly, with one message where there is something to say.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from multiprocessing.reduction import ForkingPickler

import torch
from torch.multiprocessing.reductions import reduce_tensor, shared_cache

from degrade.engine import prepare_cpu_worker

# Tensors up to this size leave a decoding worker inside its pickled result; larger ones (images)
# through shared memory, as torch sends every tensor. Measured on the 2-core machine, 2 workers,
# ms per tensor from worker to consumer, shared memory against inline: 2 kB 0.66 / 0.02,
# 64 kB 0.51 / 0.21, 256 kB 0.56 / 0.71, 1 MB 1.3 / 1.9.
INLINE_TENSOR_BYTES = 64 * 1024


class WorkerLost(RuntimeError):
    """A decoding worker process that ended while it had work: killed (by the out-of-memory killer,
    or a signal sent to it alone) or crashed in native code."""


class SharedMemoryFull(RuntimeError):
    """A decoding worker that could not put a batch in shared memory (``/dev/shm``), through which
    workers hand their batches over: a container's default of 64 MB holds about one batch of 512
    pairs. Made in the worker, returned with its batch's result and raised by the consumer."""


def in_shared_memory(item: object) -> object:
    """``item`` (a tensor, or dataclasses, tuples, lists and dicts of them) with its tensors larger
    than ``INLINE_TENSOR_BYTES`` moved into shared memory, in the decoding worker's own thread; a
    :class:`SharedMemoryFull` where there is no room.

    Left to the pickling of the result, which multiprocessing runs on a thread of its own, a full
    ``/dev/shm`` printed a traceback there and dropped the batch, and the consumer waited for it
    forever (a stream of 2 workers, batches of 256, with 4 MB of ``/dev/shm``). Moved here, the
    pickling finds them shared and sends their file descriptors, as it would have."""
    try:
        for tensor in _tensors_of(item):
            if tensor.nbytes > INLINE_TENSOR_BYTES and not tensor.is_shared():
                tensor.share_memory_()
    except RuntimeError as error:
        try:
            size = f"{shutil.disk_usage('/dev/shm').total / 2**20:,.0f} MB here"
        except OSError:
            size = "not found here"
        raise SharedMemoryFull(f"a decoding worker found no room for a batch in shared memory ({error}): the workers "
                               f"hand batches over through /dev/shm ({size}); give it more (a container's default "
                               "is 64 MB: docker run --shm-size=8g), or use smaller batches (-b, batch_size=) or no "
                               "workers (-j 0, num_workers=0)") from None
    return item


def _tensors_of(item: object) -> Iterator[torch.Tensor]:
    """Every tensor inside ``item``: a batch's result, made of dataclasses, tuples, lists and dicts."""
    if isinstance(item, torch.Tensor):
        yield item
    elif dataclasses.is_dataclass(item):
        for field in dataclasses.fields(item):
            yield from _tensors_of(getattr(item, field.name))
    elif isinstance(item, (tuple, list)):
        for part in item:
            yield from _tensors_of(part)
    elif isinstance(item, dict):
        for part in item.values():
            yield from _tensors_of(part)


def _is_worker_death(error: RuntimeError) -> bool:
    """Whether ``error`` is PyTorch's report of a DataLoader worker that died ('DataLoader worker (pid ...)')."""
    return str(error).startswith("DataLoader worker")


class _WorkerDeathsHeldForFetches:
    """While installed (by the main thread; elsewhere it does nothing), the SIGCHLD handler it
    replaced still runs at once, but a worker's death that it reports outside :meth:`fetch` is held,
    and raised when the next fetch begins.

    PyTorch reports a DataLoader worker's death from a SIGCHLD handler, which raises its RuntimeError
    wherever the main thread is at that moment: while the consumer degrades or trains on a batch, out
    of reach of the code that names the death (and of the training loop, which takes a worker ended
    by a SIGTERM to the whole job for the stop it is)."""

    def __init__(self) -> None:
        self.replaced = None
        self.held: RuntimeError | None = None
        self.fetching = False

    def __enter__(self) -> _WorkerDeathsHeldForFetches:
        if threading.current_thread() is threading.main_thread():
            handler = signal.getsignal(signal.SIGCHLD)
            if callable(handler):
                self.replaced = handler
                signal.signal(signal.SIGCHLD, self._arrived)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.replaced is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, self.replaced)

    def _arrived(self, signum: int, frame: object) -> None:
        try:
            self.replaced(signum, frame)
        except RuntimeError as error:
            if self.fetching or not _is_worker_death(error):
                raise
            self.held = error

    def fetch(self, batches: Iterator):
        """``next(batches)``, or the worker's death held since the last fetch, raised."""
        if self.held is not None:
            death, self.held = self.held, None
            raise death
        self.fetching = True
        try:
            return next(batches)
        finally:
            self.fetching = False


_WHY_LOST = ("killed, by the out-of-memory killer if the machine ran short (fewer workers, -j, or smaller batches use "
             "less), or crashed")


def named_worker_losses(loader: Iterable) -> Iterator:
    """The batches of ``loader`` (a DataLoader), with its error for a worker that died raised as a
    :class:`WorkerLost` that says what to try, rather than a RuntimeError traceback (PyTorch's messages
    for it begin 'DataLoader worker (pid ...)'), and raised here, when the next batch is asked for."""
    batches = iter(loader)  # starts the workers, and PyTorch's SIGCHLD handler with them
    with _WorkerDeathsHeldForFetches() as deaths:
        while True:
            try:
                batch = deaths.fetch(batches)
            except StopIteration:
                return
            except RuntimeError as error:
                if not _is_worker_death(error):
                    raise
                raise WorkerLost(f"a decoding worker ended while it had work ({error}): {_WHY_LOST}") from None
            except (ConnectionError, EOFError) as error:
                # A batch's large tensors are fetched from the worker that made them; one that ends
                # meanwhile (a SIGTERM to every process of the job reaches it too) resets the
                # connection, and the DataLoader passes that error on when it has not yet seen the
                # worker gone.
                raise WorkerLost(f"a decoding worker ended while it handed a batch over ({error}): {_WHY_LOST}") from None
            yield batch


def _exit_with(parent: int) -> None:
    """Poll, once a second, whether the process ``parent`` is still this one's parent; end this
    process at once when it is not.

    A DataLoader worker notices its parent's death only while it waits for work, and then ends
    through multiprocessing's exit handlers, which wait for its result queue's pipe to drain; with
    the reader gone and the pipe full (a CPU build's rows are several MB per batch) they wait
    forever. A build killed (SIGKILL, the OOM killer) or terminated (SIGTERM) mid-way left each
    of its workers behind, holding 240 MB, for as long as the machine ran."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _unless_the_consumer_left(kind: type[BaseException], error: BaseException, trace: object) -> None:
    """A decoding worker's ``sys.excepthook``, which multiprocessing's thread that hands shared
    tensors to the consumer reports through: silent for a lost connection. A worker's only
    connections are to its consumer, which reports a stop or an error of its own; a consumer
    stopped by Ctrl-C while it took a batch left a multiprocessing traceback under its message."""
    if not issubclass(kind, (ConnectionError, EOFError)):
        sys.__excepthook__(kind, error, trace)


def _exit_quietly(signum: int, frame: object) -> None:
    """A decoding worker's SIGTERM handler: end at once with exit code 0, which the consumer's
    DataLoader does not take for a crash (a worker killed by the signal made it raise a
    RuntimeError, and Slurm signals every process of a job). The DataLoader itself sends SIGTERM
    to a worker that does not stop when told to."""
    os._exit(0)


def _small_tensors_inline(tensor: torch.Tensor):
    """A decoding worker's pickling of a tensor: one of at most ``INLINE_TENSOR_BYTES`` as a NumPy
    array inside the pickle, unless it is in shared memory already (a slot of a :class:`SlotRing`,
    which must stay shared).

    Torch's own reduction gives every tensor a shared-memory segment and a file descriptor handed
    over with a round trip to the worker, about 0.5 ms on each side; a batch's key, identity and
    params are 4-46 such tensors (a recipe draws up to 44 params).

    Torch notes every tensor it shares in ``shared_cache``, and each note of a tensor since freed
    holds that tensor's memory in the worker until the cache, past 128 notes, drops them all. With
    only the images shared that is 64 batches of them: a ``maug`` raw build's workers grew to 820
    and 850 MiB over their first 70,000 pairs (docs/benchmarks.md, target 5). Dropping the dead
    notes before each share keeps a worker at one batch's images."""
    if tensor.nbytes > INLINE_TENSOR_BYTES or tensor.is_shared():
        shared_cache.free_dead_references()
        return reduce_tensor(tensor)
    try:
        return torch.from_numpy, (tensor.numpy(),)
    except (TypeError, RuntimeError):  # a dtype NumPy lacks (bfloat16), or a tensor of an autograd graph
        return reduce_tensor(tensor)


def leave_stop_signals_to_parent() -> None:
    """In a worker process: ignore Ctrl-C, which a terminal sends to every process of the command
    and which the parent handles, and end quietly on SIGTERM, with which the parent's shutdown
    stops a worker. A forked worker otherwise keeps the parent's handlers: a `degrade bench` pool
    worker raised the command's stop exception inside a lock of the pool's queue and the bench hung
    in the pool's shutdown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def prepare_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``, run before a decoding worker's first batch: one torch thread,
    malloc keeping freed blocks (the demo source draws a batch of 256 faces in 1.7 against 6.6 ms
    per face on one core), small tensors sent inline, Ctrl-C left to the consumer, SIGTERM ending
    it quietly, and a thread that ends it when its parent is gone.

    Ctrl-C in a terminal reaches every process of the command. A worker that stopped on it ended
    while its results still waited in the queue, and blocked there until the consumer's shutdown
    gave up on it, 5 s per worker (a CPU build of 2 workers took 10.7 s to stop, now 0.5-0.6);
    ignoring it, a worker is told to stop by that shutdown, and ends at once."""
    prepare_cpu_worker()
    ForkingPickler.register(torch.Tensor, _small_tensors_inline)
    leave_stop_signals_to_parent()
    sys.excepthook = _unless_the_consumer_left
    threading.Thread(target=_exit_with, args=(os.getppid(),), name="exit with parent", daemon=True).start()
