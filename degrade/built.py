"""Reading a built dataset back as pairs: rows -> :class:`PairBatch` (uint8, CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from degrade.arrow import REMAKE, BuildError, open_dataset, read_manifest, shard_of_row
from degrade.engine import PairBatch
from degrade.layout import stack_channels_first
from degrade.recipe import Recipe, RecipeError, parse_recipe, recipe_data
from degrade.sources import SourceError
from degrade.sources.table import BinaryCells
from degrade.text import did_you_mean


def recipe_of(folder: Path, manifest: dict) -> Recipe:
    """The recipe the build in ``folder`` was made with, from the text its manifest (``degrade.json``)
    keeps, and with the seed it drew with (the recipe's own or ``--seed``); a BuildError naming the
    folder where it cannot be loaded (an op of its own that this Python cannot import)."""
    text = manifest["recipe_text"]
    try:
        recipe = parse_recipe(recipe_data(text), source=manifest["recipe"], text=text)
    except RecipeError as error:
        raise BuildError(f"{folder}: its recipe cannot be loaded here ({error})") from None
    return dataclasses.replace(recipe, seed=manifest["seed"])


def flat_table(table: pa.Table) -> pa.Table:
    """Struct columns flattened to dotted names ('params.resize.side')."""
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    return table


def flat_params(table: pa.Table) -> dict[str, np.ndarray]:
    """The params column as {'stage.field': (N,) array}."""
    params = flat_table(table.select(["params"]))
    return {name[len("params."):]: params.column(name).to_numpy(zero_copy_only=False) for name in params.column_names}


def gather_rows(table: pa.Table, batches: list[pa.RecordBatch], starts: np.ndarray, rows: np.ndarray) -> pa.Table:
    """The ``rows`` (indices into ``table``, any order) as a table of one-row slices of its record
    ``batches`` (``table.to_batches()``, whose first rows are ``starts``): nothing is copied, and
    only the pages of those rows are read. (``pa.Table.take`` combines all the chunks of a column
    first: on a 50 k-pair raw build, 3.7 GB, the first batch of 256 rows took 5.6 s and 5.8 GB of
    memory, and each one after it 0.31 s; this, 32 and 36-42 ms.)"""
    batch_of = np.searchsorted(starts, rows, side="right") - 1
    return pa.Table.from_batches([batches[b].slice(row - starts[b], 1) for b, row in zip(batch_of, rows)],
                                 schema=table.schema)


def _pixels(data: np.ndarray, image_format: str, side: int) -> np.ndarray | None:
    """(side, side, 3) uint8 RGB from a cell's bytes (a PNG, or raw HxWx3 pixels); None where the
    cell holds no such image (a damaged file)."""
    if image_format == "png":
        image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None
    else:
        image = data.reshape(side, side, 3) if data.size == 3 * side * side else None
    return image if image is not None and image.shape == (side, side, 3) else None


class BuiltPairs:
    """A finished build, read by row: ``load(rows)`` gives the stored pairs as a CPU PairBatch.

    Small native LQ faces (BTNet) are placed top-left in a zero canvas, as the engine makes them.
    ``attribute_columns`` picks (and orders) the stored attributes a batch carries; None: all, []: none.
    The dataset is opened lazily, so the object can be sent to DataLoader workers.
    """

    def __init__(self, folder: str | Path, attribute_columns: list[str] | tuple[str, ...] | None = None) -> None:
        self.folder = Path(folder)
        dataset = open_dataset(self.folder)
        self.manifest = read_manifest(self.folder)
        self.recipe = recipe_of(self.folder, self.manifest)
        self.name = str(self.folder)
        self._length = len(dataset)
        highest = pc.max(dataset.data.table.column("identity")).as_py()
        self.num_identities = 0 if highest is None else highest + 1  # identities are numbered from 0
        self._table: pa.Table | None = None
        self._batches: list[pa.RecordBatch] = []
        self._starts = np.zeros(0, dtype=np.int64)
        self._cells: dict[str, BinaryCells] = {}  # the bytes of each 'hq' and 'lq' cell
        stored = dataset.features.get("attributes")
        self.attribute_names: list[str] = list(stored) if stored else []
        if isinstance(attribute_columns, str):  # its letters would be taken for the column names
            raise TypeError(f"{self.folder}: attribute_columns is a str; give a list of names: [{attribute_columns!r}]")
        missing = [name for name in attribute_columns or () if name not in self.attribute_names]
        if missing:
            raise ValueError(f"{self.folder}: the build has no attribute {missing[0]!r}"
                             f"{did_you_mean(missing[0], self.attribute_names)} "
                             f"(it has {', '.join(self.attribute_names) or 'no attributes'})")
        self.attribute_columns = self.attribute_names if attribute_columns is None else list(attribute_columns)

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None, "_batches": [], "_cells": {}}

    def _rows(self, rows: torch.Tensor) -> pa.Table:
        if len(rows) and not (0 <= int(rows.min()) and int(rows.max()) < len(self)):
            raise IndexError(f"{self.folder}: rows {int(rows.min())}..{int(rows.max())} asked of a build of {len(self)}")
        if self._table is None:
            self._table = open_dataset(self.folder).data.table
            self._batches = self._table.to_batches()
            self._starts = np.cumsum([0] + [len(batch) for batch in self._batches[:-1]])
            self._cells = {column: BinaryCells(pc.struct_field(self._table.column(column), "bytes")
                                               if self.manifest["format"] == "png" else self._table.column(column))
                           for column in ("hq", "lq")}
        return gather_rows(self._table, self._batches, self._starts, rows.numpy())

    def _faces(self, table: pa.Table, rows: torch.Tensor, column: str, sides: list[int]) -> list[np.ndarray]:
        """The (side, side, 3) uint8 RGB faces of ``column`` ('hq' or 'lq') of the build's ``rows``,
        gathered in ``table``; a SourceError naming the shard and the key of the first cell that holds
        no such face."""
        cells, image_format = self._cells[column], self.manifest["format"]
        faces = [_pixels(cells[row], image_format, side) for row, side in zip(rows.tolist(), sides)]
        damaged = next((i for i, face in enumerate(faces) if face is None), None)
        if damaged is not None:
            side, kind = sides[damaged], "PNG" if image_format == "png" else "raw pixels"
            raise SourceError(f"{shard_of_row(self.folder, int(rows[damaged]))}: the {column} face of key "
                              f"{table.column('key')[damaged].as_py()} is not a readable {side}x{side} RGB image "
                              f"({kind}); the shard is damaged: delete it and {REMAKE}")
        return faces

    def load(self, rows: torch.Tensor) -> PairBatch:
        table = self._rows(rows)
        recipe = self.recipe
        params = {k: torch.from_numpy(np.array(v)) for k, v in flat_params(table).items()}
        sides = recipe.native_sides(params)
        canvas = recipe.output_size
        if table.num_rows == 0:
            hq = torch.empty(0, 3, recipe.size, recipe.size, dtype=torch.uint8)
            lq = torch.empty(0, 3, canvas, canvas, dtype=torch.uint8)
        else:
            hq = stack_channels_first(self._faces(table, rows, "hq", [recipe.size] * table.num_rows))
            lq_sides = [canvas] * table.num_rows if sides is None else sides.tolist()
            lq_faces = self._faces(table, rows, "lq", lq_sides)
            if sides is None:
                lq = stack_channels_first(lq_faces)
            else:
                lq = torch.zeros(len(hq), 3, canvas, canvas, dtype=torch.uint8)
                for canvas_of_pair, face, side in zip(lq.numpy(), lq_faces, lq_sides):
                    canvas_of_pair[:, :side, :side] = face.transpose(2, 0, 1)
        attributes = None
        if self.attribute_columns:
            columns = flat_table(table.select(["attributes"]))
            attributes = torch.stack([torch.tensor(columns.column(f"attributes.{name}").to_numpy(zero_copy_only=False)
                                                   .astype("float32")) for name in self.attribute_columns], dim=1)
        return PairBatch(key=torch.tensor(table.column("key").to_numpy()),
                         identity=torch.tensor(table.column("identity").to_numpy()), hq=hq, lq=lq, params=params,
                         attributes=attributes)
