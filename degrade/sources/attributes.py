"""Per-sample attributes (e.g. soft biometrics for CATFace) from a CSV or TSV file.

The first column is ``file`` (the sample's path relative to its source, as
``Name/Name_0001.jpg``) or ``identity`` (an identity name); every other column is a
number. Samples with no row get NaN.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from degrade.sources import Source
from degrade.sources.base import SourceError


class Attributes:
    """A table of numeric attributes keyed by file or by identity name."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such attributes file")
        text = path.read_text()
        delimiter = "\t" if "\t" in text.splitlines()[0] else ","
        rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
        header = rows[0]
        if header[0] not in ("file", "identity"):
            raise SourceError(f"{path}:1: the first column must be 'file' or 'identity', got {header[0]!r}")
        self.path, self.keyed_by, self.names = path, header[0], header[1:]
        self.values: dict[str, np.ndarray] = {}
        for number, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise SourceError(f"{path}:{number}: {len(row)} fields, the header has {len(header)}")
            try:
                self.values[row[0]] = np.array([float(v) if v != "" else np.nan for v in row[1:]], np.float32)
            except ValueError:
                raise SourceError(f"{path}:{number}: attribute values must be numbers") from None

    def select(self, names: list[str] | tuple[str, ...]) -> Attributes:
        """The same table restricted to ``names`` (in that order)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            raise SourceError(f"{self.path}: no column {missing[0]!r} (has {shown})")
        index = [self.names.index(n) for n in names]
        chosen = object.__new__(Attributes)
        chosen.path, chosen.keyed_by, chosen.names = self.path, self.keyed_by, list(names)
        chosen.values = {k: v[index] for k, v in self.values.items()}
        return chosen

    def lookup(self, source: Source, keys: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
        """(M, A) float32 attributes of the samples ``keys`` of ``source`` (NaN where missing)."""
        missing = np.full(len(self.names), np.nan, np.float32)
        if self.keyed_by == "file":
            names = [source.sample_name(int(k)) for k in keys]
        else:
            names = [source.identity_name(int(i)) for i in identities]
        table = np.stack([self.values.get(name, missing) for name in names]) if names else np.empty((0, len(self.names)))
        return torch.from_numpy(table.astype(np.float32))
