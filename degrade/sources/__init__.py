"""Face sources. ``open_source`` picks one from what the user typed after ``--source``:

* ``demo`` or ``demo:IDENTITIES``: built-in synthetic faces, 10 per identity (100 identities by default);
* a folder with ``train.rec`` / ``train.idx``, or a ``.rec`` file: insightface RecordIO;
* a dataset folder saved with ``save_to_disk`` (of a ``DatasetDict``: its train split), a
  ``.parquet`` or an ``.arrow`` file, or a folder of ``.parquet`` shards (a Hugging Face Hub
  download: in it, its ``data/`` or its ``train/``): a table (a degrade build's HQ faces, a raw
  build's read with nothing to decode);
* a ``pairs.txt``-style file: the images of an LFW-style verification protocol;
* a ``.bin`` file: an insightface verification set;
* any other folder: identity sub-folders of images (at any depth inside each).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch

from degrade.sources.base import Faces, SourceError


class Source(Protocol):
    """What the engine needs of a source: a length, identity names and batched decoding by key."""

    name: str
    size: int

    def __len__(self) -> int: ...

    def identity_name(self, identity: int) -> str: ...

    def sample_name(self, key: int) -> str:
        """The sample's name relative to the source, e.g. ``Name/Name_0001.jpg`` (a build's ``file`` column)."""
        ...

    def load(self, keys: torch.Tensor, out: torch.Tensor | None = None) -> Faces:
        """Decode (N,) int64 keys; unreadable ones are skipped (or raise when the source is strict).
        With ``out``, a contiguous (>= N, 3, S, S) uint8 tensor, the M faces decoded are written
        into its first M rows and ``hq`` is that view of it."""
        ...


# Files read as one table. An .arrow file is the stream format `datasets` writes; a .feather file (the
# IPC file format) is taken only to say how to convert it.
TABLE_FILES = (".parquet", ".arrow", ".feather")
# Files a dataset is often downloaded as (WebDataset's shards are tar files), read once unpacked.
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


def open_source(spec: str, size: int = 112, strict: bool = False) -> Source:
    """The source named by ``spec`` (see the module docstring)."""
    if spec == "demo" or spec.startswith("demo:"):
        from degrade.sources.demo import DemoSource

        identities = spec.partition(":")[2] or "100"
        if not identities.isdigit() or int(identities) < 1:
            raise SourceError(f"{spec}: expected 'demo' or 'demo:IDENTITIES' (10 faces each), e.g. demo:20000")
        return DemoSource(identities=int(identities), size=size)
    if not Path(spec).exists():
        raise SourceError(f"{spec}: no such file or folder (and not 'demo')")
    # Named by its absolute path, so that a build's record of its source (checked when it resumes)
    # is the same from any working directory, and another folder's faces/ is not taken for it.
    path = Path(os.path.abspath(spec))
    if path.suffix == ".rec" or (path / "train.rec").is_file():
        from degrade.sources.recordio import RecordIOSource

        return RecordIOSource(path, size, strict)
    if path.suffix in TABLE_FILES or any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
        from degrade.sources.table import TableSource

        return TableSource(path, size, strict)
    if path.is_dir():
        from degrade.sources.table import TableSource, parquet_shards

        if parquet_shards(path):
            return TableSource(path, size, strict)
    if path.suffix == ".bin":
        from degrade.sources.pairs import BinSource

        return BinSource(path, size, strict)
    if path.is_file() and path.suffix == ".txt":
        from degrade.sources.pairs import PairsSource

        return PairsSource(path, size, strict)
    if path.is_file():
        archive = "; an archive: unpack it and give its folder" if path.name.lower().endswith(ARCHIVES) else ""
        raise SourceError(f"{path}: not a kind of source degrade reads (a folder of identity sub-folders, an insightface "
                          f".rec, a .parquet or .arrow table, an LFW-style pairs .txt or a .bin verification set){archive}")
    from degrade.sources.folder import FolderSource

    return FolderSource(path, size, strict)


__all__ = ["Faces", "Source", "SourceError", "open_source"]
