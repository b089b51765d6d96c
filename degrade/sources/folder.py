"""A folder of identity sub-folders of face images: ``root/<identity>/<file>.jpg|png``."""

from __future__ import annotations

from pathlib import Path

import torch

from degrade.sources.base import EncodedSource, SourceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class FolderSource(EncodedSource):
    """Images under ``root/<identity>/``, keys in sorted (identity, file) order.

    A root that holds an ``images/`` folder (as ``../shared/data/lfw112`` does) is read from there.
    """

    def __init__(self, root: str | Path, size: int = 112, strict: bool = False) -> None:
        root = Path(root)
        if (root / "images").is_dir():
            root = root / "images"
        if not root.is_dir():
            raise SourceError(f"{root}: no such folder")
        self.root, self.size, self.strict, self.name = root, size, strict, str(root)
        self.files: list[Path] = []
        identities: list[int] = []
        self.identity_names: list[str] = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                identities += [len(self.identity_names)] * len(files)
                self.identity_names.append(folder.name)
                self.files += files
        if not self.files:
            raise SourceError(f"{root}: no images found in identity sub-folders (expected {root}/<identity>/<file>.jpg)")
        self.identities = torch.tensor(identities, dtype=torch.int64)

    def sample_name(self, key: int) -> str:
        return self.files[key].relative_to(self.root).as_posix()

    def read(self, key: int) -> tuple[bytes, str]:
        path = self.files[key]
        try:
            return path.read_bytes(), str(path)
        except OSError as error:
            raise SourceError(f"{path}: cannot be read ({error.strerror})") from None
