"""A folder of identity sub-folders of face images: ``root/<identity>/[...]/<file>.jpg|png``."""

from __future__ import annotations

import collections
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from degrade.sources.base import EncodedSource, SourceError, read_failure
from degrade.text import counted, first_few, readable

# torchvision ImageFolder's image files, JPEG's other names (.jfif from web downloads), and GIF:
# older face sets come as PGM (ORL) or PPM (FERET).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".gif")
# Folders of images per identity folder, on average, above which the identity folders look like a
# dataset's splits (faces/train/<identity>/...) rather than identities with sessions (alice/session1/).
SPLIT_SUBFOLDERS = 50


class FolderSource(EncodedSource):
    """Images under ``root/<identity>/``, at any depth (``alice/session1/0001.jpg`` is alice's, as
    torchvision's ``ImageFolder`` reads it), keys in sorted (identity, path within it) order.
    Hidden files and folders (``.ipynb_checkpoints``, macOS's ``._*``) are not read; links to
    folders inside an identity are not followed.

    A root that holds an ``images/`` folder (as ``../shared/data/lfw112`` does) is read from there.
    Files that are not read, by their suffix or by lying directly in the root, are counted in one
    warning (an error when no image is read), so that faces are not left out unnoticed; so are
    folders with no image (not identities: the others' numbers close up), and identity folders
    that look like a dataset's splits, each holding the identities' folders.
    """

    def __init__(self, root: str | Path, size: int = 112, strict: bool = False) -> None:
        root = Path(root)
        if (root / "images").is_dir():
            root = root / "images"
        if not root.is_dir():
            raise SourceError(f"{root}: no such folder")
        self.root, self.size, self.strict, self.name = root, size, strict, str(root)
        names: list[bytes] = []
        counts: list[int] = []
        self.identity_names: list[str] = []
        other_suffixes: collections.Counter = collections.Counter()
        subfolders = 0
        imageless: list[str] = []
        entries = [entry for entry in os.scandir(root) if not _hidden(entry.name)]
        loose_images = sum(1 for entry in entries if entry.is_file() and _suffix(entry.name) in IMAGE_SUFFIXES)
        for folder in sorted(entry.name for entry in entries if entry.is_dir()):
            files = sorted(_images_within(root / folder, other_suffixes))
            if files:
                self.identity_names.append(readable(folder))
                counts.append(len(files))
                names += [os.fsencode(f"{folder}/{file}") for file in files]
                subfolders += len({file.split("/", 1)[0] for file in files if "/" in file})
            else:
                imageless.append(readable(folder))
        notes = _not_read(root, other_suffixes, loose_images)
        if imageless and names:
            notes.append(f"{counted(len(imageless), 'folder')} with no image not taken as identities "
                         f"({first_few(imageless)})")
        if not names:
            raise SourceError(f"{root}: no images found in identity sub-folders (expected {root}/<identity>/<file>.jpg)"
                              + "".join(f"; {line}" for line in notes))
        if subfolders >= SPLIT_SUBFOLDERS * len(counts):
            notes.append(f"its {counted(len(counts), 'identity folder')} ({first_few(self.identity_names)}) "
                         f"{'holds' if len(counts) == 1 else 'hold'} "
                         f"{subfolders:,} folders of images: if those are "
                         f"the identities, give the folder that holds them as the source "
                         f"({root / self.identity_names[0]})")
        self.identities = torch.from_numpy(np.repeat(np.arange(len(counts), dtype=np.int64), counts))
        # The relative paths as the file system's bytes, joined, and where each ends, not a list of Paths: forked
        # decoding workers copy the pages of the Python objects they touch (reference counts).
        # 200,000 files: 15 against 60 MiB to hold, 8 against 62 MiB copied by a worker that read
        # them all, and scanned in 0.46 against 1.47 s.
        self._names = b"".join(names)
        self._ends = np.cumsum([len(name) for name in names])
        if not _is_utf8(self._names):  # one check of them all (25 ms for 200,000 names one by one)
            not_utf8 = [self.sample_name(key) for key, name in enumerate(names) if not _is_utf8(name)]
            notes.append(f"{counted(len(not_utf8), 'file name')} not UTF-8 ({first_few(not_utf8)}): read, and named with "
                         "\\x escapes in the file and identity_name columns")
        if notes:
            warnings.warn(f"{root}: " + "; ".join(notes), stacklevel=2)

    def _path_bytes(self, key: int) -> bytes:
        """The file system's bytes of the path of sample ``key`` within the root."""
        start = int(self._ends[key - 1]) if key else 0
        return self._names[start:int(self._ends[key])]

    def sample_name(self, key: int) -> str:
        return self._path_bytes(key).decode("utf-8", "backslashreplace")

    def read(self, key: int) -> tuple[bytes, str]:
        where = str(self.root / self.sample_name(key))
        try:
            return (self.root / os.fsdecode(self._path_bytes(key))).read_bytes(), where
        except OSError as error:
            raise read_failure(where, error) from None


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _suffix(name: str) -> str:
    """A file name's suffix in lower case, as IMAGE_SUFFIXES writes them ('' for none)."""
    return os.path.splitext(name)[1].lower()


def _images_within(folder: str | Path, other_suffixes: collections.Counter, prefix: str = "") -> list[str]:
    """The image files under ``folder`` at any depth, as ``prefix`` + their path relative to it,
    in no particular order; the other files are counted in ``other_suffixes`` by their suffix."""
    found = []
    for entry in os.scandir(folder):
        if _hidden(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            found += _images_within(entry.path, other_suffixes, f"{prefix}{entry.name}/")
        elif (suffix := _suffix(entry.name)) in IMAGE_SUFFIXES:
            found.append(prefix + entry.name)
        else:
            other_suffixes[suffix or "no suffix"] += 1
    return found


def _not_read(root: Path, other_suffixes: collections.Counter, loose_images: int) -> list[str]:
    """What a folder source leaves out that a user may have meant as faces, one phrase each: the
    files in identity folders whose suffix is not an image's (the most common suffix first), and
    the ``loose_images`` lying directly in ``root``."""
    phrases = []
    if other_suffixes:
        by_count = sorted(other_suffixes.items(), key=lambda item: (-item[1], item[0]))
        kinds = ", ".join(f"{suffix} {count:,}" for suffix, count in by_count)
        phrases.append(f"{counted(other_suffixes.total(), 'file')} in identity folders not read, not images by their "
                       f"suffix ({kinds}; images are {' '.join(IMAGE_SUFFIXES)})")
    if loose_images:
        phrases.append(f"{counted(loose_images, 'image')} directly in it not read (faces are read from identity "
                       f"sub-folders, {root}/<identity>/)")
    return phrases
