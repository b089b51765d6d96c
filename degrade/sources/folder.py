"""A folder of identity sub-folders of face images: ``root/<identity>/<file>.jpg|png``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SourceError(ValueError):
    """A source that cannot be read; the message names the path and the problem."""


def decode_image(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """Read one image as (size, size, 3) RGB uint8; returns it and whether it was resized.

    Greyscale is repeated to three channels, alpha is dropped, 16-bit is scaled to 8 bits.
    Raises :class:`SourceError` naming the file when it cannot be decoded.
    """
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise SourceError(f"{path}: not a readable image (empty, truncated or not an image format)")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise SourceError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    resized = image.shape[:2] != (size, size)
    if resized:
        shrinking = image.shape[0] > size or image.shape[1] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return image, resized


class FolderSource:
    """Images under ``root/<identity>/``, keys in sorted (identity, file) order.

    A root that holds an ``images/`` folder (as ``../shared/data/lfw112`` does) is read from there.
    """

    def __init__(self, root: str | Path, size: int = 112) -> None:
        root = Path(root)
        if (root / "images").is_dir():
            root = root / "images"
        if not root.is_dir():
            raise SourceError(f"{root}: no such folder")
        self.root, self.size, self.name = root, size, str(root)
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        self.files: list[Path] = []
        identities: list[int] = []
        self.identity_names: list[str] = []
        for folder in folders:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                identities += [len(self.identity_names)] * len(files)
                self.identity_names.append(folder.name)
                self.files += files
        if not self.files:
            raise SourceError(f"{root}: no images found in identity sub-folders (expected {root}/<identity>/<file>.jpg)")
        self.identities = torch.tensor(identities, dtype=torch.int64)
        self.resized = 0

    def __len__(self) -> int:
        return len(self.files)

    def identity_name(self, identity: int) -> str:
        return self.identity_names[identity]

    def relative_path(self, key: int) -> str:
        return self.files[key].relative_to(self.root).as_posix()

    def load_batch(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode images: (N,) int64 keys -> ((N, 3, S, S) uint8, (N,) int64 identities)."""
        images = []
        for key in keys.tolist():
            image, resized = decode_image(self.files[key], self.size)
            self.resized += resized
            images.append(image)
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        return batch, self.identities[keys]
