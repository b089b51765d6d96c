"""Sources: each format reads back the pixels and identities it was given; odd inputs are handled."""

import errno
import os
import pickle
import re
import struct
import types
import warnings
from pathlib import Path

import cv2
import datasets
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch

from degrade.arrow import build_dataset, open_dataset
from degrade.loader import decoded_batches
from degrade.recipe import load_recipe
from degrade.sources import SourceError, open_source
from degrade.sources.attributes import Attributes
from degrade.sources.base import StorageError, decode_image, decode_raw_pixels, jpeg_components
from degrade.sources.pairs import PairsSource, write_bin
from degrade.sources.recordio import MAGIC, RecordFile, pack_record, write_insightface_recordio, write_recordio
from degrade.sources.subset import identities_outside_pairs
from degrade.sources.table import BinaryCells

from .conftest import LFW, OpensAFile


def jpeg(image_rgb: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.fixture(scope="module")
def lfw_jpegs(lfw_source):
    """12 real LFW files (bytes) and their identity indices."""
    keys = list(range(0, 1200, 100))
    return [lfw_source.read(k)[0] for k in keys], [int(lfw_source.identities[k]) for k in keys]


def test_recordio_reads_insightface_layout_back(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    write_insightface_recordio(tmp_path / "train", images, labels)
    source = open_source(str(tmp_path))
    assert len(source) == len(images)
    faces = source.load(torch.arange(len(images)))
    order = sorted(range(len(images)), key=lambda i: labels[i])  # insightface stores images by identity
    for key, original in enumerate(order):
        assert np.array_equal(faces.hq[key].permute(1, 2, 0).numpy(), decoded(images[original]))
    names = [source.identity_name(int(i)) for i in faces.identity]
    assert len(set(names)) == len(set(labels))
    assert [labels[i] for i in order] == sorted(labels)


def test_recordio_rejoins_a_payload_split_at_the_magic_number(tmp_path):
    payload = pack_record(3.0, b"abc" + struct.pack("<I", MAGIC) + b"defgh" + struct.pack("<I", MAGIC) + b"xy")
    write_recordio(tmp_path / "split", [pack_record([1.0, 2.0]), payload])
    records = RecordFile(tmp_path / "split.rec", tmp_path / "split.idx")
    assert records.read(1) == payload
    assert (tmp_path / "split.rec").read_bytes().count(struct.pack("<I", MAGIC)) == 1 + 3


def test_recordio_read_by_forked_workers_matches_reading_in_process(tmp_path, lfw_jpegs):
    # The source reads its header on opening; forked decoding workers inherit that file. Reads
    # that seek a shared file offset would interleave between workers and return torn records.
    images, labels = lfw_jpegs
    write_insightface_recordio(tmp_path / "train", images * 40, labels * 40)
    source = open_source(str(tmp_path))
    batches = torch.arange(len(source)).split(4)
    in_workers = torch.cat([faces.hq for faces in decoded_batches(source, batches, num_workers=2)])
    assert len(in_workers) == len(source) == 480
    assert torch.equal(in_workers, source.load(torch.arange(len(source))).hq)


def test_recordio_without_insightface_header_uses_every_record(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    write_recordio(tmp_path / "plain", [pack_record(label, image) for image, label in zip(images, labels)])
    source = open_source(str(tmp_path / "plain.rec"))
    assert len(source) == len(images)
    assert np.array_equal(source.load(torch.tensor([3])).hq[0].permute(1, 2, 0).numpy(), decoded(images[3]))


def test_recordio_labels_become_identities_in_order_however_sparse(tmp_path, lfw_jpegs):
    images, _ = lfw_jpegs
    labels = [5_000_000, 7, 5_000_000, 42]
    write_recordio(tmp_path / "plain", [pack_record(label, image) for image, label in zip(images, labels)])
    source = open_source(str(tmp_path / "plain.rec"))
    assert source.identity_names == ["7", "42", "5000000"]
    assert source.identities.tolist() == [2, 0, 2, 1]


@pytest.mark.parametrize("identity_ranges, header, message", [
    ([[1, 3], [3, 4]], [5, 7], r"no identity record \(records 5 \.\. 6\) holds image record 4$"),
    ([[1, 3], [2, 5]], [5, 7], r"identity record 6 has the label \[2.0, 5.0\], not a \(start, end\) range"),
    ([[1, 3], [3, 6]], [5, 7], r"identity record 6 has the label \[3.0, 6.0\]"),
    ([[1, 5]], [0, 1], r"header record 0 gives identity records 0 \.\. 0, which is no range"),
], ids=["an image in no identity", "an image in two", "a range past the images", "a header with no images"])
def test_insightface_identity_records_that_do_not_give_each_image_one_identity_are_named(
        tmp_path, lfw_jpegs, identity_ranges, header, message):
    # Before, the images no range held took whatever np.empty left there as their identity.
    image = lfw_jpegs[0][0]
    payloads = [pack_record(header)] + [pack_record(0, image)] * 4 + [pack_record(r) for r in identity_ranges]
    write_recordio(tmp_path / "train", payloads)
    with pytest.raises(SourceError, match="train.rec: " + message):
        open_source(str(tmp_path))


def test_corrupt_recordio_is_named(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    write_insightface_recordio(tmp_path / "train", images, labels)
    data = bytearray((tmp_path / "train.rec").read_bytes())
    data[0:4] = b"\0\0\0\0"
    (tmp_path / "train.rec").write_bytes(bytes(data))
    with pytest.raises(SourceError, match="train.rec: record 0 has no RecordIO magic"):
        open_source(str(tmp_path))


def test_a_truncated_recordio_is_named_with_what_is_missing(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    write_insightface_recordio(tmp_path / "train", images, labels)
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "train.idx").read_text().splitlines()]
    (tmp_path / "train.rec").write_bytes((tmp_path / "train.rec").read_bytes()[:offsets[5] + 10])
    with pytest.raises(SourceError, match=f"train.rec: the file ends at byte {offsets[5] + 10:,}, but train.idx places "
                                          f"{len(offsets) - 6:,} of its {len(offsets):,} records beyond it, from record 6 "
                                          f"at byte {offsets[6]:,}: a truncated copy"):
        open_source(str(tmp_path / "train.rec"))


def test_a_recordio_whose_index_is_not_text_is_named(tmp_path):
    """Was a UnicodeDecodeError traceback."""
    (tmp_path / "train.rec").write_bytes(b"")
    (tmp_path / "train.idx").write_bytes(b"0\t0\n\xff\xfe\x00")
    with pytest.raises(SourceError, match=re.escape("train.idx: not a RecordIO index (byte 5 is not text; an index "
                                                    "is lines of 'index<TAB>offset')")):
        open_source(str(tmp_path))


def test_a_recordio_with_an_empty_index_is_named(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"")
    (tmp_path / "train.idx").write_text("\n")
    with pytest.raises(SourceError, match="train.rec: holds no image records"):
        open_source(str(tmp_path))


def image_table(images: list[bytes], labels: list[int]) -> datasets.Dataset:
    """An HF dataset of encoded images (an ``Image`` column) and their labels."""
    table = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels})
    return table.cast_column("image", datasets.Image())


def test_saved_hf_dataset_parquet_and_arrow_sources(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    table = image_table(images, labels)
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "faces.parquet"))
    for spec in (tmp_path / "saved", tmp_path / "faces.parquet", next((tmp_path / "saved").glob("*.arrow"))):
        source = open_source(str(spec))
        faces = source.load(torch.tensor([0, 5]))
        assert np.array_equal(faces.hq[1].permute(1, 2, 0).numpy(), decoded(images[5]))
        assert source.identity_name(int(faces.identity[1])) == str(labels[5])


def test_a_hub_download_of_parquet_shards_is_read_as_one_table_of_its_train_split(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    table = image_table(images, labels)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for name, rows in [("train-00000-of-00002", range(0, 7)), ("train-00001-of-00002", range(7, 10)),
                       ("test-00000-of-00001", range(10, 12))]:
        table.select(rows).to_parquet(str(tmp_path / "hub" / "data" / f"{name}.parquet"))
    source = open_source(str(tmp_path / "hub"))
    assert len(source) == 10  # the train split's rows, in the shards' order; the test split's left out
    faces = source.load(torch.tensor([6, 7, 9]))
    assert all(np.array_equal(faces.hq[i].permute(1, 2, 0).numpy(), decoded(images[k])) for i, k in enumerate([6, 7, 9]))
    assert [source.identity_name(int(i)) for i in faces.identity] == [str(labels[k]) for k in (6, 7, 9)]
    assert len(open_source(str(tmp_path / "hub" / "data"))) == 10


def test_the_hubs_parquet_conversion_of_a_dataset_is_read_as_its_train_split(tmp_path, lfw_jpegs):
    # the Hub's refs/convert/parquet layout, CONFIG/SPLIT/0000.parquet: it was taken for identity folders
    images, labels = lfw_jpegs
    table = image_table(images, labels)
    for split, rows in [("train", range(0, 9)), ("test", range(9, 12))]:
        (tmp_path / "default" / split).mkdir(parents=True)
        table.select(rows).to_parquet(str(tmp_path / "default" / split / "0000.parquet"))
    source = open_source(str(tmp_path / "default"))
    assert len(source) == 9
    assert np.array_equal(source.load(torch.tensor([8])).hq[0].permute(1, 2, 0).numpy(), decoded(images[8]))


@pytest.mark.parametrize("write", ["ipc_file", "feather"])
def test_an_arrow_ipc_file_is_refused_saying_how_to_convert_it(tmp_path, write):
    # `datasets` reads .arrow files in the stream format; the IPC file format failed with Arrow's
    # "Expected to read 1330795073 metadata bytes"
    table = pa.table({"image": [b"x"], "label": [0]})
    path = tmp_path / ("faces.arrow" if write == "ipc_file" else "faces.feather")
    if write == "ipc_file":
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        feather.write_feather(table, str(path))
    with pytest.raises(SourceError, match=re.escape(
            f"{path}: an Arrow IPC (Feather) file, where degrade reads Arrow in the stream format `datasets` writes, "
            f"and Parquet: convert it, e.g. pyarrow.parquet.write_table(pyarrow.feather.read_table('{path}'), ")):
        open_source(str(path))


def test_a_saved_dataset_dictionary_is_read_as_its_train_split(tmp_path, lfw_jpegs):
    # what `load_dataset(...).save_to_disk(...)` writes: dataset_dict.json and a folder per split;
    # it was taken for a folder of identity folders named train and test, and held no images
    images, labels = lfw_jpegs
    table = image_table(images, labels)
    datasets.DatasetDict({"train": table.select(range(8)), "test": table.select(range(8, 12))}).save_to_disk(
        str(tmp_path / "splits"))
    source = open_source(str(tmp_path / "splits"))
    assert len(source) == 8
    faces = source.load(torch.tensor([7]))
    assert np.array_equal(faces.hq[0].permute(1, 2, 0).numpy(), decoded(images[7]))
    assert source.identity_name(int(faces.identity[0])) == str(labels[7])


def test_a_saved_dataset_dictionary_without_a_train_split_is_refused_naming_its_splits(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    datasets.DatasetDict({"validation": image_table(images, labels)}).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(SourceError, match=re.escape(
            f"splits: a dataset dictionary without a 'train' split (it has validation); give the folder of the split "
            f"to read, e.g. {tmp_path / 'splits' / 'validation'}")):
        open_source(str(tmp_path / "splits"))
    assert len(open_source(str(tmp_path / "splits" / "validation"))) == len(images)


def test_parquet_shards_of_other_splits_alone_are_refused_naming_them(tmp_path):
    for name in ("test-00000-of-00001", "validation-00000-of-00001"):
        pq.write_table(pa.table({"image": [b""], "label": [0]}), tmp_path / f"{name}.parquet")
    with pytest.raises(SourceError, match=re.escape(f"{tmp_path}: Parquet shards of the splits test, validation and "
                                                    "none of 'train'")):
        open_source(str(tmp_path))


def test_parquet_shards_that_are_not_parts_of_one_table_are_refused_naming_the_odd_one(tmp_path):
    pq.write_table(pa.table({"image": [b""], "label": [0]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"img": [b""], "name": ["ann"]}), tmp_path / "part-1.parquet")
    with pytest.raises(SourceError) as error:
        open_source(str(tmp_path))
    assert str(error.value) == (f"{tmp_path / 'part-1.parquet'}: has the columns img, name, where part-0.parquet has "
                                "image, label; the shards of one table have the same columns")
    (tmp_path / "part-1.parquet").write_bytes(b"PAR1 and then nothing a table holds")
    with pytest.raises(SourceError, match=re.escape(f"{tmp_path / 'part-1.parquet'}: not a readable parquet file")):
        open_source(str(tmp_path))


def test_raw_pixels_are_read_as_they_are_resized_like_decoded_images_and_a_wrong_length_is_named():
    face = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    same, fixes = decode_raw_pixels(face.tobytes(), "row 3", 64)
    assert np.array_equal(same, face) and fixes == []
    larger, fixes = decode_raw_pixels(face.tobytes(), "row 3", 112)
    assert larger.shape == (112, 112, 3) and fixes == ["resized to 112x112"]
    assert np.array_equal(larger, cv2.resize(face, (112, 112), interpolation=cv2.INTER_CUBIC))
    with pytest.raises(SourceError, match="row 3: is 64x64, expected 112x112"):
        decode_raw_pixels(face.tobytes(), "row 3", 112, strict=True)
    with pytest.raises(SourceError, match="row 3: 100 bytes are not the raw pixels of a square RGB image"):
        decode_raw_pixels(bytes(100), "row 3", 112)


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_binary_cells_read_each_cell_of_a_chunked_sliced_column_with_nulls_as_its_bytes(kind):
    cells = [b"abc", None, b"", b"\x00\xff" * 5, b"z"]
    column = pa.chunked_array([pa.array(cells[:2], kind), pa.array([b"before"] + cells[2:], kind).slice(1)])
    read = BinaryCells(column)
    assert [read[row].tobytes() for row in range(len(cells))] == [cell or b"" for cell in cells]
    assert read[3].dtype == np.uint8 and not read[3].flags.owndata  # a view of the column's buffer


@pytest.mark.parametrize("failure", [errno.EIO, errno.ESTALE, errno.EMFILE], ids=["I/O error", "stale mount", "no fds"])
def test_a_read_that_fails_for_the_storage_stops_the_work_where_one_that_fails_for_the_file_skips_it(
        tmp_path, lfw_jpegs, monkeypatch, failure):
    """An NFS mount that dropped mid-build made every face after it a skipped input of a build that finished."""
    images, _ = lfw_jpegs
    for name in ("a/0.jpg", "a/1.jpg", "b/0.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(images[0])
    read_bytes = Path.read_bytes

    def failing(path):
        if path.name == "1.jpg":
            raise OSError(failure, os.strerror(failure))
        if path.parent.name == "b":
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", failing)
    source = open_source(str(tmp_path))
    assert source.load(torch.tensor([0, 2])).skipped == [(2, f"{tmp_path / 'b/0.jpg'}: cannot be read "
                                                             "(No such file or directory)")]
    says = (f"{tmp_path / 'a/1.jpg'}: cannot be read ({os.strerror(failure)}), a failure of the storage or the system "
            "rather than of the file: stopped here, not skipping every face after it")
    with pytest.raises(StorageError, match=re.escape(says)):
        source.load(torch.tensor([0, 1, 2]))


def test_a_table_row_whose_image_file_is_missing_is_skipped_naming_the_row_and_the_file(tmp_path, lfw_jpegs):
    """Images kept by path (an HF Image feature without bytes): a missing file raised FileNotFoundError."""
    images, _ = lfw_jpegs
    (tmp_path / "there.jpg").write_bytes(images[0])
    column = pa.array([{"bytes": None, "path": str(tmp_path / name)} for name in ("there.jpg", "gone.jpg")],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": column, "label": [0, 1]}), tmp_path / "faces.parquet")
    faces = open_source(str(tmp_path / "faces.parquet")).load(torch.tensor([0, 1]))
    assert faces.key.tolist() == [0] and np.array_equal(faces.hq[0].permute(1, 2, 0).numpy(), decoded(images[0]))
    assert faces.skipped == [(1, f"{tmp_path / 'faces.parquet'} row 1: its image {tmp_path / 'gone.jpg'}: cannot be read "
                                 "(No such file or directory)")]
    with pytest.raises(SourceError, match="row 1: its image .*gone.jpg: cannot be read"):
        open_source(str(tmp_path / "faces.parquet"), strict=True).load(torch.tensor([0, 1]))


def test_a_tables_class_label_identities_are_named_by_their_classes(tmp_path, lfw_jpegs):
    """A ClassLabel column holds class numbers; the identities are its names (a build's identity_name,
    and what --exclude-pairs matches), numbered as text labels are."""
    images, _ = lfw_jpegs
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["Zoe_Ball", "Al_Gore"])})
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images[:3]], "label": [1, 0, 1]},
                               features=features).save_to_disk(str(tmp_path / "t"))
    source = open_source(str(tmp_path / "t"))
    assert source.identity_names == ["Al_Gore", "Zoe_Ball"] and source.identities.tolist() == [0, 1, 0]


def test_a_tables_images_and_classes_are_found_by_their_features_whatever_their_columns_are_called(tmp_path, lfw_jpegs):
    """As the Hub serves a dataset whose columns have names of their own; a second ClassLabel (or a
    second Image) leaves the choice open, and the table is refused naming the columns it has."""
    images, _ = lfw_jpegs
    people = datasets.ClassLabel(names=["Zoe_Ball", "Al_Gore"])
    rows = {"photo": [{"bytes": b, "path": None} for b in images[:3]], "person": [1, 0, 1], "glasses": [0, 0, 1]}
    datasets.Dataset.from_dict(rows, features=datasets.Features({"photo": datasets.Image(), "person": people,
                                                                 "glasses": datasets.Value("int64")})
                               ).to_parquet(str(tmp_path / "one.parquet"))
    source = open_source(str(tmp_path / "one.parquet"))
    assert source.identity_names == ["Al_Gore", "Zoe_Ball"] and source.identities.tolist() == [0, 1, 0]
    datasets.Dataset.from_dict({"image": rows["photo"], "label": rows["person"]},
                               features=datasets.Features({"image": datasets.Image(), "label": people})
                               ).to_parquet(str(tmp_path / "usual.parquet"))
    assert torch.equal(source.load(torch.arange(3)).hq, open_source(str(tmp_path / "usual.parquet")).load(torch.arange(3)).hq)
    datasets.Dataset.from_dict(rows, features=datasets.Features({"photo": datasets.Image(), "person": people,
                                                                 "glasses": datasets.ClassLabel(names=["no", "yes"])})
                               ).to_parquet(str(tmp_path / "two.parquet"))
    with pytest.raises(SourceError, match="no identity column .* or one ClassLabel feature; has photo, person, glasses"):
        open_source(str(tmp_path / "two.parquet"))


def test_a_table_written_without_datasets_is_read_by_its_one_column_of_bytes_or_webdatasets_names(tmp_path, lfw_jpegs):
    """pyarrow or pandas write images as plain bytes (no Image feature); a table converted from
    WebDataset shards names its parts by extension (jpg, cls). Two columns of bytes leave it open."""
    images, _ = lfw_jpegs
    names = ["Zoe_Ball", "Al_Gore", "Zoe_Ball"]
    pq.write_table(pa.table({"photo": images[:3], "label": names}), tmp_path / "bytes.parquet")
    pq.write_table(pa.table({"__key__": ["a", "b", "c"], "jpg": images[:3], "cls": names}), tmp_path / "wds.parquet")
    expected = open_source(str(tmp_path / "bytes.parquet")).load(torch.arange(3))
    assert expected.hq.float().std() > 20 and expected.identity.tolist() == [1, 0, 1]
    from_wds = open_source(str(tmp_path / "wds.parquet")).load(torch.arange(3))
    assert torch.equal(from_wds.hq, expected.hq) and from_wds.identity.tolist() == [1, 0, 1]
    pq.write_table(pa.table({"photo": images[:3], "thumb": images[:3], "label": names}), tmp_path / "two.parquet")
    with pytest.raises(SourceError, match="no image column .* one column of bytes; has photo, thumb, label"):
        open_source(str(tmp_path / "two.parquet"))


def test_a_build_read_as_a_source_numbers_identities_as_it_does(tmp_path, lfw_jpegs):
    # Names in an order that text labels would number otherwise (by length, then alphabet):
    # before, a build made from a build gave the same person another identity number.
    images, _ = lfw_jpegs
    for name, image in zip(["Zed", "Al_Gore", "B", "Zed", "B"], images):
        (tmp_path / "faces" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / name / f"{len(list((tmp_path / 'faces' / name).iterdir()))}.jpg").write_bytes(image)
    folder = open_source(str(tmp_path / "faces"))
    assert folder.identity_names == ["Al_Gore", "B", "Zed"]
    build_dataset(load_recipe("maug"), folder, tmp_path / "raw", image_format="raw", progress=False)
    stored = open_source(str(tmp_path / "raw"))
    assert stored.identity_names == folder.identity_names and torch.equal(stored.identities, folder.identities)
    build_dataset(load_recipe("lgaf"), stored, tmp_path / "again", image_format="raw", progress=False)
    assert open_dataset(tmp_path / "again")["identity"] == open_dataset(tmp_path / "raw")["identity"] == [0, 1, 1, 2, 2]


def test_a_build_names_each_face_as_its_source_does_and_a_build_from_it_matches_attributes_by_those_names(
        tmp_path, lfw_jpegs):
    # Before, a build read as a source named its faces "BUILD row N": attributes keyed by file matched none of them.
    images, _ = lfw_jpegs
    for name, image in zip(["Zed/0.jpg", "Al_Gore/0.jpg", "Zed/1.jpg"], images):
        (tmp_path / "faces" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / name).write_bytes(image)
    (tmp_path / "attributes.tsv").write_text("file\tMale\nZed/1.jpg\t1\nAl_Gore/0.jpg\t0\n")
    build_dataset(load_recipe("maug"), open_source(str(tmp_path / "faces")), tmp_path / "raw", image_format="raw",
                  progress=False)
    assert open_dataset(tmp_path / "raw")["file"] == ["Al_Gore/0.jpg", "Zed/0.jpg", "Zed/1.jpg"]
    build_dataset(load_recipe("catface"), open_source(str(tmp_path / "raw")), tmp_path / "again", progress=False,
                  attributes=Attributes(tmp_path / "attributes.tsv"))
    again = open_dataset(tmp_path / "again")
    assert again["file"] == ["Al_Gore/0.jpg", "Zed/0.jpg", "Zed/1.jpg"]
    assert [row["Male"] for row in again["attributes"]] == [0.0, None, 1.0]


def test_faces_without_files_are_named_by_their_place_in_the_source(tmp_path, lfw_jpegs):
    images, labels = lfw_jpegs
    write_recordio(tmp_path / "plain", [pack_record(label, image) for image, label in zip(images[:3], labels)])
    assert [open_source(str(tmp_path / "plain.rec")).sample_name(key) for key in range(3)] == [
        "record 0", "record 1", "record 2"]
    write_insightface_recordio(tmp_path / "train", images[:2], [5, 5])  # record 0 is the header
    assert [open_source(str(tmp_path)).sample_name(key) for key in range(2)] == ["record 1", "record 2"]
    pq.write_table(pa.table({"image": images[:2], "label": [0, 1]}), tmp_path / "table.parquet")
    assert [open_source(str(tmp_path / "table.parquet")).sample_name(key) for key in range(2)] == ["row 0", "row 1"]
    write_bin(tmp_path / "set.bin", images[:2], [True])
    assert [open_source(str(tmp_path / "set.bin")).sample_name(key) for key in range(2)] == ["image 0", "image 1"]


def build_like_table(tmp_path, image: bytes, numbers: list[int], names: list[str]):
    rows = {"hq": [image] * len(numbers), "identity": numbers, "identity_name": names}
    pq.write_table(pa.table(rows), tmp_path / "pairs.parquet")
    return open_source(str(tmp_path / "pairs.parquet"))


def test_a_tables_identity_numbers_keep_their_gaps_and_one_number_named_twice_is_refused(tmp_path, lfw_jpegs):
    image = lfw_jpegs[0][0]
    kept = build_like_table(tmp_path, image, [2, 0, 2], ["Cy", "Al", "Cy"])
    assert kept.identities.tolist() == [2, 0, 2] and kept.identity_names == ["Al", "", "Cy"]
    with pytest.raises(SourceError, match="pairs.parquet: identity 0 is named both 'Al' and 'Bo' in column 'identity_name'"):
        build_like_table(tmp_path, image, [0, 0, 1], ["Al", "Bo", "Cy"])


@pytest.mark.parametrize("label, missing", [(datasets.Value("int64"), None), (datasets.ClassLabel(names=["a"]), -1)])
def test_a_table_with_rows_without_an_identity_is_refused_naming_the_first(tmp_path, lfw_jpegs, label, missing):
    """A null label, or a ClassLabel's -1 (the datasets library's "no label")."""
    images, _ = lfw_jpegs
    features = datasets.Features({"image": datasets.Image(), "label": label})
    rows = {"image": [{"bytes": b, "path": None} for b in images[:4]], "label": [0, missing, 0, missing]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(SourceError, match=r"2 rows without an identity in column 'label' \(the first: row 1\)"):
        open_source(str(tmp_path / "t"))


def test_a_saved_table_without_rows_is_refused_saying_so(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(SourceError, match="t: the table has no rows"):
        open_source(str(tmp_path / "t"))


def test_table_without_an_image_column_is_a_clear_error(tmp_path):
    datasets.Dataset.from_dict({"text": ["a"], "label": [0]}).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(SourceError, match="no image column"):
        open_source(str(tmp_path / "t"))


def test_a_table_whose_image_column_holds_no_image_bytes_is_refused_when_opened(tmp_path):
    datasets.Dataset.from_dict({"image": ["faces/a.jpg"], "label": [0]}).save_to_disk(str(tmp_path / "t"))
    with pytest.raises(SourceError, match=re.escape(f"{tmp_path / 't'}: image column 'image' holds string, not image "
                                                    "bytes (binary, or an Image feature's struct of bytes and path)")):
        open_source(str(tmp_path / "t"))


def test_a_table_source_pickles_as_a_reference_to_its_files_and_reads_the_same_faces_after(tmp_path, lfw_jpegs):
    """What a spawned decoding worker gets: not the table's images (the Arrow columns pickle by value)."""
    images, labels = lfw_jpegs
    image_table(images, labels).save_to_disk(str(tmp_path / "saved"))
    source = open_source(str(tmp_path / "saved"))
    sent = pickle.dumps(source)
    assert len(sent) < sum(len(image) for image in images) / 4
    received = pickle.loads(sent)
    keys = torch.tensor([0, 3, 5])
    assert torch.equal(received.load(keys).hq, source.load(keys).hq)
    assert received.sample_name(3) == source.sample_name(3) == "row 3"


@pytest.mark.parametrize("name, says", [("faces.parquet", "not a readable parquet file (Parquet magic bytes"),
                                         ("faces.arrow", "not a readable arrow file")])
def test_a_table_file_that_is_not_one_is_named(tmp_path, name, says):
    (tmp_path / name).write_bytes(b"PAR1 and then nothing a table holds")
    with pytest.raises(SourceError, match=re.escape(f"{tmp_path / name}: {says}")):
        open_source(str(tmp_path / name))


@pytest.mark.parametrize("full", [errno.ENOSPC, errno.EDQUOT], ids=["disk full", "quota spent"])
def test_a_parquet_table_whose_copy_fills_the_datasets_cache_says_so_rather_than_that_it_is_unreadable(
        tmp_path, monkeypatch, full):
    pq.write_table(pa.table({"image": pa.array([b"png"], pa.binary()), "label": [0]}), tmp_path / "faces.parquet")
    from datasets.builder import DatasetGenerationError

    def full_cache(*args, **kwargs):
        try:
            raise OSError(full, os.strerror(full))
        except OSError as error:
            raise DatasetGenerationError("An error occurred while generating the dataset") from error

    monkeypatch.setattr(datasets.Dataset, "from_parquet", full_cache)
    says = (f"{tmp_path / 'faces.parquet'}: its copy in the datasets cache ({datasets.config.HF_DATASETS_CACHE}) ran "
            "out of space; free some there, or set HF_DATASETS_CACHE to a folder on a disk with room")
    with pytest.raises(SourceError, match=re.escape(says)):
        open_source(str(tmp_path / "faces.parquet"))


def test_lfw_pairs_file_gives_folds_and_pairs_of_keys(lfw_source):
    source = open_source(str(LFW / "pairs.txt"))
    pairs = source.pairs
    assert len(pairs.same) == 4800 and source.folds == 8
    assert pairs.same.sum() == 2400 and torch.equal(torch.bincount(pairs.fold), torch.full((8,), 600))
    first_same = int(torch.nonzero(pairs.same)[0])
    left, right = source.load(torch.stack([pairs.left[first_same], pairs.right[first_same]])).identity
    assert left == right
    assert set(source.identity_names) <= set(lfw_source.identity_names)
    fold_identities = [set(int(i) for i in source.identities[pairs.left[pairs.fold == f]]) for f in range(8)]
    assert all(not (fold_identities[a] & fold_identities[b]) for a in range(8) for b in range(a))


@pytest.mark.parametrize("text, says", [
    (b"", "pairs.txt:1: expected '<folds><TAB><pairs per half fold>', two positive numbers"),
    (b"0\t300\n", "pairs.txt:1: expected '<folds><TAB><pairs per half fold>', two positive numbers"),
    (b"1\t1\nann\t1\t2\n\nann\tone\tbob\t2\n", "pairs.txt:4: expected image numbers, got 'ann one bob 2'"),
    (b"1\t1\nann\t1\t2\nann\t1\n", "pairs.txt:3: expected 3 (same) or 4 (different) fields, got 2"),
    (b"1\t2\nann\t1\t2\nann\t1\tbob\t2\n", "header promises 1 folds of 2x2 pairs, found 2 pairs"),
    (b"\xff\xd8\xff\xe0 a JPEG named .txt", "pairs.txt: not UTF-8 text (byte 1); expected an LFW-style pairs file"),
    ("1\t1\nJos\xe9\t1\t2\nann\t1\tbob\t2\n".encode("latin-1"), "pairs.txt: not UTF-8 text (byte 8)"),
])
def test_a_pairs_file_that_is_not_one_is_refused_naming_its_line(tmp_path, text, says):
    (tmp_path / "pairs.txt").write_bytes(text)
    with pytest.raises(SourceError, match=re.escape(says)):
        open_source(str(tmp_path / "pairs.txt"))


def test_insightface_bin_gives_pairs(tmp_path, lfw_jpegs):
    images, _ = lfw_jpegs
    write_bin(tmp_path / "set.bin", images, [True, False, True, False, True, False])
    source = open_source(str(tmp_path / "set.bin"))
    assert len(source) == 12 and source.pairs.same.tolist() == [True, False] * 3
    assert np.array_equal(source.load(torch.tensor([7])).hq[0].permute(1, 2, 0).numpy(), decoded(images[7]))


def test_a_bin_of_numpy_images_and_flags_gives_the_same_pairs(tmp_path, lfw_jpegs):
    images, _ = lfw_jpegs
    as_arrays = ([np.frombuffer(image, np.uint8) for image in images], list(np.array([True, False] * 3)))
    with open(tmp_path / "arrays.bin", "wb") as handle:
        pickle.dump(as_arrays, handle, protocol=2)
    source = open_source(str(tmp_path / "arrays.bin"))
    assert source.pairs.same.tolist() == [True, False] * 3
    assert np.array_equal(source.load(torch.tensor([7])).hq[0].permute(1, 2, 0).numpy(), decoded(images[7]))


def test_a_bin_naming_anything_else_is_refused_without_running_it(tmp_path, lfw_jpegs):
    images, _ = lfw_jpegs
    with open(tmp_path / "evil.bin", "wb") as handle:
        pickle.dump((images[:2], [OpensAFile(tmp_path / "ran")]), handle, protocol=4)
    with pytest.raises(SourceError, match=r"evil.bin: not an insightface .bin verification file \(it names io.open"):
        open_source(str(tmp_path / "evil.bin"))
    assert not (tmp_path / "ran").exists()


# ---- odd inputs -----------------------------------------------------------------------------


@pytest.fixture
def face() -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (5, 5), 2)


def test_greyscale_rgba_and_16_bit_are_converted(face):
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    image, fixes = decode_image(cv2.imencode(".png", grey)[1].tobytes(), "grey.png", 112)
    assert fixes == ["greyscale to RGB"] and np.array_equal(image[:, :, 0], grey) and np.array_equal(image[:, :, 2], grey)
    rgba = cv2.cvtColor(face[:, :, ::-1], cv2.COLOR_BGR2BGRA)
    image, fixes = decode_image(cv2.imencode(".png", rgba)[1].tobytes(), "rgba.png", 112)
    assert fixes == ["alpha dropped"] and np.array_equal(image, face)
    deep = face[:, :, ::-1].astype(np.uint16) * 257
    image, fixes = decode_image(cv2.imencode(".png", deep)[1].tobytes(), "deep.png", 112)
    assert fixes == ["16-bit to 8-bit"] and np.array_equal(image, face)


def test_colour_jpegs_decode_straight_to_rgb_and_grey_ones_are_still_converted(face, lfw_jpegs):
    for data in lfw_jpegs[0]:
        image, fixes = decode_image(data, "lfw.jpg", 112)
        swapped = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        assert jpeg_components(data) == 3 and fixes == [] and np.array_equal(image, swapped)
    progressive = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    grey = cv2.imencode(".jpg", cv2.cvtColor(face, cv2.COLOR_RGB2GRAY))[1].tobytes()
    assert jpeg_components(progressive) == 3 and jpeg_components(grey) == 1
    assert jpeg_components(cv2.imencode(".png", face)[1].tobytes()) is None
    assert decode_image(grey, "grey.jpg", 112)[1] == ["greyscale to RGB"]


def test_other_sizes_are_resized_or_refused_when_strict(face):
    big = cv2.resize(face, (224, 224))
    image, fixes = decode_image(jpeg(big), "big.jpg", 112)
    assert image.shape == (112, 112, 3) and fixes == ["resized to 112x112"]
    with pytest.raises(SourceError, match="big.jpg: is 224x224, expected 112x112"):
        decode_image(jpeg(big), "big.jpg", 112, strict=True)
    narrow = cv2.resize(face, (96, 112))  # the 112x96 crop of SphereFace-style alignment
    image, fixes = decode_image(jpeg(narrow), "narrow.jpg", 112)
    assert image.shape == (112, 112, 3) and fixes == ["stretched to 112x112 (not square)"]


def test_truncated_and_non_image_files_are_skipped_with_reasons(tmp_path, face):
    folder = tmp_path / "faces" / "bob"
    folder.mkdir(parents=True)
    full = jpeg(face)
    (folder / "a.jpg").write_bytes(full)
    (folder / "b.jpg").write_bytes(full[: len(full) // 3])
    (folder / "c.png").write_bytes(b"hello, not an image")
    (folder / "d.jpg").write_bytes(b"")
    source = open_source(str(tmp_path / "faces"))
    faces = source.load(torch.arange(4))
    skipped = dict(faces.skipped)
    assert faces.key.tolist() == [0] and faces.hq.shape == (1, 3, 112, 112)
    assert "b.jpg: truncated JPEG" in skipped[1]
    assert "c.png: not a readable image" in skipped[2]
    assert "d.jpg: not a readable image" in skipped[3]
    strict = open_source(str(tmp_path / "faces"), strict=True)
    with pytest.raises(SourceError, match="b.jpg: truncated JPEG"):
        strict.load(torch.arange(4))


def test_a_folder_source_orders_identities_and_files_by_name_and_keeps_only_images(tmp_path, face):
    for name in ["b/2.png", "b/1.JPG", "a/z.jpg", "a/\u00e9t\u00e9.jpeg", "c/session 2/0001.png", "c/session 1/x/0001.png",
                 "c/web.jfif", "a/._z.jpg", "a/.ipynb_checkpoints/z.jpg", ".trash/a/z.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(cv2.imencode(".png", face)[1].tobytes())
    (tmp_path / "a" / "notes.txt").write_text("not a face")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.md").write_text("no faces here")
    (tmp_path / "e").mkdir()
    with pytest.warns(UserWarning, match=r"2 files in identity folders not read, not images by their suffix \(.md 1, "
                                         r"\.txt 1;.*; 2 folders with no image not taken as identities \(d, e\)$") as warned:
        source = open_source(str(tmp_path))
    assert len(warned) == 1 and "folders of images" not in str(warned[0].message)  # c's sessions are c's
    assert [source.sample_name(key) for key in range(len(source))] == [
        "a/z.jpg", "a/\u00e9t\u00e9.jpeg", "b/1.JPG", "b/2.png", "c/session 1/x/0001.png", "c/session 2/0001.png",
        "c/web.jfif"]
    assert source.identities.tolist() == [0, 0, 1, 1, 2, 2, 2] and source.identity_names == ["a", "b", "c"]
    assert source.read(1)[1] == str(tmp_path / "a" / "\u00e9t\u00e9.jpeg")
    assert torch.equal(source.load(torch.tensor([3])).hq[0], torch.from_numpy(face[:, :, ::-1].copy()).permute(2, 0, 1))


def test_file_names_that_are_not_utf8_are_read_and_named_with_escapes_in_a_build(tmp_path, face):
    """A Latin-1 name (an old archive unpacked as its bytes) ended the scan in a UnicodeEncodeError traceback."""
    image = cv2.imencode(".png", face)[1].tobytes()
    for name in (b"faces/Jos\xe9/Jos\xe9_0001.png", b"faces/ann/caf\xe9.png", b"faces/ann/ann.png"):
        os.makedirs(os.path.dirname(tmp_path / os.fsdecode(name)), exist_ok=True)
        (tmp_path / os.fsdecode(name)).write_bytes(image)
    with pytest.warns(UserWarning, match=re.escape("2 file names not UTF-8 (Jos\\xe9/Jos\\xe9_0001.png, ann/caf\\xe9.png): "
                                                   "read, and named with \\x escapes in the file and identity_name "
                                                   "columns")):
        source = open_source(str(tmp_path / "faces"))
    assert [source.sample_name(key) for key in range(3)] == ["Jos\\xe9/Jos\\xe9_0001.png", "ann/ann.png", "ann/caf\\xe9.png"]
    assert source.identity_names == ["Jos\\xe9", "ann"]
    faces = source.load(torch.arange(3))
    assert not faces.skipped and bool((faces.hq == faces.hq[0]).all())
    build_dataset(load_recipe("maug"), source, tmp_path / "built", progress=False)
    built = open_dataset(tmp_path / "built")
    assert built["file"] == ["Jos\\xe9/Jos\\xe9_0001.png", "ann/ann.png", "ann/caf\\xe9.png"]
    assert built["identity_name"] == ["Jos\\xe9", "ann", "ann"]


def test_identity_folders_that_look_like_a_datasets_splits_are_named_in_a_warning(tmp_path, face):
    """faces/train/<identity>/ given as faces/ trained a classifier of two identities, train and val."""
    image = cv2.imencode(".png", face)[1].tobytes()
    for split in ("train", "val"):
        for identity in range(50):
            (tmp_path / split / f"id{identity}").mkdir(parents=True)
            (tmp_path / split / f"id{identity}" / "1.png").write_bytes(image)
    with pytest.warns(UserWarning, match=r"its 2 identity folders \(train, val\) hold 100 folders of images: if "
                                         r"those are the identities, give the folder that holds them as the source "
                                         r"\(.*train\)"):
        assert open_source(str(tmp_path)).identity_names == ["train", "val"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(open_source(str(tmp_path / "train")).identity_names) == 50


def test_a_folder_of_pgm_and_ppm_faces_as_older_face_sets_ship_them_is_read(tmp_path, face):
    (tmp_path / "s1").mkdir()
    cv2.imwrite(str(tmp_path / "s1" / "1.pgm"), face[:, :, 0])
    cv2.imwrite(str(tmp_path / "s1" / "2.ppm"), face)
    hq = open_source(str(tmp_path)).load(torch.arange(2)).hq
    assert torch.equal(hq[0], torch.from_numpy(face[:, :, 0]).expand(3, -1, -1))
    assert torch.equal(hq[1], torch.from_numpy(face[:, :, ::-1].copy()).permute(2, 0, 1))


def test_empty_and_missing_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty" / "alice").mkdir(parents=True)
    with pytest.raises(SourceError, match="no images found"):
        open_source(str(tmp_path / "empty"))
    for name in ["flat/1.jpg", "flat/2.jpg", "flat/alice/1.heic", "flat/alice/2.heic", "flat/alice/3.HEIC",
                 "flat/bob/scan"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SourceError, match=r"flat: no images found in identity sub-folders .*; 4 files in identity "
                                          r"folders not read, not images by their suffix \(.heic 3, no suffix 1; .*; "
                                          r"2 images directly in it not read"):
        open_source(str(tmp_path / "flat"))
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "nowhere"))


def test_attributes_by_file_and_by_identity(lfw_source):
    attributes = Attributes(LFW / "attributes.tsv")
    assert {"Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes"} <= set(attributes.names)
    keys = torch.arange(0, 40)
    values = attributes.lookup(lfw_source, keys, lfw_source.identities[keys])
    assert values.shape == (40, len(attributes.names))
    male, female = attributes.names.index("Male"), attributes.names.index("Female")
    labelled = ~torch.isnan(values[:, male])
    assert labelled.sum() > 30
    assert set(values[labelled, male].unique().tolist()) <= {0.0, 1.0}
    assert not ((values[labelled, male] == 1) & (values[labelled, female] == 1)).any()


def test_attributes_keyed_by_identity(tmp_path):
    (tmp_path / "a.csv").write_text("identity,Male\ndemo_00000,1\ndemo_00001,0\n")
    source = open_source("demo")
    values = Attributes(tmp_path / "a.csv").lookup(source, torch.tensor([0, 10, 20]), torch.tensor([0, 1, 2]))
    assert values[:2, 0].tolist() == [1.0, 0.0] and torch.isnan(values[2, 0])


def test_names_match_whichever_unicode_form_each_side_writes(tmp_path):
    """A folder copied from macOS names 'Zoë' decomposed (NFD), a spreadsheet or a pairs file composed (NFC)."""
    composed, decomposed = "Zo\u00eb", "Zoe\u0308"
    for name in (decomposed, "Ann"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "faces" / name / "1.png"), np.zeros((112, 112, 3), np.uint8))
    (tmp_path / "a.csv").write_text(f"identity,Male\n{composed},1\nAnn,0\n", encoding="utf-8")
    (tmp_path / "pairs.txt").write_text(f"1\t1\n{composed}\t1\t1\n{composed}\t1\tBob\t1\n", encoding="utf-8")
    source = open_source(str(tmp_path / "faces"))
    assert [source.identity_name(i) for i in range(2)] == ["Ann", decomposed]
    assert Attributes(tmp_path / "a.csv").lookup(source, torch.tensor([0, 1]), torch.tensor([0, 1])).tolist() == [[0.0], [1.0]]
    assert identities_outside_pairs(source, PairsSource(tmp_path / "pairs.txt"), [1]).tolist() == [0]


def test_attributes_read_blanks_as_nan_keep_names_as_text_and_take_a_key_repeated_with_the_same_values(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"identity,Male,Bald\r\n0001,1,\r\n0002,0,1\r\n\r\n0001,1.0,\r\n")
    attributes = Attributes(tmp_path / "a.csv")
    assert attributes.names == ["Male", "Bald"] and set(attributes.rows) == {"0001", "0002"}
    identities = types.SimpleNamespace(identity_name=lambda i: ["0002", "0001", "0003"][i])
    values = attributes.lookup(identities, torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2]))
    assert values[0].tolist() == [0.0, 1.0] and values[1, 0] == 1.0 and torch.isnan(values[1, 1])
    assert torch.isnan(values[2]).all()
    assert attributes.select(["Bald"]).lookup(identities, torch.tensor([5]), torch.tensor([0])).tolist() == [[1.0]]


def test_an_attributes_fingerprint_follows_what_the_table_says_not_its_file(tmp_path):
    (tmp_path / "a.csv").write_text("identity,Male,Bald\nann,1,\nbob,0,1\n")
    (tmp_path / "moved.tsv").write_text("identity\tMale\tBald\r\nann\t1.0\t\r\nbob\t0\t1\r\n")
    (tmp_path / "edited.csv").write_text("identity,Male,Bald\nann,1,\nbob,0,0\n")
    (tmp_path / "renamed.csv").write_text("identity,Male,Chubby\nann,1,\nbob,0,1\n")
    fingerprint = Attributes(tmp_path / "a.csv").fingerprint()
    assert Attributes(tmp_path / "moved.tsv").fingerprint() == fingerprint
    assert Attributes(tmp_path / "edited.csv").fingerprint() != fingerprint
    assert Attributes(tmp_path / "renamed.csv").fingerprint() != fingerprint
    assert Attributes(tmp_path / "a.csv").select(["Male"]).fingerprint() != fingerprint


def test_a_key_whose_rows_disagree_is_refused_naming_both_rows(tmp_path):
    (tmp_path / "a.tsv").write_text("file\tMale\tBald\nann.jpg\t1\t0\nbob.jpg\t0\t0\nann.jpg\t1\t1\n")
    with pytest.raises(SourceError) as error:
        Attributes(tmp_path / "a.tsv")
    assert str(error.value) == f"{tmp_path / 'a.tsv'}: file 'ann.jpg' has rows that differ (data rows 1 and 3, after the header); keep one"


@pytest.mark.parametrize("rows, says", [("bob.jpg\t1\n", "Expected 3 columns, got 2: bob.jpg"),
                                        ("bob.jpg\tyes\t1\n", "column 'Male': CSV conversion error to float: invalid value 'yes'"),
                                        ("bob.jpg\t1\t-inf\n", "file 'bob.jpg' has Bald = -inf (data row 2, after the "
                                                               "header); leave the cell empty where it is not known")])
def test_an_attributes_row_that_cannot_be_read_is_named(tmp_path, rows, says):
    (tmp_path / "a.tsv").write_text("file\tMale\tBald\nann.jpg\t1\t0\n" + rows)
    with pytest.raises(SourceError) as error:
        Attributes(tmp_path / "a.tsv")
    assert str(error.value).startswith(f"{tmp_path / 'a.tsv'}: ") and says in str(error.value)


def test_a_spreadsheets_csv_that_starts_with_a_byte_order_mark_is_read(tmp_path):
    """Spreadsheets save "CSV UTF-8" with a BOM; it was refused as a first column named '\\ufeffidentity'."""
    path = tmp_path / "a.csv"
    path.write_bytes("identity,Male\r\nann,1\r\n".encode("utf-8-sig"))
    attributes = Attributes(path)
    assert attributes.keyed_by == "identity" and attributes.names == ["Male"] and list(attributes.rows) == ["ann"]


@pytest.mark.parametrize("table, says", [
    ("file,M\xe4nnlich\nann.jpg,1\n".encode("latin-1"), "not UTF-8 text (byte 0xe4 at 7 of its first line): save the "
                                                       "table as a UTF-8 CSV or TSV"),
    ("file,Male\nJos\xe9.jpg,1\n".encode("latin-1"), "column 'file': CSV conversion error to string: invalid UTF8 "
                                                    "data: save the table as a UTF-8 CSV or TSV"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (byte 0x89 at 1 of its first line)"),
])
def test_an_attributes_file_that_is_not_utf8_text_is_refused_saying_so(tmp_path, table, says):
    """A spreadsheet's Latin-1 export, or an image given by mistake: was a UnicodeDecodeError traceback."""
    (tmp_path / "a.csv").write_bytes(table)
    with pytest.raises(SourceError) as error:
        Attributes(tmp_path / "a.csv")
    assert str(error.value).startswith(f"{tmp_path / 'a.csv'}: {says}")


@pytest.mark.parametrize("text, says", [("", "the first column must be 'file' or 'identity', got ''"),
                                        ("file\tMale\n", "no rows after the header"),
                                        ("file\tMale\tMale\nann.jpg\t1\t0\n", ":1: two columns are named 'Male'")])
def test_an_attributes_file_without_rows_or_with_a_column_twice_is_refused(tmp_path, text, says):
    (tmp_path / "a.tsv").write_text(text)
    with pytest.raises(SourceError) as error:
        Attributes(tmp_path / "a.tsv")
    assert str(error.value).startswith(str(tmp_path / "a.tsv")) and says in str(error.value)


def test_demo_takes_a_number_of_identities_of_ten_faces_each():
    source = open_source("demo:2000")
    assert len(source) == 20_000 and source.num_identities == 2000
    assert source.load(torch.tensor([19_999])).identity.tolist() == [1999]
    with pytest.raises(SourceError, match="demo:many"):
        open_source("demo:many")
