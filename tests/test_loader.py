"""Decoding workers: batches come back in order and whole, however they cross between processes."""

import os
import signal
import time
import types

import pytest
import torch
from torch.utils.data import get_worker_info

from degrade import loader
from degrade.loader import SlotRing, decoded_batches, pair_batches
from degrade.recipe import load_recipe
from degrade.sources import Faces, open_source
from degrade.sources.demo import DemoSource
from degrade.workers import SharedMemoryFull, WorkerLost, named_worker_losses, prepare_worker


def test_faces_through_the_slot_ring_equal_decoding_in_process(lfw_source):
    # 2 workers reuse their 5 slots each about four times over; the last batch is short.
    batches = torch.arange(40 * 7 + 3).split(7)
    through_ring = list(decoded_batches(lfw_source, batches, num_workers=2, to=torch.device("cpu")))
    in_process = [lfw_source.load(keys) for keys in batches]
    assert [len(faces.key) for faces in through_ring] == [7] * 40 + [3]
    for got, expected in zip(through_ring, in_process):
        assert torch.equal(got.key, expected.key) and torch.equal(got.identity, expected.identity)
        assert torch.equal(got.hq, expected.hq)
    # What a consumer is given is its own copy: later batches do not overwrite it.
    assert len({faces.hq.data_ptr() for faces in through_ring}) == len(batches)


def test_skipped_inputs_and_every_source_kind_come_through_the_ring(tmp_path, lfw_source):
    folder = tmp_path / "faces" / "bob"
    folder.mkdir(parents=True)
    for name, key in (("a.jpg", 0), ("c.jpg", 1)):
        (folder / name).write_bytes(lfw_source.read(key)[0])
    (folder / "b.jpg").write_bytes(b"not an image")
    folder_source = open_source(str(tmp_path / "faces"))
    for source in (folder_source, DemoSource(identities=3)):
        batches = torch.arange(len(source)).split(2)
        through_ring = list(decoded_batches(source, batches, num_workers=2, to=torch.device("cpu")))
        for got, keys in zip(through_ring, batches):
            expected = source.load(keys)
            assert got.key.tolist() == expected.key.tolist() and got.skipped == expected.skipped
            assert torch.equal(got.hq, expected.hq)
        if source is folder_source:
            assert [faces.key.tolist() for faces in through_ring] == [[0], [2]]
            assert "b.jpg: not a readable image" in dict(through_ring[0].skipped)[1]


class _Levels:
    """A source whose face for key k is filled with level k; with ``own_memory`` it ignores ``out``."""

    size = 4

    def __init__(self, own_memory: bool = False) -> None:
        self.own_memory = own_memory

    def load(self, keys: torch.Tensor, out: torch.Tensor) -> Faces:
        hq = torch.empty(len(keys), 3, 4, 4, dtype=torch.uint8) if self.own_memory else out[:len(keys)]
        hq.copy_(keys.to(torch.uint8).view(-1, 1, 1, 1).expand_as(hq))
        return Faces(key=keys, identity=torch.zeros_like(keys), hq=hq)


def test_a_worker_never_overwrites_a_slot_the_consumer_has_not_taken(monkeypatch):
    monkeypatch.setattr(loader, "get_worker_info", lambda: types.SimpleNamespace(id=0))
    monkeypatch.setattr(loader, "SLOT_WAIT_SECONDS", 0.05)
    ring, source = SlotRing(workers=1, capacity=2, depth=2), _Levels()
    first, second = ring.load(source, torch.tensor([1])), ring.load(source, torch.tensor([2, 2]))
    with pytest.raises(RuntimeError, match="slot 0 not taken by the consumer"):
        ring.load(source, torch.tensor([3]))
    assert ring.take(first, torch.device("cpu")).hq.unique().tolist() == [1]
    third = ring.load(source, torch.tensor([3]))
    assert (third.slot, third.images) == (0, None)  # the consumer has the slot mapped already
    assert ring.take(second, torch.device("cpu")).hq.unique().tolist() == [2]
    assert ring.take(third, torch.device("cpu")).hq.unique().tolist() == [3]


def test_faces_of_a_source_that_ignores_out_are_copied_into_the_slot(monkeypatch):
    monkeypatch.setattr(loader, "get_worker_info", lambda: types.SimpleNamespace(id=0))
    ring, source = SlotRing(workers=1, capacity=3, depth=1), _Levels(own_memory=True)
    for level in (5, 7):
        assert ring.take(ring.load(source, torch.tensor([level] * 3)), torch.device("cpu")).hq.unique().tolist() == [level]


class _DiesOnKey(DemoSource):
    """A demo source whose decoding process is killed when it reaches key ``fatal`` (as the
    out-of-memory killer kills a worker)."""

    fatal = 6

    def load(self, keys, out=None):
        if self.fatal in keys.tolist():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().load(keys, out=out)


@pytest.mark.parametrize("through", ["a CPU stream's pairs", "the slot ring"])
def test_a_worker_without_room_in_shared_memory_is_named_with_what_to_try_rather_than_waited_for(monkeypatch, through):
    """A full /dev/shm failed the pickling thread of the worker, which dropped the batch: the consumer waited forever."""
    share = torch.Tensor.share_memory_

    def no_room_in_a_worker(tensor):
        if get_worker_info() is None:  # the consumer's own (the ring's flags) are made as before
            return share(tensor)
        raise RuntimeError("unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device (28)")

    monkeypatch.setattr(torch.Tensor, "share_memory_", no_room_in_a_worker)  # the workers are forked with it
    says = (r"^a decoding worker found no room for a batch in shared memory \(unable to allocate shared memory.*\): "
            r"the workers hand batches over through /dev/shm \(.*\); give it more \(a container's default is 64 MB: "
            r"docker run --shm-size=8g\), or use smaller batches")
    source, batches = DemoSource(identities=2), torch.arange(20).split(10)
    with pytest.raises(SharedMemoryFull, match=says):
        if through == "the slot ring":
            list(decoded_batches(source, batches, num_workers=1, to=torch.device("cpu")))
        else:
            list(pair_batches(load_recipe("maug"), source, batches, "cpu", num_workers=1))


def test_a_worker_killed_mid_way_is_named_with_what_to_try():
    batches = torch.arange(12).split(2)
    with pytest.raises(WorkerLost, match=r"^a decoding worker ended while it had work \(DataLoader worker "
                                         r".*\): killed, by the out-of-memory killer .*\(fewer workers"):
        list(decoded_batches(_DiesOnKey(identities=2), batches, num_workers=1))


def test_a_worker_that_ends_while_it_hands_a_batch_over_is_named_as_lost():
    """A batch's large tensors are fetched from the worker that made them. One that ends meanwhile
    (a SIGTERM to every process of a job reaches it too) resets that connection, an error the
    DataLoader passes on as it is until it sees the worker gone; it is a lost worker all the same
    (and a training run that was asked to stop takes it for the stop)."""
    def batches():
        yield "first"
        raise ConnectionResetError(104, "Connection reset by peer")

    fetched = []
    with pytest.raises(WorkerLost, match=r"^a decoding worker ended while it handed a batch over \(\[Errno 104\] "
                                         r"Connection reset by peer\): killed, by the out-of-memory killer"):
        fetched.extend(named_worker_losses(batches()))
    assert fetched == ["first"]


class _DiesAfterTwoFetches(_DiesOnKey):
    """Its fatal key is in batch PREFETCH + 1, which the DataLoader hands its one worker only once
    the consumer has taken batch 1 (it hands out PREFETCH batches ahead): the worker cannot die
    before the consumer has the first two batches, however the processes are scheduled."""

    fatal = 2 * (loader.PREFETCH + 1)  # batches of 2 keys


def test_a_worker_killed_while_the_consumer_is_busy_is_named_when_the_next_batch_is_asked_for():
    """The worker dies while the consumer works on a batch (a build degrading, a training step):
    the death is reported by the next fetch, not raised from wherever the consumer was."""
    batches = torch.arange(2 * (loader.PREFETCH + 2)).split(2)
    fetched = []
    with pytest.raises(WorkerLost, match=r"^a decoding worker ended while it had work"):
        for faces in decoded_batches(_DiesAfterTwoFetches(identities=2), batches, num_workers=1):
            fetched.append(faces.key.tolist())
            time.sleep(1.5)  # the worker reaches the fatal key meanwhile, and is killed
    assert fetched[:2] == [[0, 1], [2, 3]]


class _TensorsOfEveryKind(torch.utils.data.Dataset):
    """Item 0: small tensors as a batch's key and params are, a large one as its images are, a
    small one in shared memory already (as a slot's), and one of a dtype NumPy lacks."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return {"small": torch.arange(8), "view": torch.arange(100)[::10],
                "large": torch.full((64 * 1024 + 1,), 7, dtype=torch.uint8),
                "shared": torch.zeros(4).share_memory_(), "bfloat16": torch.ones(3, dtype=torch.bfloat16)}


def test_a_decoding_worker_sends_small_tensors_inside_the_pickle_and_the_rest_through_shared_memory():
    item = next(iter(torch.utils.data.DataLoader(_TensorsOfEveryKind(), batch_size=None, num_workers=1,
                                                 worker_init_fn=prepare_worker)))
    assert item["small"].tolist() == list(range(8)) and item["view"].tolist() == list(range(0, 100, 10))
    assert torch.equal(item["large"], torch.full((64 * 1024 + 1,), 7, dtype=torch.uint8))
    assert item["bfloat16"].dtype == torch.bfloat16 and item["bfloat16"].tolist() == [1, 1, 1]
    assert {name: tensor.is_shared() for name, tensor in item.items()} == {
        "small": False, "view": False, "large": True, "shared": True, "bfloat16": True}


def _private_memory_mib() -> int:
    """This process's resident private (anonymous) memory."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("RssAnon:"))


class _ImagesWithTheWorkersMemory(torch.utils.data.Dataset):
    """Item i: a batch of 4 MB images, as a build's workers send them, and the memory the worker
    held before making it."""

    def __len__(self):
        return 160

    def __getitem__(self, index):
        held = _private_memory_mib()
        return torch.full((4 << 20,), index % 200, dtype=torch.uint8), held


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads memory from Linux's /proc")
def test_a_decoding_workers_memory_does_not_grow_with_the_batches_it_sends():
    held = [memory for images, memory in torch.utils.data.DataLoader(
        _ImagesWithTheWorkersMemory(), batch_size=None, num_workers=1, worker_init_fn=prepare_worker)]
    # torch's own reduction kept every batch's 4 MB until 128 had been sent: 677 against 237 MiB
    assert held[-1] - held[20] < 64, held[::20]
