"""What every source gives the engine: decoded HQ faces by key, with what was skipped and why."""

from __future__ import annotations

import collections
import dataclasses
import errno
import math

import cv2
import numpy as np
import torch

from degrade.layout import stack_channels_first


class SourceError(ValueError):
    """A source that cannot be read; the message names the file (or record) and the problem."""


class StorageError(SourceError):
    """A read that failed for the storage under the source or for this process (a disk's or a
    network file system's I/O error, a stale or lost mount, no file descriptors left), not for the
    sample: never skipped, as every sample after it would be."""


# What an OSError's errno says failed when it does not say the file did.
_STORAGE_FAILURES = frozenset({errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTDOWN,
                               errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ECONNRESET,
                               errno.EMFILE, errno.ENFILE})


def read_failure(where: str, error: OSError) -> SourceError:
    """The error for ``error``, met reading ``where`` (a file, a record): a :class:`StorageError`
    where the storage or the process failed, which stops the work; else a SourceError, which
    skips the sample (or fails it under ``strict``)."""
    if error.errno in _STORAGE_FAILURES:
        return StorageError(f"{where}: cannot be read ({error.strerror}), a failure of the storage or the system "
                            "rather than of the file: stopped here, not skipping every face after it; run the same "
                            "command again once it is back (a build resumes where it stopped)")
    return SourceError(f"{where}: cannot be read ({error.strerror})")


@dataclasses.dataclass
class Faces:
    """A decoded batch. Keys that failed to decode are left out and listed in ``skipped``."""

    key: torch.Tensor                     # (M,) int64
    identity: torch.Tensor                # (M,) int64
    hq: torch.Tensor                      # (M, 3, S, S) uint8 RGB
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (key, reason)
    fixes: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # conversions made

    def pin_memory(self) -> Faces:
        return dataclasses.replace(self, hq=self.hq.pin_memory())


def decode_image(data: bytes, name: str, size: int, strict: bool = False) -> tuple[np.ndarray, list[str]]:
    """Decode one encoded image to (size, size, 3) RGB uint8; also returns the conversions made.

    Greyscale is repeated to three channels, alpha dropped, 16-bit scaled to 8 bits and other
    sizes resized (area when shrinking, bicubic when enlarging). With ``strict`` a face of the
    wrong size is refused. Raises :class:`SourceError` naming ``name`` when it cannot be used.
    """
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and b"\xff\xd9" not in data[-64:]:
        raise SourceError(f"{name}: truncated JPEG (no end-of-image marker)")
    # A colour JPEG is decoded straight to RGB, with no channel swap after it (`load_rate.py`, LFW
    # x16, alternating rounds: 64-66 against 67-78 us per face on the 2-core machine, 139-185 against
    # 152-198 on the H100 machine's cores). The orientation is ignored, as IMREAD_UNCHANGED does.
    colour_jpeg = is_jpeg and jpeg_components(data) == 3
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION if colour_jpeg else cv2.IMREAD_UNCHANGED
    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, flags) if array.size else None
    if image is None:
        raise SourceError(f"{name}: not a readable image (empty, truncated or not an image format)")
    if colour_jpeg:
        return _resized(image, name, size, strict, [])
    fixes = []
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
        fixes.append("16-bit to 8-bit")
    elif image.dtype != np.uint8:
        raise SourceError(f"{name}: unsupported pixel type {image.dtype}")
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        fixes.append("greyscale to RGB")
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        fixes.append("alpha dropped")
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return _resized(image, name, size, strict, fixes)


def decode_raw_pixels(data: bytes | np.ndarray, name: str, size: int, strict: bool = False) -> tuple[np.ndarray, list[str]]:
    """(size, size, 3) RGB uint8 from the raw HxWx3 bytes of a square image (a ``degrade build
    --format raw`` column; bytes, or a uint8 array viewing them), and the conversions made. Raises
    :class:`SourceError` naming ``name`` when the byte count is not that of a square RGB image."""
    side = math.isqrt(len(data) // 3)
    if side == 0 or 3 * side * side != len(data):
        raise SourceError(f"{name}: {len(data)} bytes are not the raw pixels of a square RGB image")
    return _resized(np.frombuffer(data, np.uint8).reshape(side, side, 3), name, size, strict, [])


def _resized(image: np.ndarray, name: str, size: int, strict: bool, fixes: list[str]) -> tuple[np.ndarray, list[str]]:
    """An (H, W, 3) RGB image at (size, size): area when shrinking, bicubic when enlarging. A face
    that is not square is stretched, and counted apart ("stretched ... (not square)"): an aligned
    112x96 crop has other proportions than a square one, and the build's summary says so."""
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        if strict:
            raise SourceError(f"{name}: is {width}x{height}, expected {size}x{size} (--strict)")
        shrinking = height > size or width > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
        fixes.append(f"resized to {size}x{size}" if height == width else f"stretched to {size}x{size} (not square)")
    return image, fixes


_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-SOF15 (not DHT, JPG, DAC)
_UNSIZED_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length field


def jpeg_components(data: bytes) -> int | None:
    """The number of colour components a JPEG's frame header declares (1 grey, 3 colour, 4 CMYK),
    found by walking the marker segments before it; None when there is none to find."""
    position = 2
    while position + 9 < len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in _FRAME_MARKERS:
            return data[position + 9]  # after the length (2), precision (1), height (2), width (2)
        elif marker in _UNSIZED_MARKERS:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return None


class EncodedSource:
    """Base of the sources that hold encoded images (files, records, Arrow rows).

    Subclasses set ``name``, ``size``, ``strict``, ``identities`` ((len,) int64) and
    ``identity_names``, and implement :meth:`sample_name` and :meth:`read` (the encoded bytes of a
    key and where they are, for messages); one whose bytes are not an image file overrides
    :meth:`decode`. :meth:`load` decodes a batch, skipping (or, when strict, refusing) unreadable images.
    """

    name: str
    size: int
    strict: bool
    identities: torch.Tensor
    identity_names: list[str]

    def __len__(self) -> int:
        return len(self.identities)

    def identity_name(self, identity: int) -> str:
        return self.identity_names[identity] if 0 <= identity < len(self.identity_names) else ""

    def sample_name(self, key: int) -> str:
        """The sample's name in the source, relative to it (a file's path inside a folder, ``record
        N`` of a RecordIO, ...): a build's ``file`` column, and what attributes keyed by file match.
        Made without reading the image."""
        raise NotImplementedError

    def read(self, key: int) -> tuple[bytes, str]:
        raise NotImplementedError

    def decode(self, data: bytes, where: str) -> tuple[np.ndarray, list[str]]:
        """The (size, size, 3) RGB uint8 face in the bytes :meth:`read` gave, and the conversions made."""
        return decode_image(data, where, self.size, self.strict)

    def load(self, keys: torch.Tensor, out: torch.Tensor | None = None) -> Faces:
        images, good, skipped, fixes = [], [], [], collections.Counter()
        for key in keys.tolist():
            try:
                data, where = self.read(key)
                image, made = self.decode(data, where)
            except SourceError as error:
                if self.strict or isinstance(error, StorageError):
                    raise
                skipped.append((key, str(error)))
                continue
            fixes.update(made)
            images.append(image)
            good.append(key)
        key_tensor = torch.tensor(good, dtype=torch.int64)
        hq = stack_channels_first(images, out) if images else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        return Faces(key=key_tensor, identity=self.identities[key_tensor], hq=hq, skipped=skipped, fixes=fixes)
