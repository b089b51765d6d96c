"""Verification sets: LFW-style ``pairs.txt`` (any number of folds) and insightface ``.bin`` files."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import torch

from degrade.sources.base import EncodedSource, SourceError, read_failure


@dataclasses.dataclass
class VerificationPairs:
    """P pairs of source keys: ``left``, ``right`` (P,) int64, ``same`` (P,) bool, ``fold`` (P,) int64."""

    left: torch.Tensor
    right: torch.Tensor
    same: torch.Tensor
    fold: torch.Tensor


def parse_pairs_file(path: Path) -> tuple[list[tuple[str, int, str, int, bool, int]], int]:
    """Read an LFW View-2 style file: a ``folds<TAB>n`` line, then per fold n same and n different
    pairs. Errors name the file's line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(f"{path}: not UTF-8 text (byte {error.start + 1}); expected an LFW-style pairs file") from None
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    header_number, header = lines[0] if lines else (1, [])
    try:
        folds, per_fold = int(header[0]), int(header[1])
    except (IndexError, ValueError):
        folds = per_fold = 0
    if folds < 1 or per_fold < 1:
        raise SourceError(f"{path}:{header_number}: expected '<folds><TAB><pairs per half fold>', two positive numbers")
    pairs = []
    for number, fields in lines[1:]:
        if len(fields) not in (3, 4):
            raise SourceError(f"{path}:{number}: expected 3 (same) or 4 (different) fields, got {len(fields)}")
        names, numbers = (fields[:1] * 2, fields[1:]) if len(fields) == 3 else (fields[::2], fields[1::2])
        try:
            a, b = int(numbers[0]), int(numbers[1])
        except ValueError:
            raise SourceError(f"{path}:{number}: expected image numbers, got {' '.join(fields)!r}") from None
        pairs.append((names[0], a, names[1], b, len(fields) == 3, len(pairs) // (2 * per_fold)))
    if len(pairs) != folds * 2 * per_fold:
        raise SourceError(f"{path}: header promises {folds} folds of 2x{per_fold} pairs, found {len(pairs)} pairs")
    return pairs, folds


class PairsSource(EncodedSource):
    """The images an LFW-style pairs file refers to, in order of first appearance.

    Images are ``<images>/<name>/<name>_<NNNN>.jpg`` with ``images`` = the folder ``images``
    beside the pairs file (as in ``../shared/data/lfw112``) unless given. ``pairs`` holds the
    verification pairs as keys of this source.
    """

    def __init__(self, path: str | Path, size: int = 112, strict: bool = False, images: str | Path | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such pairs file")
        self.root = Path(images) if images else path.parent / "images"
        self.name, self.size, self.strict = str(path), size, strict
        entries, self.folds = parse_pairs_file(path)
        self.files: list[str] = []
        index_of: dict[str, int] = {}
        identity_of: dict[str, int] = {}
        identities: list[int] = []

        def key_of(name: str, number: int) -> int:
            relative = f"{name}/{name}_{number:04d}.jpg"
            if relative not in index_of:
                index_of[relative] = len(self.files)
                self.files.append(relative)
                identities.append(identity_of.setdefault(name, len(identity_of)))
            return index_of[relative]

        left, right = [], []
        for name_a, a, name_b, b, _, _ in entries:
            left.append(key_of(name_a, a))
            right.append(key_of(name_b, b))
        self.identity_names = list(identity_of)
        self.identities = torch.tensor(identities, dtype=torch.int64)
        self.pairs = VerificationPairs(left=torch.tensor(left), right=torch.tensor(right),
                                       same=torch.tensor([e[4] for e in entries]),
                                       fold=torch.tensor([e[5] for e in entries]))

    def sample_name(self, key: int) -> str:
        return self.files[key]

    def read(self, key: int) -> tuple[bytes, str]:
        path = self.root / self.files[key]
        if not path.is_file():
            raise SourceError(f"{path}: image named in {self.name} is missing")
        try:
            return path.read_bytes(), str(path)
        except OSError as error:
            raise read_failure(str(path), error) from None


# What an insightface .bin may name besides plain lists, bytes and bools: NumPy arrays and scalars
# (some sets store images or flags as such; NumPy 1 and 2 module names, pickle protocols 2-5) and
# the codec protocol 2 writes bytes with. Nothing else is looked up, so a downloaded file cannot
# make the unpickler call code of its choosing (torch's weights-only unpickler allows the same).
_BIN_GLOBALS = {(f"numpy.{core}.{module}", name) for core in ("core", "_core")
                for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}
_BIN_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _VerificationUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _BIN_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a verification set does not hold "
                                         "(not loaded: unpickling it could run code from the file)")
        return super().find_class(module, name)


class BinSource(EncodedSource):
    """An insightface verification ``.bin``: a pickle of (encoded images, same flags), pairs (2i, 2i+1).

    Identities are unknown (-1); ``pairs`` splits the pairs into 10 consecutive folds as the
    insightface protocol does.
    """

    def __init__(self, path: str | Path, size: int = 112, strict: bool = False, folds: int = 10) -> None:
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                images, same = _VerificationUnpickler(handle, encoding="bytes").load()
        except (OSError, pickle.UnpicklingError, ValueError, TypeError, EOFError) as error:
            raise SourceError(f"{path}: not an insightface .bin verification file ({error})") from None
        if len(images) != 2 * len(same):
            raise SourceError(f"{path}: {len(images)} images for {len(same)} pairs (expected two per pair)")
        self.images = [bytes(image) for image in images]
        self.name, self.size, self.strict, self.folds = str(path), size, strict, folds
        self.identities = torch.full((len(images),), -1, dtype=torch.int64)
        self.identity_names = []
        count = len(same)
        self.pairs = VerificationPairs(left=torch.arange(0, 2 * count, 2), right=torch.arange(1, 2 * count, 2),
                                       same=torch.tensor([bool(s) for s in same]),
                                       fold=torch.arange(count) * folds // max(count, 1))

    def sample_name(self, key: int) -> str:
        return f"image {key}"

    def read(self, key: int) -> tuple[bytes, str]:
        return self.images[key], f"{self.name} {self.sample_name(key)}"


def write_bin(path: str | Path, images: list[bytes], same: list[bool]) -> None:
    """Write an insightface-style .bin (for tests and small custom sets)."""
    with open(path, "wb") as handle:
        pickle.dump((images, same), handle, protocol=4)
