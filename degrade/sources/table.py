"""Faces from a table: an HF dataset saved with ``save_to_disk``, Arrow / Parquet files, or a folder
of Parquet shards as the Hugging Face Hub serves a dataset."""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from degrade.machine import out_of_space
from degrade.sources import TABLE_FILES
from degrade.sources.base import EncodedSource, SourceError, decode_raw_pixels, read_failure
from degrade.text import counted

if TYPE_CHECKING:
    import datasets

# WebDataset names a sample's parts by their extensions (jpg, png ...; cls its class), and so do the
# tables converted from its shards.
IMAGE_COLUMNS = ("image", "img", "face", "hq", "jpg", "jpeg", "png", "webp")
# A degrade build has "identity_name" (the names of its source) and "identity" (their numbers).
LABEL_COLUMNS = ("label", "identity_name", "identity", "labels", "id", "cls")


# Arrow's IPC file format (Feather v2) begins with these bytes; the stream format does not.
_ARROW_FILE_MAGIC = b"ARROW1"


def _is_arrow_ipc_file(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC
    except OSError as error:
        raise read_failure(str(path), error) from None


# The Hub names a split's shards SPLIT-00000-of-00004.parquet.
_HUB_SHARD = re.compile(r"(?P<split>.+)-\d+-of-\d+\.parquet")


def parquet_shards(folder: Path) -> list[Path]:
    """The ``.parquet`` files of a folder that holds a table in shards, as a download of a Hugging
    Face Hub dataset does: in the folder itself, in its ``data/`` folder, or in its ``train/`` folder
    (the Hub's Parquet conversion of a dataset: ``CONFIG/train/0000.parquet``), in name order. Where
    the names say which split each holds (``train-00000-of-00004.parquet``), the train split's alone.
    Empty when there are none."""
    for where in (folder, folder / "data", folder / "train"):
        shards = sorted(where.glob("*.parquet"))
        named = [_HUB_SHARD.fullmatch(shard.name) for shard in shards]
        splits = sorted({match["split"] for match in named if match}) if all(named) else []
        if len(splits) > 1:
            if "train" not in splits:
                raise SourceError(f"{where}: Parquet shards of the splits {', '.join(splits)} and none of 'train'; "
                                  "give one shard's path, or a folder holding one split's")
            shards = [shard for shard, match in zip(shards, named) if match["split"] == "train"]
        if shards:
            return shards
    return []


def _check_same_columns(shards: list[Path]) -> None:
    """Refuse shards that are not parts of one table, naming the first whose columns differ (read
    from the files' footers, before ``datasets`` copies any of them)."""
    import pyarrow.parquet as pq

    columns = []
    for shard in shards:
        try:
            columns.append(pq.read_schema(shard).names)
        except pa.ArrowException as error:
            raise SourceError(f"{shard}: not a readable parquet file ({error})") from None
        if columns[-1] != columns[0]:
            raise SourceError(f"{shard}: has the columns {', '.join(columns[-1])}, where {shards[0].name} has "
                              f"{', '.join(columns[0])}; the shards of one table have the same columns")


def open_table(path: Path) -> datasets.Dataset:
    """A ``datasets.Dataset`` for a save_to_disk folder, a ``.parquet`` or an ``.arrow`` file, or a
    folder of Parquet shards (:func:`parquet_shards`, read as one table in their order)."""
    import datasets
    from datasets.builder import DatasetGenerationError  # older versions define it there, newer import it there

    if (path / "dataset_dict.json").is_file():
        path = train_split(path)
    if (path / "state.json").is_file():
        return _opened_build(path) if (path / "degrade.json").is_file() else load_saved(path)
    shards = parquet_shards(path) if path.is_dir() else []
    if path.is_dir() and not shards:
        raise SourceError(f"{path}: not a finished dataset folder (no state.json)")
    if not shards and path.suffix not in TABLE_FILES:
        raise SourceError(f"{path}: expected a dataset folder, a .parquet or an .arrow file")
    if path.suffix == ".feather" or (path.suffix == ".arrow" and _is_arrow_ipc_file(path)):
        raise SourceError(f"{path}: an Arrow IPC (Feather) file, where degrade reads Arrow in the stream format "
                          "`datasets` writes, and Parquet: convert it, e.g. pyarrow.parquet.write_table("
                          f"pyarrow.feather.read_table({str(path)!r}), 'faces.parquet')")
    _check_same_columns(shards)
    try:
        if path.suffix == ".arrow":
            return datasets.Dataset.from_file(str(path))
        return datasets.Dataset.from_parquet([str(shard) for shard in shards] or str(path))
    except (pa.ArrowException, DatasetGenerationError) as error:  # datasets wraps what Arrow says in the latter
        cause = error.__cause__ or error
        if out_of_space(cause):  # the table is whole; the cache's disk is full
            raise SourceError(f"{path}: its copy in the datasets cache ({datasets.config.HF_DATASETS_CACHE}) ran out "
                              "of space; free some there, or set HF_DATASETS_CACHE to a folder on a disk with room "
                              "for about the table's size") from None
        kind = "Parquet shards" if shards else f"{path.suffix[1:]} file"
        raise SourceError(f"{path}: not a readable {kind} ({cause})") from None


def train_split(folder: Path) -> Path:
    """The folder of the 'train' split of a ``DatasetDict`` saved with ``save_to_disk`` (what
    ``load_dataset(...).save_to_disk`` writes: ``dataset_dict.json`` and a folder per split)."""
    listed = read_json(folder / "dataset_dict.json")
    splits = listed.get("splits") if isinstance(listed, dict) else None
    if not isinstance(splits, list):
        raise SourceError(f"{folder / 'dataset_dict.json'}: not the split list of a saved dataset dictionary")
    if not splits:
        raise SourceError(f"{folder}: a dataset dictionary of no splits")
    if "train" not in splits:
        raise SourceError(f"{folder}: a dataset dictionary without a 'train' split (it has {', '.join(map(str, splits))}); "
                          f"give the folder of the split to read, e.g. {folder / str(splits[0])}")
    return folder / "train"


def _opened_build(folder: Path) -> datasets.Dataset:
    """A degrade build, opened as :func:`degrade.arrow.open_dataset` opens one: it also finds a shard
    cut short between two record batches, which reads as a table of fewer rows."""
    from degrade.arrow import BuildError, open_dataset  # here: degrade.arrow imports this module

    try:
        return open_dataset(folder)
    except BuildError as error:
        raise SourceError(str(error)) from None


def load_saved(folder: Path) -> datasets.Dataset:
    """``datasets.load_from_disk`` of a ``save_to_disk`` folder; a SourceError naming the first of its
    Arrow files that is missing or cannot be read (Arrow's own message names none), its state.json
    or dataset_info.json where that cannot be read, or the folder where it holds no rows."""
    import datasets

    files = _saved_data_files(folder)
    if not files:  # datasets' load_from_disk fails on such a folder with an IndexError
        raise SourceError(f"{folder}: the table has no rows")
    if (folder / "dataset_info.json").is_file():
        read_json(folder / "dataset_info.json")
    try:
        return datasets.load_from_disk(str(folder))
    except FileNotFoundError as error:
        raise SourceError(f"{error.filename or folder}: missing; the dataset is incomplete") from None
    except (OSError, pa.ArrowException) as error:
        for entry in files:
            try:
                stream_rows(folder / entry["filename"])
            except (OSError, pa.ArrowException) as problem:
                raise SourceError(f"{folder / entry['filename']}: not a readable Arrow stream ({problem})") from None
        raise SourceError(f"{folder}: cannot be loaded ({error})") from None


def stream_rows(path: Path) -> int:
    """The rows of the Arrow stream file ``path`` (a shard of a saved dataset), read through every
    record batch without copying them; OSError or ArrowException where it cannot be read."""
    with pa.memory_map(str(path)) as mapped:
        return pa.ipc.open_stream(mapped).read_all().num_rows


def _saved_data_files(folder: Path) -> list[dict]:
    """The Arrow files a ``save_to_disk`` folder's state.json lists (none for a table of no rows)."""
    state = read_json(folder / "state.json")
    if not isinstance(state, dict):
        raise SourceError(f"{folder / 'state.json'}: not the state of a saved dataset (a JSON {type(state).__name__})")
    return state.get("_data_files") or []


def read_json(path: Path) -> object:
    """The JSON value in ``path`` (a saved dataset's or a build's record of itself); a SourceError
    naming it where it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SourceError(f"{path}: not readable JSON ({error})") from None


def _usual_column(table: datasets.Dataset, names: tuple[str, ...], features: tuple[str, ...]) -> str | None:
    """The first of ``names`` the table has; else its one column whose HF feature is the first of
    ``features`` the table has (``Image``, ``ClassLabel``: how a Hub dataset marks its images and its
    classes, whatever their column is called, e.g. ``person``; ``binary``: a column of bytes, as a
    table written without ``datasets`` holds its images); None when neither settles it."""
    named = next((column for column in names if column in table.column_names), None)
    if named:
        return named
    kinds = {column: getattr(kind, "dtype", None) if type(kind).__name__ == "Value" else type(kind).__name__
             for column, kind in table.features.items()}
    for feature in features:
        typed = [column for column, kind in kinds.items() if kind == feature]
        if typed:
            return typed[0] if len(typed) == 1 else None
    return None


def _identity_labels(table: datasets.Dataset, column: str, where: Path) -> list[str]:
    """Each row's identity as text: a ``ClassLabel``'s class name (``--exclude-pairs`` matches
    identities by name), any other value as ``str`` gives it. A row without one (null, or a
    ``ClassLabel``'s -1) is refused, naming how many and the first."""
    import datasets

    values = table[column]
    feature = table.features[column]
    if isinstance(feature, datasets.ClassLabel):
        names = feature.names
        labels = [names[v] if v is not None and 0 <= v < len(names) else None for v in values]
    else:
        labels = [None if v is None else str(v) for v in values]
    missing = [row for row, label in enumerate(labels) if label is None]
    if missing:
        raise SourceError(f"{where}: {counted(len(missing), 'row')} without an identity in column {column!r} "
                          f"(the first: row {missing[0]}); fill them in or drop them")
    return labels


def _numbered_identities(table: datasets.Dataset, where: Path) -> tuple[torch.Tensor, list[str]] | None:
    """A degrade build's identities as it numbered them: its ``identity`` column, each number
    named by ``identity_name``, so a build made from a build numbers every face's identity as
    its source did (numbering the names afresh gave the same person other numbers than in a
    build from the original files). None for a table without two such columns, with numbers
    missing or below 0 (a build of an unlabelled verification set), or with numbers far beyond
    its rows (at once over 16 per row and over 4 M, as no build has: the list of names goes up
    to the highest)."""
    columns = table.data.table
    if "identity" not in columns.column_names or not pa.types.is_integer(columns.schema.field("identity").type) \
            or columns.column("identity").null_count:
        return None
    pairs = pa.table({"number": columns.column("identity"), "name": columns.column("identity_name")})
    pairs = pairs.group_by(["number", "name"]).aggregate([]).sort_by("number")
    numbers, names = pairs.column("number").to_numpy(), pairs.column("name").to_pylist()
    if numbers[0] < 0 or numbers[-1] >= max(16 * columns.num_rows, 1 << 22) or None in names:
        return None
    twice = np.flatnonzero(numbers[1:] == numbers[:-1])
    if len(twice):
        first = twice[0]
        raise SourceError(f"{where}: identity {numbers[first]} is named both {names[first]!r} and "
                          f"{names[first + 1]!r} in column 'identity_name'; a degrade build names each identity once")
    identity_names = [""] * (int(numbers[-1]) + 1)
    for number, name in zip(numbers.tolist(), names):
        identity_names[number] = name
    return torch.from_numpy(columns.column("identity").to_numpy().astype(np.int64)), identity_names


class BinaryCells:
    """The cells of a binary column, by row, as NumPy views of its chunks' buffers: nothing copied
    (a null cell is empty). ``column[row].as_py()`` finds the row's chunk and copies the cell into
    new bytes: on one core of the 2-core machine a raw LFW face took 11 us that way, 1 this way."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.starts = np.cumsum([0] + [len(chunk) for chunk in column.chunks[:-1]]).tolist()
        self.chunks = [self._views(chunk) for chunk in column.chunks]

    @staticmethod
    def _views(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(cells + 1,) offsets and the uint8 bytes of one chunk, cell i being bytes[offsets[i]:offsets[i + 1]]."""
        _, offsets, data = chunk.buffers()
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        ends = np.frombuffer(offsets, offset_type)[chunk.offset:chunk.offset + len(chunk) + 1]
        return ends, np.zeros(0, np.uint8) if data is None else np.frombuffer(data, np.uint8)

    def __getitem__(self, row: int) -> np.ndarray:
        chunk = bisect.bisect_right(self.starts, row) - 1
        ends, data = self.chunks[chunk]
        within = row - self.starts[chunk]
        return data[ends[within]:ends[within + 1]]


@dataclasses.dataclass
class _ArrowColumns:
    """The columns a TableSource reads by row, straight from the Arrow table that ``open_table``
    opened from its files (rows in file order, no indices mapping). Through ``datasets``' rows a
    face took 60 us to read on the 2-core machine, its formatting most of it; from the Arrow
    column 4.5 us (`benchmarks/load_rate.py` on a raw build of LFW: 23-25 against 58-88 us per face),
    and from views of its buffers (:class:`BinaryCells`) 1 us."""

    image_bytes: BinaryCells              # each row's encoded image (or raw pixels)
    image_paths: pa.ChunkedArray | None   # an HF Image's path, for rows whose bytes it does not hold
    files: pa.ChunkedArray | None         # a ``file`` text column, naming each row's image

    @classmethod
    def of(cls, table: datasets.Dataset, image_column: str, where: str) -> _ArrowColumns:
        columns = table.data.table
        image = columns.column(image_column)
        kind = image.type
        if _is_binary(kind):
            image_bytes, image_paths = image, None
        elif pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 and _is_binary(kind.field("bytes").type):
            image_bytes = pc.struct_field(image, "bytes")  # the child array itself, not copied
            image_paths = pc.struct_field(image, "path") if kind.get_field_index("path") >= 0 else None
        else:
            raise SourceError(f"{where}: image column {image_column!r} holds {kind}, not image bytes (binary, or "
                              "an Image feature's struct of bytes and path)")
        files = columns.column("file") if "file" in columns.column_names else None
        is_text = files is not None and (pa.types.is_string(files.type) or pa.types.is_large_string(files.type))
        return cls(BinaryCells(image_bytes), image_paths, files if is_text else None)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def holds_raw_pixels(path: Path) -> bool:
    """Whether the table at ``path`` is (a shard of) a ``degrade build --format raw``, whose image
    columns hold raw HxWx3 pixels: its manifest, in the dataset folder or beside the shard file, says so."""
    from degrade.arrow import MANIFEST, read_manifest

    folder = path if path.is_dir() else path.parent
    return (folder / MANIFEST).is_file() and read_manifest(folder).get("format") == "raw"


class TableSource(EncodedSource):
    """Rows of a table with an image column (HF ``Image`` or encoded bytes) and an identity column.
    A raw build's HQ column is read as the pixels it holds, with nothing to decode: a build made
    once from JPEGs serves as the source of builds with other recipes, which number the
    identities as it does and name the faces by its ``file`` column. Other tables number their
    identity labels by length, then alphabet (integer labels 0..C-1 keep their values).

    Args:
        path: dataset folder, .parquet or .arrow file, or folder of Parquet shards.
        image_column, label_column: column names (default: the first of the usual names present, else
            the table's one ``Image`` / ``ClassLabel`` feature).
    """

    def __init__(self, path: str | Path, size: int = 112, strict: bool = False, image_column: str | None = None,
                 label_column: str | None = None) -> None:
        path = Path(path)
        table = open_table(path)
        columns = table.column_names
        image_column = image_column or _usual_column(table, IMAGE_COLUMNS, ("Image", "binary", "large_binary"))
        label_column = label_column or _usual_column(table, LABEL_COLUMNS, ("ClassLabel",))
        if image_column not in columns:
            raise SourceError(f"{path}: no image column (looked for {', '.join(IMAGE_COLUMNS)}, one Image feature, or "
                              f"one column of bytes; has {', '.join(columns)}): rename yours to 'image', or pass "
                              "image_column= to TableSource")
        if label_column not in columns:
            raise SourceError(f"{path}: no identity column (looked for {', '.join(LABEL_COLUMNS)}, or one ClassLabel "
                              f"feature; has {', '.join(columns)}): rename yours to 'label', or pass label_column= to "
                              "TableSource")
        if len(table) == 0:
            raise SourceError(f"{path}: the table has no rows")
        self.name, self.size, self.strict = str(path), size, strict
        self.table = table.select_columns(list(dict.fromkeys(c for c in (image_column, "file") if c in columns)))
        self.image_column = image_column
        self._columns: _ArrowColumns | None = _ArrowColumns.of(self.table, image_column, self.name)
        self.raw_pixels = holds_raw_pixels(path)
        numbered = _numbered_identities(table, path) if label_column == "identity_name" else None
        if numbered is not None:
            self.identities, self.identity_names = numbered
            return
        labels = _identity_labels(table, label_column, path)
        self.identity_names = sorted(set(labels), key=lambda v: (len(v), v))
        lookup = {name: index for index, name in enumerate(self.identity_names)}
        self.identities = torch.tensor(np.array([lookup[label] for label in labels]), dtype=torch.int64)

    def __getstate__(self) -> dict:
        # A spawned worker gets the table by reference to its files (``datasets`` pickles a
        # memory-mapped table as its path) and takes its columns out again; the Arrow columns
        # themselves pickle by value: a raw build of LFW pickled as 398 MB, now 0.17 MB.
        return {**self.__dict__, "_columns": None}

    @property
    def columns(self) -> _ArrowColumns:
        if self._columns is None:
            self._columns = _ArrowColumns.of(self.table, self.image_column, self.name)
        return self._columns

    def sample_name(self, key: int) -> str:
        """The row's ``file`` (a degrade build's: the name its face had in the build's source, so
        attributes keyed by file match a build as they match its source), else ``row KEY``."""
        files = self.columns.files
        name = None if files is None else files[key].as_py()
        return f"row {key}" if name is None else name

    def read(self, key: int) -> tuple[bytes | np.ndarray, str]:
        where = f"{self.name} row {key}"
        columns = self.columns
        data = columns.image_bytes[key]
        if len(data):  # raw pixels are read in place; an encoded image's bytes go to the decoder
            return (data if self.raw_pixels else data.tobytes()), where
        path = None if columns.image_paths is None else columns.image_paths[key].as_py()
        if path:
            try:
                return Path(path).read_bytes(), path
            except OSError as error:
                raise read_failure(f"{where}: its image {path}", error) from None
        return b"", where

    def decode(self, data: bytes | np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
        if self.raw_pixels:
            return decode_raw_pixels(data, where, self.size, self.strict)
        return super().decode(data, where)
