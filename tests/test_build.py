"""Building Arrow datasets from real faces, resuming, splitting over ranks, and streaming pairs."""

import errno
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

from degrade import arrow
from degrade.arrow import BuildError, build_dataset, open_dataset
from degrade.built import BuiltPairs
from degrade.cli import main
from degrade.engine import degrade_uint8, make_pairs, to_float, to_uint8
from degrade.inspect import describe_dataset, verify_dataset
from degrade.recipe import load_recipe
from degrade.sources import open_source
from degrade.sources.attributes import Attributes
from degrade.sources.base import SourceError
from degrade.sources.subset import SubsetSource
from degrade.stream import PairStream, prefetched

from .conftest import LFW, damage_cell


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.endswith(".partial")}


@pytest.mark.parametrize("image_format", ["png", "raw"])
@pytest.mark.parametrize("recipe_name", ["realworld", "btnet"])
def test_lfw_round_trip_gives_the_engines_pairs(tmp_path, lfw_source, image_format, recipe_name):
    recipe = load_recipe(recipe_name)
    build_dataset(recipe, lfw_source, tmp_path / "ds", limit=48, batch_size=20, shard_size=32,
                  image_format=image_format, progress=False)
    stored = BuiltPairs(tmp_path / "ds").load(torch.tensor([0, 21, 47]))
    expected = make_pairs(recipe, lfw_source, torch.tensor([0, 21, 47]))
    assert torch.equal(stored.key, expected.key) and torch.equal(stored.identity, expected.identity)
    assert torch.equal(stored.hq, expected.hq)
    assert torch.equal(stored.lq, expected.lq)
    for name, values in expected.params.items():
        assert torch.allclose(stored.params[name].to(values.dtype), values), name
    assert torch.equal(to_uint8(recipe.apply(to_float(stored.hq), stored.params)), stored.lq)  # the rows replay


def test_a_build_read_back_gives_the_recipe_it_was_made_with_and_its_seed(tmp_path):
    recipe = load_recipe("maug")
    build_dataset(recipe, open_source("demo"), tmp_path / "ds", seed=7, limit=16, progress=False)
    pairs = BuiltPairs(tmp_path / "ds")
    assert pairs.recipe.text == recipe.text and pairs.recipe.seed == 7 != recipe.seed
    stored = pairs.load(torch.arange(16))
    assert torch.equal(degrade_uint8(pairs.recipe, stored.hq, stored.key)[0], stored.lq)


def test_a_builds_rows_load_in_any_order_across_its_batches_and_shards(tmp_path):
    recipe, source = load_recipe("maug"), open_source("demo")
    build_dataset(recipe, source, tmp_path / "ds", limit=40, batch_size=8, shard_size=16, image_format="raw",
                  progress=False)
    pairs, rows = BuiltPairs(tmp_path / "ds"), [39, 0, 15, 16, 8, 39, 23]  # shard and batch edges, a repeat
    stored, dataset = pairs.load(torch.tensor(rows)), open_dataset(tmp_path / "ds")
    for n, row in enumerate(rows):
        as_read = dataset[row]
        assert int(stored.key[n]) == as_read["key"] == row
        assert stored.lq[n].permute(1, 2, 0).numpy().tobytes() == as_read["lq"]
        assert int(stored.params["resize.side"][n]) == as_read["params"]["resize"]["side"]
    assert pairs.num_identities == int(make_pairs(recipe, source, torch.arange(40)).identity.max()) + 1
    with pytest.raises(IndexError, match="rows 3..40 asked of a build of 40"):
        pairs.load(torch.tensor([3, 40]))
    none = pairs.load(torch.tensor([], dtype=torch.int64))
    assert none.hq.shape == (0, 3, 112, 112) and none.lq.shape[0] == 0 and none.params["resize.side"].dtype == torch.int64


def test_a_raw_build_is_a_source_that_gives_the_same_pairs_as_the_faces_it_was_made_from(tmp_path):
    demo = open_source("demo")
    build_dataset(load_recipe("maug"), demo, tmp_path / "hq", limit=40, batch_size=16, shard_size=16,
                  image_format="raw", progress=False)
    stored = open_source(str(tmp_path / "hq"))
    keys = torch.tensor([0, 17, 39])
    assert len(stored) == 40 and torch.equal(stored.load(keys).hq, demo.load(keys).hq)
    assert [stored.identity_name(int(i)) for i in stored.load(keys).identity] == \
        [demo.identity_name(int(i)) for i in demo.load(keys).identity]
    catface = load_recipe("catface")
    build_dataset(catface, stored, tmp_path / "again", batch_size=16, image_format="raw", progress=False)
    assert torch.equal(BuiltPairs(tmp_path / "again").load(torch.arange(40)).lq,
                       make_pairs(catface, demo, torch.arange(40)).lq)


@pytest.mark.parametrize("image_format", ["png", "raw"])
def test_a_cpu_build_degrades_and_encodes_in_its_decoding_workers_and_writes_the_same_bytes(
        tmp_path, lfw_source, image_format):
    recipe = load_recipe("mixed_no_turbulence")
    for workers in (0, 2):
        build_dataset(recipe, lfw_source, tmp_path / f"workers{workers}", limit=40, batch_size=16, shard_size=32,
                      num_workers=workers, image_format=image_format, progress=False)
    keys = torch.arange(40)
    in_process, in_workers = (BuiltPairs(tmp_path / f"workers{w}").load(keys) for w in (0, 2))
    assert torch.equal(in_workers.key, keys) and torch.equal(in_workers.lq, in_process.lq)
    assert torch.equal(in_workers.hq, in_process.hq)
    shards = sorted(p.name for p in (tmp_path / "workers0").glob("*.arrow"))
    assert len(shards) == 2
    assert all((tmp_path / "workers0" / name).read_bytes() == (tmp_path / "workers2" / name).read_bytes()
               for name in shards)


def test_attributes_become_a_column_with_nulls_where_missing_that_the_build_and_inspect_summarise(tmp_path, lfw_source):
    summary = build_dataset(load_recipe("catface"), lfw_source, tmp_path / "ds", limit=30, shard_size=16,
                            attributes=Attributes(LFW / "attributes.tsv"), progress=False)
    dataset = open_dataset(tmp_path / "ds")
    row = dataset[3]
    assert set(row["attributes"]) >= {"Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes"}
    assert row["attributes"]["Male"] in (0.0, 1.0, None)
    has = [r["Male"] is not None for r in dataset["attributes"]]
    assert sum(has) > 20 and summary.without_attributes == 30 - sum(has)
    male = sum(r["Male"] for r in dataset["attributes"] if r["Male"] is not None) / sum(has)
    described = describe_dataset(tmp_path / "ds")
    assert f"  attributes: 74 columns of float, on {sum(has)} of 30 pairs, mean over those:\n" in described
    assert re.search(rf"(?m)(^    |, )Male {male:.2f}(,|$)", described)
    def first_batch(columns):
        return next(iter(PairStream.from_dataset(tmp_path / "ds", columns, batch_size=30, shuffle=False)))

    assert first_batch(None)["attributes"].shape == (30, 74) and "attributes" not in first_batch([])
    assert torch.equal(first_batch(["Male"])["attributes"][:, 0].nan_to_num(-1),
                       torch.tensor([-1.0 if r["Male"] is None else r["Male"] for r in dataset["attributes"]]))


def test_a_build_says_how_many_pairs_no_row_of_the_attributes_table_names(tmp_path, lfw_source):
    """Keys that name only some samples (another spelling of some names) leave the others' attributes
    null; inspect showed it, the build said nothing. A row whose cells are all blank counts as none."""
    names = [lfw_source.sample_name(k) for k in range(30)]
    (tmp_path / "a.tsv").write_text("file\tMale\tBald\n" + "".join(f"{name}\t1\t0\n" for name in names[:12])
                                    + f"{names[12]}\t\t\n{names[13]}\t\t1\n")
    summary = build_dataset(load_recipe("catface"), lfw_source, tmp_path / "ds", limit=30, shard_size=16,
                            attributes=Attributes(tmp_path / "a.tsv"), progress=False)
    assert summary.without_attributes == 17  # 16 without a row and the blank one, over both shards
    assert "no attributes for 17 of the 30 pairs: no row of the table names them" in summary.describe()
    assert "  attributes: 2 columns of float, on 13 of 30 pairs" in describe_dataset(tmp_path / "ds")
    with pytest.raises(ValueError, match=re.escape("the build has no attribute 'male'; did you mean 'Male'? (it has "
                                                   "Male, Bald)")):
        BuiltPairs(tmp_path / "ds", ["male"])
    with pytest.raises(TypeError, match=re.escape("attribute_columns is a str; give a list of names: ['Male']")):
        PairStream.from_dataset(tmp_path / "ds", "Male", batch_size=8)


def test_an_attributes_table_that_names_no_sample_of_the_source_is_refused_before_any_work(tmp_path, lfw_source):
    (tmp_path / "a.tsv").write_text("file\tMale\nnobody.jpg\t1\n")  # every attribute would be NaN
    table = Attributes(tmp_path / "a.tsv")
    says = (r"a.tsv: none of 30 samples of .*lfw112.*, looked up by file, has a row "
            r"\(the table's first file is 'nobody.jpg', the source's 'AJ_Cook/AJ_Cook_0001.jpg'\)")
    with pytest.raises(SourceError, match=says):
        build_dataset(load_recipe("catface"), lfw_source, tmp_path / "ds", limit=30, attributes=table, progress=False)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(SourceError, match="none of 1000 samples"):
        PairStream.from_source(load_recipe("catface"), lfw_source, batch_size=8, attributes=table)


def test_a_build_folder_that_is_not_there_or_not_a_folder_is_named_as_such(tmp_path):
    with pytest.raises(BuildError, match=re.escape(f"{tmp_path / 'nowhere'}: no such folder")):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "pairs.arrow").write_bytes(b"")
    with pytest.raises(BuildError, match=re.escape(f"{tmp_path / 'pairs.arrow'}: not a folder")):
        open_dataset(tmp_path / "pairs.arrow")


def test_a_build_folder_whose_path_is_not_utf8_is_refused_before_it_is_made(tmp_path):
    """Arrow takes UTF-8 paths only: a Latin-1 --out ended in a UnicodeEncodeError traceback after its folder was made."""
    out = tmp_path / os.fsdecode(b"caf\xe9")
    with pytest.raises(BuildError, match=re.escape(f"{tmp_path}/caf\\xe9: not a UTF-8 path")):
        build_dataset(load_recipe("maug"), open_source("demo:1"), out, progress=False)
    assert not out.exists()


def test_a_second_build_of_a_folder_at_once_stops_at_the_shard_the_first_is_writing_and_leaves_it_be(tmp_path):
    """A job started twice: the second emptied the first's shard file under it."""
    def build(out: Path):
        build_dataset(load_recipe("maug"), open_source("demo"), out, limit=40, shard_size=16, image_format="raw",
                      progress=False)

    build(tmp_path / "alone")
    (tmp_path / "ds").mkdir()  # as the first build left it while it writes its second shard
    (tmp_path / "ds" / "degrade.json").write_bytes((tmp_path / "alone" / "degrade.json").read_bytes())
    being_written = tmp_path / "ds" / "data-00001-of-00003.arrow.partial"
    being_written.write_bytes(b"the first build's batches")
    with open(being_written, "rb") as first_build:
        fcntl.flock(first_build, fcntl.LOCK_EX)
        with pytest.raises(BuildError, match=re.escape(f"{being_written}: another `degrade build` is writing this shard")):
            build(tmp_path / "ds")
        assert being_written.read_bytes() == b"the first build's batches"
    build(tmp_path / "ds")
    assert folder_bytes(tmp_path / "ds") == folder_bytes(tmp_path / "alone")


def test_a_build_on_a_file_system_without_locks_goes_on_unguarded(tmp_path, monkeypatch):
    """Lustre mounted without flock, or NFS without its lock daemon, refuse flock with ENOLCK."""
    def refused(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=20, shard_size=16, progress=False)
    assert len(open_dataset(tmp_path / "ds")) == 20


def test_a_raw_build_that_cannot_fit_in_the_free_space_is_refused_before_it_writes_a_shard(tmp_path, monkeypatch):
    per_pair = 2 * 3 * 112 * 112
    free = {"bytes": 20 * per_pair}
    monkeypatch.setattr(arrow.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 0, free["bytes"]))

    def build(out: Path, limit: int, image_format: str = "raw"):
        build_dataset(load_recipe("maug"), open_source("demo"), out, limit=limit, shard_size=16,
                      image_format=image_format, progress=False)

    with pytest.raises(BuildError, match=re.escape(f"{tmp_path / 'ds'}: the 40 pairs left to build take at least ")):
        build(tmp_path / "ds", 40)
    assert [path.name for path in (tmp_path / "ds").iterdir()] == ["degrade.json"]
    build(tmp_path / "png", 40, "png")  # PNG sizes are not known before; nothing is refused
    free["bytes"] = 0  # as a mount that does not know its free space may report: not judged
    build(tmp_path / "unknown", 40)
    free["bytes"] = 1 << 40
    build(tmp_path / "ds", 40)
    (tmp_path / "ds" / "data-00001-of-00003.arrow").unlink()  # 16 pairs left to build: they fit
    free["bytes"] = 20 * per_pair
    build(tmp_path / "ds", 40)
    assert len(open_dataset(tmp_path / "ds")) == 40


def test_an_unfinished_build_is_refused_with_a_message_that_says_so(tmp_path):
    build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=40, shard_size=16, progress=False)
    (tmp_path / "ds" / "state.json").unlink()
    (tmp_path / "ds" / "data-00002-of-00003.arrow").unlink()
    with pytest.raises(BuildError, match="did not finish \\(2 of 3 shards written\\).*run the same"):
        open_dataset(tmp_path / "ds")


@pytest.mark.parametrize("image_format", ["png", "raw"])
@pytest.mark.parametrize("column", ["hq", "lq"])
def test_a_damaged_face_in_a_finished_build_fails_its_batch_naming_its_shard_and_key(tmp_path, image_format, column):
    build_dataset(load_recipe("btnet"), open_source("demo"), tmp_path / "ds", limit=12, shard_size=5,
                  image_format=image_format, progress=False)
    damage_cell(tmp_path / "ds" / "data-00001-of-00003.arrow", column, row=2)
    pairs = BuiltPairs(tmp_path / "ds")
    assert pairs.load(torch.tensor([4, 6, 11])).hq.shape == (3, 3, 112, 112)
    with pytest.raises(SourceError, match=re.escape(f"ds/data-00001-of-00003.arrow: the {column} face of key 7 is not a "
                                                    "readable ") + ".*the shard is damaged: delete it and run the same"):
        pairs.load(torch.tensor([3, 7, 9]))


def test_verify_decodes_every_face_and_names_the_shard_of_a_damaged_one_that_deleting_and_rebuilding_remakes(tmp_path):
    """The shards' own row counts place the damaged face: the first shard holds one pair fewer than
    the shard size (its unreadable input skipped), so the second shard's first row is the dataset's row 3."""
    faces = tmp_path / "faces"
    for key, face in enumerate(open_source("demo").load(torch.arange(11)).hq):
        (faces / f"id{key // 4}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(faces / f"id{key // 4}" / f"{key}.png"), face.permute(1, 2, 0).numpy())
    (faces / "id0" / "1.png").write_bytes(b"not an image")

    def build():
        build_dataset(load_recipe("maug"), open_source(str(faces)), tmp_path / "ds", shard_size=4, progress=False)

    build()
    whole = folder_bytes(tmp_path / "ds")
    assert verify_dataset(tmp_path / "ds") == f"verified {tmp_path / 'ds'}: every HQ and LQ face of its 10 pairs is readable (png)"
    damage_cell(tmp_path / "ds" / "data-00001-of-00003.arrow", "hq", row=0)  # the dataset's row 3, key 4
    with pytest.raises(SourceError, match=re.escape("ds/data-00001-of-00003.arrow: the hq face of key 4 ")):
        verify_dataset(tmp_path / "ds", num_workers=2)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "ds"), "--verify", "-j", "0"])
    assert result.exit_code == 1 and "data-00001-of-00003.arrow: the hq face of key 4 " in result.output
    (tmp_path / "ds" / "data-00001-of-00003.arrow").unlink()
    build()
    assert folder_bytes(tmp_path / "ds") == whole


def _cut_before_its_last_batch(shard: Path) -> None:
    """Drop the last record batch of the Arrow stream file ``shard``, as a copy cut short there would."""
    data = shard.read_bytes()
    stream = pa.BufferReader(data)
    message_ends = [stream.tell() for _ in pa.ipc.MessageReader.open_stream(stream)]
    shard.write_bytes(data[:message_ends[-2]])


@pytest.mark.parametrize("damage, says", [
    (lambda shard: shard.write_bytes(shard.read_bytes()[:-5000]), "not a readable Arrow stream (Expected to be able to read"),
    (lambda shard: shard.unlink(), "missing"),
    (_cut_before_its_last_batch, "holds 16 of the 24 pairs written to it"),
], ids=["truncated", "missing", "cut between batches"])
def test_a_shard_damaged_after_the_build_is_named_where_it_is_read_and_the_same_build_remakes_it(tmp_path, damage, says):
    """Read back, or as the source of another build, the error names the shard; running the build
    again ends with the bytes it had."""
    def build():
        build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=40, batch_size=8, shard_size=24,
                      image_format="raw", progress=False)

    build()
    whole = folder_bytes(tmp_path / "ds")
    damage(tmp_path / "ds" / "data-00000-of-00002.arrow")
    for opening in (BuiltPairs, describe_dataset, lambda folder: open_source(str(folder))):
        with pytest.raises((BuildError, SourceError), match=re.escape(f"ds/data-00000-of-00002.arrow: {says}")):
            opening(tmp_path / "ds")
    with pytest.raises(BuildError, match="run the same `degrade build` command again to remake it"):
        BuiltPairs(tmp_path / "ds")
    build()
    assert folder_bytes(tmp_path / "ds") == whole


@pytest.mark.parametrize("record", ["degrade.json", "summary.json", "state.json", "dataset_info.json"])
def test_a_builds_damaged_json_record_is_named_where_the_build_is_read(tmp_path, record):
    build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=8, image_format="raw", progress=False)
    (tmp_path / "ds" / record).write_text('{"pairs": 8,')
    for opening in (BuiltPairs, describe_dataset, lambda folder: open_source(str(folder))):
        with pytest.raises((BuildError, SourceError), match=re.escape(f"ds/{record}: not readable JSON (Expecting")):
            opening(tmp_path / "ds")


def test_a_shard_whose_account_was_damaged_is_made_again_by_the_same_build(tmp_path):
    def build():
        return build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=8, image_format="raw",
                             progress=False)

    build()
    whole = folder_bytes(tmp_path / "ds")
    (tmp_path / "ds" / "data-00000-of-00001.arrow.json").write_text("{")
    assert build().made == 8 and folder_bytes(tmp_path / "ds") == whole


def test_a_build_whose_every_input_is_skipped_fails_naming_one_and_its_folder_says_it_holds_no_pairs(
        tmp_path, unreadable_faces):
    source = open_source(str(unreadable_faces))
    for _ in range(2):  # a rerun finds the shards whole and fails the same way
        with pytest.raises(BuildError, match=r"every one of the 2 inputs was skipped \(key 0: .*1.jpg: not a readable "
                                             "image.*summary.json lists them all"):
            build_dataset(load_recipe("maug"), source, tmp_path / "ds", progress=False)
    assert arrow.unfinished_progress(tmp_path / "ds") is None
    with pytest.raises(BuildError, match=r"holds no pairs: every one of the 2 inputs was skipped \(summary.json lists "
                                         r"them\)"):
        open_dataset(tmp_path / "ds")


def test_a_shard_whose_writing_failed_stays_unfinished_and_the_build_resumes_to_whole_bytes(tmp_path, monkeypatch):
    """A full disk ended the build with pyarrow's words alone ('Error writing bytes to file'), naming no file."""
    recipe, source = load_recipe("maug"), open_source("demo")
    build_dataset(recipe, source, tmp_path / "whole", limit=40, batch_size=8, shard_size=16, progress=False)
    real_stream, opened = pa.ipc.new_stream, []

    class FullDisk:
        def __init__(self, stream):
            self.stream = stream

        def write_table(self, table):
            raise OSError(errno.ENOSPC, "Error writing bytes to file")

        def close(self):
            self.stream.close()

    def second_shard_on_a_full_disk(sink, schema):
        opened.append(real_stream(sink, schema))
        return FullDisk(opened[-1]) if len(opened) == 2 else opened[-1]

    monkeypatch.setattr(pa.ipc, "new_stream", second_shard_on_a_full_disk)
    says = ("data-00001-of-00003.arrow.partial: No space left on device; the shard stays unfinished: free some space "
            "and run the same command again to resume the build at it")
    with pytest.raises(BuildError, match=re.escape(says)):
        build_dataset(recipe, source, tmp_path / "failed", limit=40, batch_size=8, shard_size=16, progress=False)
    # The second shard is left unfinished (the others, written by other threads meanwhile, are whole).
    assert not (tmp_path / "failed" / "data-00001-of-00003.arrow").exists()
    assert (tmp_path / "failed" / "data-00001-of-00003.arrow.partial").exists()
    monkeypatch.setattr(pa.ipc, "new_stream", real_stream)
    resumed = build_dataset(recipe, source, tmp_path / "failed", limit=40, batch_size=8, shard_size=16, progress=False)
    assert folder_bytes(tmp_path / "failed") == folder_bytes(tmp_path / "whole")
    assert (resumed.pairs, resumed.made, resumed.resumed_shards) == (40, 16, 2)  # its rate counts what it made


def _build_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "degrade", "build", "--recipe", "lgaf", "--source", str(LFW), "--limit", "640",
            "--shard-size", "64", "--batch-size", "32", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def whole_build(tmp_path_factory) -> Path:
    """The build of `_build_command` run to its end, uninterrupted."""
    out = tmp_path_factory.mktemp("uninterrupted") / "whole"
    subprocess.run(_build_command(out), check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


@pytest.mark.parametrize("stop, says", [(signal.SIGKILL, None), (signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")],
                         ids=["killed", "ctrl-c", "terminated"])
def test_a_build_stopped_mid_way_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path, whole_build, stop, says):
    """The signal goes to the build's main process (SIGKILL: the OOM killer) or to all its processes
    (SIGINT: Ctrl-C in a terminal; SIGTERM: Slurm), which end at once: the decoding workers too,
    which hold the build's stderr."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # As from a terminal: a shell's background job (`pytest &`) ignores SIGINT, and its children inherit that.
    process = subprocess.Popen(_build_command(tmp_path / "stopped"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=environment, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(list((tmp_path / "stopped").glob("data-*.arrow"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    if stop == signal.SIGKILL:
        process.send_signal(stop)
    else:
        os.killpg(process.pid, stop)
    errors = process.communicate(timeout=30)[1]
    written = len(list((tmp_path / "stopped").glob("data-*.arrow")))
    assert 3 <= written < 10, "the build should have been stopped part way"
    if says:  # the shell's exit code, and what to do next, not a traceback
        assert process.returncode == 128 + stop
        last_line = errors.replace("\r", "\n").rstrip().splitlines()[-1]
        assert last_line == f"{tmp_path / 'stopped'}: {says}, {written} of 10 shards written; run the same command again to resume"
        assert "Traceback" not in errors
    with pytest.raises(BuildError, match="did not finish"):
        open_dataset(tmp_path / "stopped")
    resumed = subprocess.run(_build_command(tmp_path / "stopped"), check=True, capture_output=True, text=True,
                             env=environment)
    assert f"({written} already done)" in resumed.stdout
    assert folder_bytes(tmp_path / "stopped") == folder_bytes(whole_build)


def test_two_ranks_under_torchrun_write_the_same_bytes_as_one(tmp_path):
    command = ["-m", "degrade", "build", "--recipe", "catface", "--source", "demo", "--limit", "200", "--shard-size", "32",
               "--batch-size", "16", "--device", "cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *command, "--out", str(tmp_path / "one")], check=True, capture_output=True,
                   env=environment)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          *command, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=environment)
    assert two.returncode == 0, two.stderr[-2000:]
    assert folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "one")
    assert two.stdout.count("wrote ") == 1 and "200 pairs in 7 shards" in two.stdout  # rank 0 says it, once


def test_inspect_reports_counts_skips_and_histograms(tmp_path):
    build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=200, progress=False)
    text = describe_dataset(tmp_path / "ds")
    assert "200 pairs, 20 identities, 1 shard, format png" in text
    assert "recipe maug (seed 0)" in text and "skipped inputs: 0" in text
    lines = text.splitlines()
    sides = lines.index("  resize.side")
    counts = {int(line.split()[0]): int(line.split()[1]) for line in lines[sides + 1:sides + 4]}
    assert set(counts) == {7, 14, 20} and sum(counts.values()) == 200 and counts[20] > counts[7]


def test_an_inspect_grid_shows_pairs_spread_over_the_build_from_its_first_to_its_last():
    from degrade.inspect import grid_rows

    assert grid_rows(1000, 4).tolist() == [0, 333, 666, 999]
    assert grid_rows(200, 16).unique().numel() == 16 and grid_rows(200, 16)[-1] == 199
    assert grid_rows(3, 16).tolist() == [0, 1, 2] and grid_rows(1, 1).tolist() == [0]


@pytest.mark.parametrize("options, says", [
    (["-n", "4"], "--count would have no effect: it is the number of pairs in the --grid, which is not given"),
    (["-j", "2"], "--num-workers would have no effect: its processes decode the faces for --verify"),
])
def test_inspect_refuses_options_for_a_grid_or_a_verify_it_was_not_asked_for(tmp_path, options, says):
    build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=8, progress=False)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "ds"), *options])
    assert result.exit_code == 2 and says in result.output and "pairs" not in result.output.split("Error")[0]


def test_inspect_counts_each_ops_params_over_the_pairs_it_ran_on(tmp_path):
    build_dataset(load_recipe("realworld"), open_source("demo"), tmp_path / "ds", limit=300, progress=False)
    params = open_dataset(tmp_path / "ds")["params"]
    applied = [row["blur_2"]["applied"] for row in params]
    gaussian = [a and row["blur_2"]["choice"] == 0 for a, row in zip(applied, params)]
    assert 200 < sum(applied) < 290 and 0 < sum(gaussian) < sum(applied)  # p 0.8, then one of three

    lines = describe_dataset(tmp_path / "ds").splitlines()

    def histogram_total(header: str) -> int:
        bars = itertools.takewhile(lambda line: line.startswith("    "), lines[lines.index(header) + 1:])
        return sum(int(bar.split()[1]) for bar in bars)

    assert histogram_total("  blur_2.applied") == 300
    assert histogram_total(f"  blur_2.choice  ({sum(applied)} of 300 pairs)") == sum(applied)
    assert histogram_total(f"  blur_2.gaussian_blur.sigma  ({sum(gaussian)} of 300 pairs)") == sum(gaussian)
    assert histogram_total("  resize.side") == 300  # every pair, so no count after the name


# ---- streaming ------------------------------------------------------------------------------


def test_streamed_pairs_are_the_engines_pairs_for_their_keys(lfw_source):
    recipe = load_recipe("mixed")
    stream = PairStream.from_source(recipe, lfw_source, batch_size=16, num_workers=2)
    batch = next(iter(stream))
    expected = make_pairs(recipe, lfw_source, batch["key"])
    assert torch.equal(batch["lq"], expected.lq) and torch.equal(batch["hq"], expected.hq)
    assert torch.equal(batch["identity"], lfw_source.identities[batch["key"]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stream_prefetches_the_same_pairs_as_the_cpu(lfw_source):
    recipe = load_recipe("mixed")
    on_cuda = PairStream.from_source(recipe, lfw_source, batch_size=16, device="cuda", num_workers=2)
    on_cpu = PairStream.from_source(recipe, lfw_source, batch_size=16, num_workers=2)
    for cuda_batch, cpu_batch, _ in zip(on_cuda, on_cpu, range(3)):
        assert torch.equal(cuda_batch["key"].cpu(), cpu_batch["key"]) and torch.equal(cuda_batch["hq"].cpu(), cpu_batch["hq"])
        assert (cuda_batch["lq"].cpu().int() - cpu_batch["lq"].int()).abs().float().mean() < 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_build_with_decoding_workers_writes_the_faces_and_pairs_of_a_cpu_build(tmp_path, lfw_source):
    recipe = load_recipe("maug")
    for device in ("cuda", "cpu"):
        build_dataset(recipe, lfw_source, tmp_path / device, limit=100, batch_size=32, shard_size=64, device=device,
                      num_workers=2, image_format="raw", progress=False)
    on_cuda, on_cpu = (BuiltPairs(tmp_path / device).load(torch.arange(100)) for device in ("cuda", "cpu"))
    assert torch.equal(on_cuda.key, on_cpu.key) and torch.equal(on_cuda.hq, on_cpu.hq)
    assert (on_cuda.lq.int() - on_cpu.lq.int()).abs().float().mean() < 1.0


def test_prefetching_keeps_the_order_raises_the_producers_error_and_stops_early():
    def numbered(count, fail_at=None):
        for n in range(count):
            if n == fail_at:
                raise ValueError(f"bad batch {n}")
            yield {"n": torch.tensor(n)}

    assert [int(b["n"]) for b in prefetched(numbered(7), torch.device("cpu"))] == list(range(7))
    with pytest.raises(ValueError, match="bad batch 3"):
        list(prefetched(numbered(7, fail_at=3), torch.device("cpu")))
    produced = []
    source = (produced.append(n) or {"n": torch.tensor(n)} for n in range(1000))
    batches = prefetched(source, torch.device("cpu"), depth=2)
    assert int(next(batches)["n"]) == 0
    batches.close()
    assert len(produced) <= 4  # the thread stopped: at most the handed batch, the queue and one in hand


def test_ranks_get_equal_disjoint_batches_that_cover_the_epoch():
    source = open_source("demo")
    streams = [PairStream.from_source(load_recipe("maug"), source, batch_size=48, rank=r, world_size=3) for r in range(3)]
    batches = [s.rank_batches() for s in streams]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == 1000 // (48 * 3)
    keys = torch.cat([k for rank in batches for k in rank])
    assert len(keys.unique()) == len(keys) == 3 * 48 * len(batches[0])


def test_a_stream_made_under_torchrun_before_the_process_group_warns_that_it_takes_every_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.warns(UserWarning, match="torchrun started 4 ranks, but no process group is initialised"):
        alone = PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=8)
    assert (alone.rank, alone.world_size) == (0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        placed = PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=8, rank=3, world_size=4)
    assert (placed.rank, placed.world_size) == (3, 4)


def test_epochs_reshuffle_and_start_step_resumes_the_same_sequence():
    stream = PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=32)
    stream.set_epoch(0)
    epoch_zero = stream.rank_batches()
    stream.set_epoch(1)
    assert not torch.equal(stream.rank_batches()[0], epoch_zero[0])
    stream.set_epoch(0, start_step=5)
    resumed = stream.rank_batches()
    assert len(resumed) == len(epoch_zero) - 5 and all(torch.equal(a, b) for a, b in zip(resumed, epoch_zero[5:]))
    for step in (-1, len(epoch_zero) + 1):  # a negative step used to yield the epoch's last batches
        with pytest.raises(ValueError, match=f"start_step {step} is outside the epoch's 0..{len(epoch_zero)} batches"):
            stream.set_epoch(0, start_step=step)
    with pytest.raises(ValueError, match="epoch -1 is negative"):
        stream.set_epoch(-1)


def test_streaming_a_build_gives_the_same_pairs_as_streaming_on_the_fly(tmp_path):
    recipe, source = load_recipe("lgaf"), open_source("demo")
    build_dataset(recipe, source, tmp_path / "ds", limit=len(source), progress=False)
    on_the_fly = PairStream.from_source(recipe, source, batch_size=25, shuffle_seed=3)
    from_disk = PairStream.from_dataset(tmp_path / "ds", batch_size=25, shuffle_seed=3, num_workers=2)
    for made, stored in zip(on_the_fly, from_disk):
        assert torch.equal(made["key"], stored["key"])
        assert torch.equal(made["lq"], stored["lq"]) and torch.equal(made["hq"], stored["hq"])


def lq_by_key(stream: PairStream, epoch: int) -> dict[int, tuple[torch.Tensor, int]]:
    stream.set_epoch(epoch)
    return {key: (lq, side) for batch in stream
            for key, lq, side in zip(batch["key"].tolist(), batch["lq"], batch["params"]["resize.side"].tolist())}


def test_each_epoch_on_the_fly_degrades_every_face_afresh_and_the_first_is_the_build(tmp_path):
    recipe, source = load_recipe("maug"), open_source("demo")
    stream = PairStream.from_source(recipe, source, batch_size=100)
    first, second = lq_by_key(stream, 0), lq_by_key(stream, 1)
    assert len(first) == len(second) == len(source)
    expected = make_pairs(recipe, source, torch.arange(len(source)))  # the recipe's seed: a build's pairs
    assert all(torch.equal(first[key][0], expected.lq[key]) for key in range(len(source)))
    other_side = [key for key in first if first[key][1] != second[key][1]]
    assert 0.55 < len(other_side) / len(source) < 0.70  # sides 7, 14, 20 drawn 1:1:2 twice: 62.5 % differ
    assert all(not torch.equal(first[key][0], second[key][0]) for key in other_side)
    sides = torch.tensor([side for _, side in second.values()])
    assert 0.45 < (sides == 20).float().mean() < 0.55
    assert all(torch.equal(lq, second[key][0]) for key, (lq, _) in lq_by_key(stream, 1).items())  # replayed

    build_dataset(recipe, source, tmp_path / "ds", progress=False)
    from_disk = PairStream.from_dataset(tmp_path / "ds", batch_size=100)
    assert all(torch.equal(lq, first[key][0]) for key, (lq, _) in lq_by_key(from_disk, 1).items())  # its one draw


def test_a_source_too_small_for_one_batch_per_rank_is_refused():
    with pytest.raises(ValueError, match="demo: no full batch of 600 for each of 2 ranks from 1,000 samples; use a"):
        PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=600, world_size=2, rank=0)
    with pytest.raises(ValueError, match="demo: no full batch of 1001 from 1,000 samples; use a smaller batch size"):
        PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=1001)
    empty = SubsetSource(open_source("demo"), torch.arange(0))
    with pytest.raises(ValueError, match=re.escape(f"{empty.name}: no samples to stream")):  # not "a smaller batch"
        PairStream.from_source(load_recipe("maug"), empty, batch_size=1)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_streamed_batch_whose_every_face_is_unreadable_fails_naming_one(unreadable_faces, workers):
    stream = PairStream.from_source(load_recipe("maug"), open_source(str(unreadable_faces)), batch_size=2,
                                    num_workers=workers, shuffle=False)
    with pytest.raises(SourceError, match=r"faces: every one of the 2 faces of a batch was skipped \(key 0: .*1.jpg: "
                                          "not a readable image"):
        next(iter(stream))


@pytest.mark.parametrize("options", [dict(batch_size=0), dict(batch_size=8, num_workers=-1)])
def test_a_stream_without_a_positive_batch_size_or_with_negative_workers_is_refused(options):
    with pytest.raises(ValueError, match="batch_size must be >= 1 and num_workers >= 0"):
        PairStream.from_source(load_recipe("maug"), open_source("demo"), **options)


def test_a_stream_given_a_recipe_name_or_a_source_or_attributes_path_says_how_to_load_them():
    """A recipe's name failed at the first batch ('str' object has no attribute 'seed'), an attributes
    path when the stream was made ('str' object has no attribute 'check_names')."""
    with pytest.raises(TypeError, match=re.escape("recipe is a str, not a Recipe; load one first: load_recipe('maug')")):
        PairStream.from_source("maug", open_source("demo"), batch_size=8)
    with pytest.raises(TypeError, match=re.escape("source is a path, not a Source; open it first: open_source('faces')")):
        PairStream.from_source(load_recipe("maug"), Path("faces"), batch_size=8)
    with pytest.raises(TypeError, match=re.escape("attributes is a path, not a table; open it first: "
                                                  "degrade.sources.attributes.Attributes('a.tsv')")):
        PairStream.from_source(load_recipe("catface"), open_source("demo"), batch_size=8, attributes="a.tsv")


def test_a_stream_read_from_a_build_refuses_a_seed_or_an_attributes_table_of_its_own(tmp_path):
    """It failed at the first batch: 'BuiltPairs' object has no attribute 'identities'."""
    build_dataset(load_recipe("maug"), open_source("demo:2"), tmp_path / "ds", progress=False)
    table = tmp_path / "a.tsv"
    table.write_text("identity\tage\n0\t30\n")
    with pytest.raises(ValueError, match=re.escape(f"attributes= would have no effect: a build's pairs are read as "
                                                   f"{tmp_path / 'ds'} holds them, drawn with its seed and carrying the "
                                                   "attributes it was built with")):
        PairStream.from_dataset(tmp_path / "ds", batch_size=4, attributes=Attributes(table))
    with pytest.raises(ValueError, match=re.escape("PairStream.from_dataset: seed= would have no effect")):
        PairStream.from_dataset(tmp_path / "ds", batch_size=4, seed=3)


@pytest.mark.parametrize("gpus, device, says", [
    (0, "cuda:0", r"device 'cuda:0', but CUDA is not available here \(torch .*\); use device='cpu'"),
    (1, "cuda:1", r"device 'cuda:1', but this machine has 1 CUDA device, from cuda:0"),
])
def test_a_stream_for_a_gpu_the_machine_lacks_is_refused_when_it_is_made(monkeypatch, gpus, device, says):
    """It failed at the first batch with torch's 'torch.cuda.Stream requires CUDA support'."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(ValueError, match="PairStream: " + says):
        PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=8, device=device)


def test_build_dataset_given_a_recipe_name_a_source_path_or_a_missing_gpu_says_so_before_it_starts(
        tmp_path, monkeypatch):
    """They failed inside: 'str' object has no attribute 'seed' / 'name'; torch's 'Torch not
    compiled with CUDA enabled' after the progress bar had started and the folder was made."""
    with pytest.raises(TypeError, match=re.escape("build_dataset: recipe is a str, not a Recipe; load one first: "
                                                  "load_recipe('maug')")):
        build_dataset("maug", open_source("demo"), tmp_path / "a")
    with pytest.raises(TypeError, match=re.escape("build_dataset: source is a path, not a Source; open it first: "
                                                  "open_source('demo')")):
        build_dataset(load_recipe("maug"), "demo", tmp_path / "b")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"build_dataset: device 'cuda', but CUDA is not available here \(torch .*\); "
                                         r"use device='cpu'"):
        build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "c", device="cuda")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("seed", ["shuffle_seed", "seed"])
@pytest.mark.parametrize("value", [-1, 2 ** 32])
def test_a_stream_whose_seeds_are_outside_32_bits_is_refused_when_it_is_made(seed, value):
    """2 ** 63 - 1 overflowed the epoch order's generator seed; a recipe seed of -1 failed at the first batch."""
    with pytest.raises(ValueError, match=f"PairStream: {seed} {value} is outside \\[0, 4294967295\\]"):
        PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=8, **{seed: value})


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0)])
def test_a_stream_of_a_rank_outside_its_world_is_refused(rank, world_size):
    """Rank 2 of 2 streamed rank 0's next batches; rank -1 empty ones; world size 0 divided by zero."""
    with pytest.raises(ValueError, match=f"rank {rank} of world_size {world_size}; a rank is 0 ... world_size - 1"):
        PairStream.from_source(load_recipe("maug"), open_source("demo"), batch_size=8, rank=rank, world_size=world_size)
