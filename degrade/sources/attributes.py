"""Per-sample attributes (e.g. soft biometrics for CATFace) from a CSV or TSV file.

The first column is ``file`` (the sample's path relative to its source, as
``Name/Name_0001.jpg``) or ``identity`` (an identity name); every other column is a finite
number, blank where not known (NaN). Keys and the source's names are compared in Unicode's
composed form, so a folder copied from macOS (decomposed names) matches. Samples with no row get
NaN; a table in which none of the samples looked up has a row (keys that name them some other
way) is refused before a build or a stream starts.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import torch

from degrade.sources import Source
from degrade.sources.base import SourceError
from degrade.text import did_you_mean, first_few, matchable


PROBED_SAMPLES = 1000  # looked up by ``Attributes.check_names``
SAVE_AS_UTF8 = "save the table as a UTF-8 CSV or TSV"


class Attributes:
    """A table of numeric attributes keyed by file or by identity name.

    Read by Arrow's CSV reader into one (rows, attributes) float32 array and a dict from key to
    row: a 1,000,000-row, 5-attribute TSV loads in 0.5-0.7 s and adds 174-280 MB to the process,
    where parsing it row by row into a small array per key took 3.4 s and 425 MB (2-core machine,
    docs/benchmarks.md). A key may be listed again with the same values, not with others.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(os.path.abspath(path))  # as a build records it
        if not path.is_file():
            raise SourceError(f"{path}: no such attributes file")
        with open(path, "rb") as handle:
            first_line = _text(path, handle.readline()).removeprefix("\ufeff")  # a spreadsheet's CSV may start with a BOM
        delimiter = "\t" if "\t" in first_line else ","
        header = next(csv.reader([first_line.rstrip("\r\n")], delimiter=delimiter)) or [""]  # [] for an empty file
        if header[0] not in ("file", "identity"):
            raise SourceError(f"{path}:1: the first column must be 'file' or 'identity', got {header[0]!r}")
        repeated = next((name for number, name in enumerate(header) if name in header[:number]), None)
        if repeated is not None:
            raise SourceError(f"{path}:1: two columns are named {repeated!r}")
        types = {name: pa.float32() for name in header[1:]} | {header[0]: pa.string()}
        try:
            table = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter),
                                    convert_options=pa_csv.ConvertOptions(column_types=types))
        except pa.ArrowInvalid as error:  # a row with another number of fields, a value that is not a number
            message = re.sub(r"In CSV column #(\d+)", lambda found: f"column {header[int(found[1])]!r}", str(error))
            raise SourceError(f"{path}: {message}{': ' + SAVE_AS_UTF8 if 'invalid UTF8' in message else ''}") from None
        if table.num_rows == 0:
            raise SourceError(f"{path}: no rows after the header")
        self.path, self.keyed_by, self.names = path, header[0], header[1:]
        keys = [matchable(key) for key in table.column(0).to_pylist()]
        self.rows = dict(zip(keys, range(len(keys))))
        # One more row of NaN at the end: where keys with no row of their own look.
        values = np.full((table.num_rows + 1, len(self.names)), np.nan, np.float32)
        for column in range(len(self.names)):
            values[:-1, column] = table.column(column + 1).to_numpy(zero_copy_only=False)
        infinite = np.argwhere(np.isinf(values))
        if len(infinite):
            row, column = infinite[0]
            raise SourceError(f"{path}: {self.keyed_by} {keys[row]!r} has {self.names[column]} = {values[row, column]} "
                              f"(data row {row + 1}, after the header); leave the cell empty where it is not known")
        if len(self.rows) < len(keys):
            self._refuse_rows_that_disagree(keys, values)
        self.values = values

    def _refuse_rows_that_disagree(self, keys: list[str], values: np.ndarray) -> None:
        """A key listed more than once is fine while its rows hold the same values (NaN equal to NaN);
        otherwise which one holds is not known, and the file is refused."""
        first_row: dict[str, int] = {}
        for row, key in enumerate(keys):
            first = first_row.setdefault(key, row)
            if first != row and not np.array_equal(values[first], values[row], equal_nan=True):
                raise SourceError(f"{self.path}: {self.keyed_by} {key!r} has rows that differ (data rows {first + 1} "
                                  f"and {row + 1}, after the header); keep one")

    def select(self, names: list[str] | tuple[str, ...]) -> Attributes:
        """The same table restricted to ``names`` (in that order)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise SourceError(f"{self.path}: no column {missing[0]!r}{did_you_mean(missing[0], self.names)} "
                              f"(has {first_few(self.names, 8)})")
        chosen = object.__new__(Attributes)
        chosen.path, chosen.keyed_by, chosen.names, chosen.rows = self.path, self.keyed_by, list(names), self.rows
        chosen.values = self.values[:, [self.names.index(n) for n in names]]
        return chosen

    def fingerprint(self) -> str:
        """A SHA-256 hex digest of what the table says (its key column, column names, keys and values),
        not of its path or layout: a run resumed with another table, or an edited one, differs here."""
        digest = hashlib.sha256("\t".join([self.keyed_by, *self.names]).encode())
        digest.update("\n".join(self.rows).encode())
        digest.update(np.ascontiguousarray(self.values).tobytes())
        return digest.hexdigest()

    def _names(self, source: Source, keys: torch.Tensor, identities: torch.Tensor) -> list[str]:
        """What the table's first column would say for the samples ``keys`` (of ``identities``), composed
        as the table's keys are (:func:`matchable`)."""
        if self.keyed_by == "file":
            return [matchable(source.sample_name(int(k))) for k in keys]
        return [matchable(source.identity_name(int(i))) for i in identities]

    def lookup(self, source: Source, keys: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        """(M, A) float32 attributes of the samples ``keys`` of ``source`` (NaN where missing)."""
        rows = np.array([self.rows.get(name, -1) for name in self._names(source, keys, identities)], np.int64)
        return torch.from_numpy(self.values[rows])

    def check_names(self, source: Source, count: int) -> None:
        """Refuse the table when none of the first ``count`` samples of ``source`` has a row: its keys
        name samples some other way (another path layout, another dataset), and every attribute
        would be NaN. Looks at up to ``PROBED_SAMPLES`` of them, spread evenly."""
        keys = torch.linspace(0, count - 1, min(count, PROBED_SAMPLES)).round().long().unique()
        names = self._names(source, keys, source.identities[keys])
        if not any(name in self.rows for name in names):
            raise SourceError(f"{self.path}: none of {len(keys)} samples of {source.name}, looked up by {self.keyed_by}, "
                              f"has a row (the table's first {self.keyed_by} is {next(iter(self.rows), '')!r}, the "
                              f"source's {names[0]!r})")


def _text(path: Path, line: bytes) -> str:
    """``line`` of the table at ``path`` decoded as UTF-8, which the table must be: names in another
    encoding (a spreadsheet's Latin-1 export) would match no file name of the source."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not UTF-8 text (byte 0x{line[error.start]:02x} at {error.start + 1} of its first "
                          f"line): {SAVE_AS_UTF8}") from None
