"""What every source gives the engine: decoded HQ faces by key, with what was skipped and why."""

from __future__ import annotations

import collections
import dataclasses

import cv2
import numpy as np
import torch

from degrade.layout import stack_channels_first


class SourceError(ValueError):
    """A source that cannot be read; the message names the file (or record) and the problem."""


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
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise SourceError(f"{name}: truncated JPEG (no end-of-image marker)")
    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_UNCHANGED) if array.size else None
    if image is None:
        raise SourceError(f"{name}: not a readable image (empty, truncated or not an image format)")
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
    if image.shape[:2] != (size, size):
        if strict:
            raise SourceError(f"{name}: is {image.shape[1]}x{image.shape[0]}, expected {size}x{size} (--strict)")
        shrinking = image.shape[0] > size or image.shape[1] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
        fixes.append(f"resized to {size}x{size}")
    return image, fixes


class EncodedSource:
    """Base of the sources that hold encoded images (files, records, Arrow rows).

    Subclasses set ``name``, ``size``, ``strict``, ``identities`` ((len,) int64) and
    ``identity_names``, and implement :meth:`read` (the encoded bytes of a key and a name
    for messages). :meth:`load` decodes a batch, skipping (or, when strict, refusing)
    unreadable images.
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
        """A name for the sample (its file, relative to the source), used to match attributes."""
        return self.read(key)[1]

    def read(self, key: int) -> tuple[bytes, str]:
        raise NotImplementedError

    def load(self, keys: torch.Tensor) -> Faces:
        images, good, skipped, fixes = [], [], [], collections.Counter()
        for key in keys.tolist():
            try:
                data, where = self.read(key)
                image, made = decode_image(data, where, self.size, self.strict)
            except SourceError as error:
                if self.strict:
                    raise
                skipped.append((key, str(error)))
                continue
            fixes.update(made)
            images.append(image)
            good.append(key)
        key_tensor = torch.tensor(good, dtype=torch.int64)
        hq = stack_channels_first(images) if images else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        return Faces(key=key_tensor, identity=self.identities[key_tensor], hq=hq, skipped=skipped, fixes=fixes)
