"""insightface RecordIO (``train.rec`` + ``train.idx``, as MS1MV2 / WebFace ship), without mxnet.

The ``.rec`` file is a sequence of records: a uint32 magic 0xCED7230A, a uint32 whose top
3 bits flag a split record and whose low 29 bits give the length, the payload, and padding
to 4 bytes. A payload that contained the magic number is split there into parts (flags
1 start, 2 middle, 3 end) and joined back with the magic between parts. The ``.idx`` file
maps record index to byte offset, one ``index<TAB>offset`` per line.

Each payload starts with the image record header ``<IfQQ`` (flag, label, id, id2); when
flag > 0 the label is instead ``flag`` float32 values after the header. The encoded image
follows. insightface's record 0 is a header whose label is (first identity record, end):
images are records 1 .. label[0] - 1, and each identity record's label is the (start, end)
range of its images. A ``.rec`` without that header (as ``im2rec`` writes) has images only, each
record's first label its identity; identities are numbered in the order of their labels.
"""

from __future__ import annotations

import collections
import os
import struct
import weakref
from pathlib import Path

import numpy as np
import torch

from degrade.sources.base import EncodedSource, SourceError, read_failure
from degrade.text import counted

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")


def _pad(length: int) -> int:
    return -length % 4


class RecordFile:
    """Random access to the records of a ``.rec`` file through its ``.idx``.

    Reads are positional (``os.pread``): the file has no shared offset, so decoding workers
    forked after the source was opened (and read) can all read through the inherited handle.
    The index is two NumPy arrays, not a dict of Python ints, whose reference counts make every
    forked worker that looks records up copy the pages it touches: for an index of 2 M records a
    worker that had read every record held 122 MiB more private memory with a dict, none with
    the arrays (and the index took 63 instead of 205 MiB to hold)."""

    def __init__(self, rec: Path, idx: Path) -> None:
        self.rec, self.idx = rec, idx
        indices, offsets = [], []
        try:
            lines = idx.read_text(encoding="ascii").splitlines()
        except UnicodeDecodeError as error:
            raise SourceError(f"{idx}: not a RecordIO index (byte {error.start + 1} is not text; an index is lines of "
                              "'index<TAB>offset')") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                index, offset = line.split("\t")
                indices.append(int(index))
                offsets.append(int(offset))
            except ValueError:
                raise SourceError(f"{idx}:{number}: expected 'index<TAB>offset', got {line[:60]!r}") from None
        order = np.argsort(indices, kind="stable")
        self.indices = np.array(indices, dtype=np.int64)[order]  # ascending record indices
        self._offsets = np.array(offsets, dtype=np.int64)[order]
        self._descriptor: int | None = None
        self._refuse_records_beyond_the_end()

    def _refuse_records_beyond_the_end(self) -> None:
        """A ``.rec`` shorter than its index says (an interrupted copy) fails here, naming how much is
        missing, rather than at the first record read past its end."""
        size = self.rec.stat().st_size
        beyond = np.nonzero(self._offsets >= size)[0]
        if len(beyond):
            first = beyond[np.argmin(self._offsets[beyond])]
            raise SourceError(f"{self.rec}: the file ends at byte {size:,}, but {self.idx.name} places {len(beyond):,} "
                              f"of its {len(self.indices):,} records beyond it, from record {self.indices[first]} at byte "
                              f"{self._offsets[first]:,}: a truncated copy?")

    def offset(self, index: int) -> int:
        """Byte offset of record ``index`` in the ``.rec`` file."""
        position = int(np.searchsorted(self.indices, index))
        if position == len(self.indices) or self.indices[position] != index:
            raise SourceError(f"{self.rec}: no record {index} in {self.idx}")
        return int(self._offsets[position])

    def __getstate__(self) -> dict:  # a spawned worker opens its own descriptor
        return {**self.__dict__, "_descriptor": None}

    def _read_at(self, index: int, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._descriptor, length, offset)
        except OSError as error:
            raise read_failure(f"{self.rec}: record {index}", error) from None
        if len(data) < length:
            raise SourceError(f"{self.rec}: record {index} is truncated")
        return data

    def read(self, index: int) -> bytes:
        """The payload of record ``index``."""
        if self._descriptor is None:
            self._descriptor = os.open(self.rec, os.O_RDONLY)
            weakref.finalize(self, os.close, self._descriptor)
        offset, parts = self.offset(index), []
        while True:
            magic, packed = struct.unpack("<II", self._read_at(index, offset, 8))
            if magic != MAGIC:
                raise SourceError(f"{self.rec}: record {index} has no RecordIO magic (corrupt file or wrong .idx)")
            flag, length = packed >> 29, packed & ((1 << 29) - 1)
            parts.append(self._read_at(index, offset + 8, length))
            offset += 8 + length + _pad(length)
            if flag in (0, 3):
                return _MAGIC_BYTES.join(parts)


def unpack_record(payload: bytes) -> tuple[np.ndarray, bytes]:
    """Split a payload into its label (float32 array) and the encoded image bytes."""
    flag, label, _, _ = _HEADER.unpack_from(payload)
    if flag > 0:
        labels = np.frombuffer(payload, np.float32, count=flag, offset=_HEADER.size)
        return labels, payload[_HEADER.size + 4 * flag:]
    return np.array([label], np.float32), payload[_HEADER.size:]


def pack_record(label: float | list[float], image: bytes = b"") -> bytes:
    """The payload for ``label`` (a number, or a list for header / identity records) and image bytes."""
    if isinstance(label, (list, tuple)):
        return _HEADER.pack(len(label), 0.0, 0, 0) + np.asarray(label, np.float32).tobytes() + image
    return _HEADER.pack(0, float(label), 0, 0) + image


def write_recordio(prefix: str | Path, payloads: list[bytes]) -> None:
    """Write ``prefix.rec`` and ``prefix.idx`` holding ``payloads`` as records 0, 1, ..."""
    prefix = Path(prefix)
    offsets = []
    with open(prefix.with_suffix(".rec"), "wb") as rec:
        for payload in payloads:
            offsets.append(rec.tell())
            parts = payload.split(_MAGIC_BYTES)
            for number, part in enumerate(parts):
                flag = 0 if len(parts) == 1 else 1 if number == 0 else 3 if number == len(parts) - 1 else 2
                rec.write(struct.pack("<II", MAGIC, (flag << 29) | len(part)) + part + b"\0" * _pad(len(part)))
    prefix.with_suffix(".idx").write_text("".join(f"{i}\t{o}\n" for i, o in enumerate(offsets)))


def write_insightface_recordio(prefix: str | Path, images: list[bytes], labels: list[int]) -> None:
    """Write images in insightface's layout: header record 0, image records, identity records."""
    counts = collections.Counter(labels)
    order = sorted(range(len(images)), key=lambda i: labels[i])
    first_identity_record = 1 + len(images)
    payloads = [pack_record([first_identity_record, first_identity_record + len(counts)])]
    payloads += [pack_record(labels[i], images[i]) for i in order]
    position = 1
    for identity in sorted(counts):
        payloads.append(pack_record([position, position + counts[identity]]))
        position += counts[identity]
    write_recordio(prefix, payloads)


class RecordIOSource(EncodedSource):
    """Faces from an insightface ``train.rec`` / ``train.idx`` pair (a folder or the .rec path)."""

    def __init__(self, path: str | Path, size: int = 112, strict: bool = False) -> None:
        path = Path(path)
        rec = path / "train.rec" if path.is_dir() else path
        idx = rec.with_suffix(".idx")
        if not rec.is_file() or not idx.is_file():
            raise SourceError(f"{path}: expected a .rec file with its .idx beside it")
        self.records = RecordFile(rec, idx)
        self.name, self.size, self.strict = str(rec), size, strict
        if len(self.records.indices) == 0:
            raise SourceError(f"{rec}: holds no image records")
        first_record = int(self.records.indices[0])
        header_label, _ = unpack_record(self.records.read(first_record))
        if len(header_label) >= 2 and first_record == 0:
            first, end = int(header_label[0]), int(header_label[1])
            identities = self._identities_from_ranges(first, end)
            self.record_of_key = np.arange(1, first)
            self.identity_names = [str(i) for i in range(end - first)]
        else:
            self.record_of_key = self.records.indices
            labels = np.array([unpack_record(self.records.read(int(r)))[0][0] for r in self.record_of_key])
            unique_labels, identities = np.unique(labels.astype(np.int64), return_inverse=True)
            self.identity_names = [str(label) for label in unique_labels]
        if len(self.record_of_key) == 0:
            raise SourceError(f"{rec}: holds no image records")
        self.identities = torch.as_tensor(identities, dtype=torch.int64)

    def _identities_from_ranges(self, first: int, end: int) -> np.ndarray:
        """(first - 1,) int64: the identity of image records 1 .. first - 1, identity i being the
        (start, end) range in record first + i's label. Ranges that leave an image out, share one or
        reach outside them fail, rather than give an image no or two identities."""
        if not 1 <= first <= end:
            raise SourceError(f"{self.name}: header record 0 gives identity records {first} .. {end - 1}, "
                              "which is no range after the image records (expected 1 <= first <= end)")
        identities = np.full(first - 1, -1, np.int64)
        for identity, record in enumerate(range(first, end)):
            label = unpack_record(self.records.read(record))[0]
            start, stop = (int(label[0]), int(label[1])) if len(label) >= 2 else (0, 0)
            if not 1 <= start <= stop <= first or (identities[start - 1:stop - 1] >= 0).any():
                raise SourceError(f"{self.name}: identity record {record} has the label {label.tolist()}, not a "
                                  f"(start, end) range of image records (1 .. {first - 1}) that no earlier "
                                  "identity holds")
            identities[start - 1:stop - 1] = identity
        unlabelled = np.flatnonzero(identities < 0)
        if len(unlabelled):
            others = f" nor {counted(len(unlabelled) - 1, 'other')}" if len(unlabelled) > 1 else ""
            raise SourceError(f"{self.name}: no identity record (records {first} .. {end - 1}) holds image record "
                              f"{unlabelled[0] + 1}{others}")
        return identities

    def sample_name(self, key: int) -> str:
        return f"record {self.record_of_key[key]}"

    def read(self, key: int) -> tuple[bytes, str]:
        return unpack_record(self.records.read(int(self.record_of_key[key])))[1], f"{self.name} {self.sample_name(key)}"
