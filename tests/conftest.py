"""Shared fixtures: real LFW faces from ../shared/data (or $DEGRADE_TEST_DATA) when present,
the demo source otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from degrade.engine import to_float

SHARED_DATA = Path(os.environ.get("DEGRADE_TEST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
LFW = SHARED_DATA / "lfw112"
TEACHER = SHARED_DATA / "weights" / "mobilefacenet" / "068.ckpt"


def damage_cell(shard: Path, column: str, row: int) -> None:
    """Shorten the ``column`` cell of ``row`` in the Arrow stream file ``shard`` of a build: a PNG to
    half its bytes, raw pixels by one pixel."""
    with pa.ipc.open_stream(shard.read_bytes()) as reader:  # not mapped: the file is rewritten below
        table = reader.read_all()
    cells = table.column(column).to_pylist()
    cell = cells[row]
    cells[row] = {**cell, "bytes": cell["bytes"][:len(cell["bytes"]) // 2]} if isinstance(cell, dict) else cell[:-3]
    table = table.set_column(table.schema.get_field_index(column), table.schema.field(column),
                             pa.array(cells, table.schema.field(column).type))
    with pa.ipc.new_stream(str(shard), table.schema) as writer:
        writer.write_table(table)


class OpensAFile:
    """Unpickled by a full unpickler, it creates ``path``: what a malicious downloaded file
    (checkpoint, .bin set) could do instead."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="session")
def lfw_source():
    if not (LFW / "images").is_dir():
        pytest.skip(f"real faces not found at {LFW} (the shared data folder beside the checkout)")
    from degrade.sources.folder import FolderSource

    return FolderSource(LFW)


@pytest.fixture(scope="session")
def faces(lfw_source) -> torch.Tensor:
    """64 real aligned faces spread over many identities, (64, 3, 112, 112) float in [0, 1]."""
    keys = torch.arange(0, 64 * 97, 97, dtype=torch.int64)
    return to_float(lfw_source.load(keys).hq)


@pytest.fixture(scope="session")
def small_pairs(lfw_source, tmp_path_factory) -> Path:
    """An LFW-style pairs.txt of 2 folds x (15 same + 15 different) pairs from the official
    folds 1 and 2, beside a link to the real images."""
    folds, per_fold = (LFW / "pairs.txt").read_text().splitlines()[0].split()
    lines = (LFW / "pairs.txt").read_text().splitlines()[1:]
    per_fold = int(per_fold)
    chosen = []
    for fold in range(2):
        start = 2 * per_fold * fold
        chosen += lines[start:start + 15] + lines[start + per_fold:start + per_fold + 15]
    folder = tmp_path_factory.mktemp("pairs")
    (folder / "images").symlink_to(LFW / "images")
    (folder / "pairs.txt").write_text("2\t15\n" + "\n".join(chosen) + "\n")
    return folder / "pairs.txt"


@pytest.fixture
def flat_grey() -> torch.Tensor:
    """(8, 3, 112, 112) of 0.5 everywhere."""
    return torch.full((8, 3, 112, 112), 0.5)


@pytest.fixture
def unreadable_faces(tmp_path) -> Path:
    """A folder source of two identities whose files, ann/1.jpg and bob/2.jpg, are not images."""
    for name in ("ann/1.jpg", "bob/2.jpg"):
        (tmp_path / "faces" / name).parent.mkdir(parents=True)
        (tmp_path / "faces" / name).write_bytes(b"not an image")
    return tmp_path / "faces"


@pytest.fixture(scope="session")
def catface_stage1(tmp_path_factory) -> Path:
    """The last.pt of a one-step `degrade train catface --stage 1` run on IResNet-18 (not the default
    backbone) over the demo source's 100 identities."""
    from click.testing import CliRunner

    from degrade.cli import main

    folder = tmp_path_factory.mktemp("catface")
    table = folder / "attributes.csv"
    table.write_text("identity,Male,Bald,Big Nose,Chubby,Narrow Eyes\n"
                     + "".join(f"demo_{i:05d},{i % 2},0,1,0,{i % 3 == 0:d}\n" for i in range(100)))
    result = CliRunner().invoke(main, ["train", "catface", "--attributes", str(table), "--backbone", "iresnet18",
                                       "--source", "demo", "--steps", "1", "-b", "8", "-j", "0", "--device", "cpu",
                                       "--out", str(folder / "stage1")])
    assert result.exit_code == 0, result.output
    return folder / "stage1" / "last.pt"
