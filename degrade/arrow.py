"""Write pairs as an Arrow dataset in the ``datasets.Dataset.save_to_disk`` layout, and open one.

A finished folder holds ``data-XXXXX-of-YYYYY.arrow`` shards, ``dataset_info.json`` and
``state.json`` (what ``datasets.load_from_disk`` reads), ``degrade.json`` (recipe text, seed,
source, format, versions) and ``summary.json`` (pairs, skipped inputs and why, conversions).

Shard i holds the keys [i * shard_size, (i + 1) * shard_size) that decoded, so its bytes
depend on nothing but the build's settings. It is written under a temporary name and renamed
into place, with its ``.json`` account (rows, skipped inputs) renamed just before it; a shard
on disk is always whole. ``state.json`` is written last, so an unfinished build never opens
as a dataset. Running the same build again skips finished shards (resume) and remakes one
damaged since it was written (cut short, unreadable or deleted); under torchrun each rank
writes the shards i with i % world_size == rank.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import get_worker_info

from degrade.distributed import join_torchrun, wait_for_all_ranks
from degrade.engine import PairBatch, checked_arguments
from degrade.layout import channels_last
from degrade.loader import pair_batches
from degrade.locks import lock_exclusively
from degrade.machine import out_of_space, usable_cores
from degrade.ops import Params, own_op_code
from degrade.progress import progress_bar
from degrade.recipe import Recipe
from degrade.sources import Faces, Source, SourceError
from degrade.sources.attributes import Attributes
from degrade.sources.table import load_saved, read_json, stream_rows
from degrade.text import counted, differences, every, readable

if TYPE_CHECKING:
    import datasets

# PNG encoding is the cost of a PNG build, so: zlib's Huffman coding alone (no search for repeated
# strings) after the "average" row filter. On one core of the 2-core machine, LFW faces: 0.26 ms
# per HQ face for 5 % more bytes than zlib level 1 with the "up" filter (0.42 ms; OpenCV's default
# level 3 with every filter tried per row: 0.65 ms), 0.23 against 0.36 ms per MAug LQ face for
# 20 % more bytes; PIL (what `datasets` decodes the Image feature with) reads them 10 % faster.
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
               cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG]
FORMATS = ("png", "raw")
MANIFEST = "degrade.json"
SUMMARY = "summary.json"
REMAKE = "run the same `degrade build` command again to remake it"
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


class BuildError(RuntimeError):
    """A build that cannot proceed, or a folder that is not a finished build."""


def encode_png(image: torch.Tensor) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    # OpenCV swaps the channels in 2 us per LFW face, without the GIL; NumPy's reversed copy took 34.
    ok, data = cv2.imencode(".png", cv2.cvtColor(image.numpy(), cv2.COLOR_RGB2BGR), PNG_OPTIONS)
    if not ok:
        raise BuildError("PNG encoding failed")
    return data.tobytes()


def _param_type(value: torch.Tensor) -> pa.DataType:
    if value.dtype == torch.bool:
        return pa.bool_()
    return pa.float32() if value.dtype.is_floating_point else pa.int64()


def _nest(flat: dict[str, object]) -> dict[str, object]:
    """{'a.b': x} -> {'a': {'b': x}}."""
    nested: dict[str, object] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def _struct_type(node: dict) -> pa.StructType:
    return pa.struct([(k, _struct_type(v) if isinstance(v, dict) else v) for k, v in sorted(node.items())])


def pair_schema(recipe: Recipe, image_format: str, attribute_names: list[str]) -> pa.Schema:
    """The Arrow schema of a build, with the HF feature description in its metadata."""
    sample = recipe.sample(torch.zeros(1, dtype=torch.int64))
    image_type = _IMAGE if image_format == "png" else pa.binary()
    fields = [("key", pa.int64()), ("identity", pa.int64()), ("identity_name", pa.string()), ("file", pa.string()),
              ("hq", image_type), ("lq", image_type),
              ("params", _struct_type(_nest({k: _param_type(v) for k, v in sample.items()})))]
    if attribute_names:
        fields.append(("attributes", pa.struct([(name, pa.float32()) for name in attribute_names])))
    schema = pa.schema(fields)
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": _features(schema, image_format)}})})


def _features(schema: pa.Schema, image_format: str) -> dict:
    """HF ``datasets`` feature description of the schema."""

    def describe(name: str, dtype: pa.DataType) -> dict:
        if name in ("hq", "lq"):
            return {"_type": "Image"} if image_format == "png" else {"dtype": "binary", "_type": "Value"}
        if pa.types.is_struct(dtype):
            return {f.name: describe(f.name, f.type) for f in dtype}
        return {"dtype": {"bool": "bool", "float": "float32"}.get(str(dtype), str(dtype)), "_type": "Value"}

    return {f.name: describe(f.name, f.type) for f in schema}


_ENCODERS = ThreadPoolExecutor(max_workers=usable_cores())  # cv2.imencode releases the GIL
# Threads write the shards (each shard's batches as they come, see _ShardFile) while the loop
# makes the next batches (Arrow writes, PNG encoding and file I/O release the GIL). With this and
# `HostRows.of`, a raw maug build of 153,200 faces on the H100 machine went from 5,582 to 22,405
# pairs/s (docs/benchmarks.md; then the threads wrote whole shards).
SHARD_WRITERS = 2


def _raw_array(images: torch.Tensor | list[torch.Tensor]) -> pa.Array:
    """HxWx3 bytes per image as one binary array over the batch's own buffer (N, H, W, 3), not
    copied image by image (which bounded raw builds at ~2,500 pairs/s)."""
    if isinstance(images, torch.Tensor):
        pixels = images.reshape(-1)
        sizes = np.full(len(images), images.shape[1:].numel())
    else:
        pixels = torch.cat([i.reshape(-1) for i in images] or [torch.empty(0, dtype=torch.uint8)])
        sizes = np.array([i.numel() for i in images], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if offsets[-1] >= 2 ** 31:
        raise BuildError(f"a batch of {len(sizes)} raw images exceeds 2 GiB; use a smaller --batch-size")
    return pa.Array.from_buffers(pa.binary(), len(sizes),
                                 [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(pixels.numpy())])


def _images_array(images: torch.Tensor | list[torch.Tensor] | list[bytes], image_format: str) -> pa.Array:
    """The column of a batch's images: raw bytes, or PNG (encoded here unless they already are)."""
    if image_format == "raw":
        return _raw_array(images)
    already = isinstance(images, list) and all(isinstance(image, bytes) for image in images)
    encoded = images if already else list(_ENCODERS.map(encode_png, images))
    return pa.StructArray.from_arrays([pa.array(encoded, pa.binary()), pa.nulls(len(encoded), pa.string())],
                                      fields=list(_IMAGE))


@dataclasses.dataclass
class HostRows:
    """A batch of pairs on the host in the layout shards store: images (N, H, W, 3) uint8 RGB, or
    once encoded (:meth:`as_png`) the PNG bytes of each."""

    key: torch.Tensor                                    # (N,) int64
    identity: torch.Tensor                               # (N,) int64
    hq: torch.Tensor | list[bytes]                       # (N, S, S, 3)
    lq: torch.Tensor | list[torch.Tensor] | list[bytes]  # (N, S', S', 3), or each native-size face (s, s, 3)
    params: Params                                       # (N,) tensors

    @classmethod
    def of(cls, faces: Faces, batch: PairBatch, recipe: Recipe) -> HostRows:
        """The pairs of ``batch`` (on any device) made from ``faces``. Images are transposed where
        they are (``layout.channels_last``: on a GPU at no cost to the writing process, then copied
        back into pinned memory; on a CPU by OpenCV, in the decoding worker that made them)."""
        hq, lq = (channels_last(images).to("cpu", non_blocking=True) for images in (batch.hq, batch.lq))
        params = {name: value.to("cpu", non_blocking=True) for name, value in batch.params.items()}
        if batch.lq.is_cuda:
            torch.cuda.current_stream(batch.lq.device).synchronize()
        side = recipe.native_sides(params)
        if side is not None:
            lq = [image[:s, :s] for image, s in zip(lq, side.tolist())]
        return cls(faces.key, faces.identity, hq, lq, params)

    def as_png(self) -> HostRows:
        """The same rows with every image encoded, one after the other in this thread."""
        return dataclasses.replace(self, hq=[encode_png(image) for image in self.hq],
                                   lq=[encode_png(image) for image in self.lq])


def pairs_table(rows: HostRows, schema: pa.Schema, identity_names: list[str], files: list[str], image_format: str,
                attributes: torch.Tensor | None) -> pa.Table:
    """One batch as a table of ``schema``: images encoded, params nested, attributes (NaN -> null)."""
    columns = {
        "key": pa.array(rows.key.numpy(), pa.int64()),
        "identity": pa.array(rows.identity.numpy(), pa.int64()),
        "identity_name": pa.array(identity_names, pa.string()),
        "file": pa.array(files, pa.string()),
        "hq": _images_array(rows.hq, image_format),
        "lq": _images_array(rows.lq, image_format),
        "params": _params_array(rows.params, schema.field("params").type),
    }
    if attributes is not None:
        names = [f.name for f in schema.field("attributes").type]
        values = attributes.numpy()
        columns["attributes"] = pa.StructArray.from_arrays(
            [pa.array(values[:, j], pa.float32(), mask=np.isnan(values[:, j])) for j in range(len(names))], names=names)
    return pa.table(columns, schema=schema)


def _params_array(params: Params, struct: pa.StructType) -> pa.StructArray:
    def build(node: dict, dtype: pa.StructType) -> pa.StructArray:
        children = [build(node[f.name], f.type) if pa.types.is_struct(f.type)
                    else pa.array(node[f.name].numpy(), f.type) for f in dtype]
        return pa.StructArray.from_arrays(children, fields=list(dtype))

    return build(_nest(params), struct)


@dataclasses.dataclass
class BuildSummary:
    pairs: int  # in the dataset
    made: int   # by this run (not in shards an earlier run had written)
    shards: int
    resumed_shards: int
    seconds: float
    skipped: list[tuple[int, str]]
    fixes: dict[str, int]
    without_attributes: int = 0  # pairs with every attribute unknown (no row of the table names them)

    def describe(self) -> str:
        lines = [f"{counted(self.pairs, 'pair')} in {counted(self.shards, 'shard')}"
                 + (f" ({self.resumed_shards} already done)" if self.resumed_shards else "")
                 + f", {self.seconds:.1f} s"
                 + (f" ({self.made / self.seconds:.0f} pairs/s)" if self.made and self.seconds > 0 else "")]
        if self.skipped:
            reasons = collections.Counter(reason.split(": ", 1)[-1] for _, reason in self.skipped)
            lines.append(f"skipped {counted(len(self.skipped), 'input')}: "
                         + "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common()))
            lines += [f"  {reason}" for _, reason in self.skipped[:5]]
        if self.fixes:
            lines.append("converted: " + ", ".join(f"{count} {fix}" for fix, count in sorted(self.fixes.items())))
        if self.without_attributes:
            lines.append(f"no attributes for {self.without_attributes:,} of the {counted(self.pairs, 'pair')}: no row "
                         "of the table names them (or its cells are blank); their attributes are null")
        return "\n".join(lines)


def build_dataset(recipe: Recipe, source: Source, out: str | Path, *, seed: int | None = None, limit: int | None = None,
                  batch_size: int = 256, shard_size: int = 2048, device: str = "cpu", num_workers: int = 0,
                  image_format: str = "png", attributes: Attributes | None = None,
                  progress: bool = True) -> BuildSummary:
    """Degrade the first ``limit`` samples of ``source`` with ``recipe`` into an Arrow dataset at ``out``."""
    checked_arguments("build_dataset", recipe, source, device, attributes)
    if image_format not in FORMATS:
        raise BuildError(f"unknown format {image_format!r}; use one of {', '.join(FORMATS)}")
    if batch_size < 1 or shard_size < 1 or (limit is not None and limit < 1):
        raise BuildError(f"batch_size, shard_size and limit must be >= 1, got {batch_size}, {shard_size} and {limit}")
    out = Path(out)
    if readable(out) != str(out):
        raise BuildError(f"{readable(out)}: not a UTF-8 path (the bytes written as \\x escapes); Arrow writes only to "
                         "paths in UTF-8: choose another --out")
    seed = recipe.seed if seed is None else seed
    total = len(source) if limit is None else min(limit, len(source))
    if total <= 0:
        raise BuildError(f"source {source.name!r} is empty: nothing to build")
    if attributes is not None:
        attributes.check_names(source, total)
    rank, world = join_torchrun("gloo")
    names = shard_names(total, shard_size)
    shards = len(names)
    manifest = _manifest(recipe, source, seed, total, shard_size, image_format, attributes)
    if rank == 0:
        _prepare_folder(out, manifest)
    # Written by an earlier run (no rank writes yet); one damaged since is made again.
    done = {i for i, name in enumerate(names) if not shard_damage(out / name)}
    if rank == 0 and image_format == "raw":
        left = (_shard_bounds(i, shard_size, total) for i in range(shards) if i not in done)
        _refuse_without_room(out, recipe, sum(stop - first for first, stop in left))
    wait_for_all_ranks()
    mine = [i for i in range(shards) if i % world == rank]
    todo = [i for i in mine if i not in done]
    schema = pair_schema(recipe, image_format, attributes.names if attributes else [])
    started = time.perf_counter()
    bounds = {i: _shard_bounds(i, shard_size, total) for i in mine}
    bar = progress_bar(total=sum(stop - first for first, stop in bounds.values()), unit="pair",
                       desc=f"build {recipe.name}" + (f" rank {rank}" if world > 1 else ""),
                       disable=not progress or rank > 0, smoothing=0.1)
    bar.update(sum(stop - first for i, (first, stop) in bounds.items() if i not in todo))
    key_batches = {i: torch.arange(*bounds[i]).split(batch_size) for i in todo}
    batches = [keys for i in todo for keys in key_batches[i]]
    # Not pinned: on the H100 machine the DataLoader's one pinning thread held 16 workers' decoding
    # to 49-62 k faces/s, against 87-99 k without it, and took 1 s more to the first batch
    # (`benchmarks/build_bounds.py`); whole builds in alternating rounds were within their noise.
    made = pair_batches(recipe, source, batches, device, seed, num_workers, pin_memory=False,
                        finish=functools.partial(_rows_to_write, recipe=recipe, image_format=image_format))
    table_of = functools.partial(_rows_table, schema=schema, image_format=image_format, source=source,
                                 attributes=attributes)
    # Each shard's batches are written in order by one thread, shards alternating between the
    # threads; at most SHARD_WRITERS shards' worth of batches wait, so memory stays bounded.
    waiting_at_most = SHARD_WRITERS * math.ceil(shard_size / batch_size)
    with contextlib.ExitStack() as running:
        running.callback(bar.close)  # last, also when the build stops: its line ends before any message
        running.callback(made.close)  # the decoding workers stop here, inside the build's time
        writers = [running.enter_context(ThreadPoolExecutor(max_workers=1)) for _ in range(SHARD_WRITERS)]
        waiting: collections.deque = collections.deque()
        for slot, index in enumerate(todo):
            first, stop = bounds[index]
            writer, shard = writers[slot % SHARD_WRITERS], _ShardFile(out / names[index], schema, table_of, stop - first)
            try:
                for _ in key_batches[index]:
                    rows, skipped, fixes = next(made)
                    bar.update(len(skipped) + (0 if rows is None else len(rows.key)))
                    waiting.append(writer.submit(shard.add, rows, skipped, fixes))
                    while len(waiting) > waiting_at_most:
                        waiting.popleft().result()
            except BaseException:  # the build stops inside this shard: after its queued writes, its file is let go
                writer.submit(shard.release)
                raise
            waiting.append(writer.submit(shard.close))
        for pending in waiting:
            pending.result()
    wait_for_all_ranks()
    return _finish(out, names, total, recipe, seed, schema, image_format, started, done, rank)


def _refuse_without_room(out: Path, recipe: Recipe, pairs: int) -> None:
    """Stop a raw build whose ``pairs`` still to write cannot fit in the free space of ``out``'s file
    system, before it starts: raw pixels take a known number of bytes (an MS1M-sized source, 5.8 M
    faces, takes 437 GB), and a full disk would stop it hours in. The bound counts the HQ faces,
    and the LQ ones where their size is fixed (native-size LQ faces take less than their canvas). A
    file system that reports no free space at all (as a mount that does not know its own may) is not
    judged: a full one fails the first write with its own message anyway."""
    per_pair = 3 * recipe.size ** 2 + (0 if recipe.makes_native_size else 3 * recipe.output_size ** 2)
    needed, free = pairs * per_pair, shutil.disk_usage(out).free
    if 0 < free < needed:
        raise BuildError(f"{out}: the {counted(pairs, 'pair')} left to build take at least {needed / 1e9:,.1f} GB as raw "
                         f"pixels, and {free / 1e9:,.1f} GB are free there; free some space, use another --out, or "
                         "build --format png (a fraction of the size)")


def _rows_to_write(faces: Faces, batch: PairBatch, recipe: Recipe,
                   image_format: str) -> tuple[HostRows | None, list, collections.Counter]:
    """What the build keeps of a batch, made where its pairs are made: its rows laid out for
    writing (None when every input was skipped), the skipped inputs and the conversions made.

    In a CPU build's decoding worker (a process of one core's work) PNG rows are encoded there
    too, as a per-image OpenCV pipeline would; elsewhere the writer's encoding threads do it. On
    the 2-core machine `degrade bench --build` (maug, LFW) went from 1,600-1,740 to 2,110-2,135
    PNG pairs/s: the writing process's threads had competed with the workers for the cores."""
    if len(faces.key) == 0:
        return None, faces.skipped, faces.fixes
    rows = HostRows.of(faces, batch, recipe)
    if image_format == "png" and get_worker_info() is not None:
        rows = rows.as_png()
    return rows, faces.skipped, faces.fixes


def _rows_table(rows: HostRows, *, schema: pa.Schema, image_format: str, source: Source,
                attributes: Attributes | None) -> pa.Table:
    identity_names = [source.identity_name(int(i)) for i in rows.identity]
    files = [source.sample_name(int(k)) for k in rows.key]
    values = attributes.lookup(source, rows.key, rows.identity) if attributes else None
    return pairs_table(rows, schema, identity_names, files, image_format, values)


class _ShardFile:
    """One shard, written batch by batch as the batches are made (PNGs encoded here unless the
    workers did) into ``<name>.partial``, which becomes ``<name>`` once the shard is complete and
    its account (``<name>.json``: rows, skipped inputs, conversions) is written. A shard file that
    exists is whole, so an interrupted build resumes after the last one. Writing each batch as it
    comes rather than the shard at its end overlaps the writing with making the next batches.

    ``pairs``: the shard's key count. Its batches' rows and skipped inputs must add up to it
    before it is made whole; a batch whose writing failed leaves it ``.partial``.

    The ``.partial`` file is locked (``flock``) from before it is emptied until it is renamed: a
    second build of the same folder at the same time (a job started twice) fails at a shard the
    first is writing, rather than emptying the file under it (its writes then leave zeros where
    the other's were, in a shard that reads as whole when the other is killed)."""

    def __init__(self, path: Path, schema: pa.Schema, table_of: Callable[[HostRows], pa.Table], pairs: int) -> None:
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        self.table_of, self.pairs = table_of, pairs
        self.lock = os.open(self.partial, os.O_WRONLY | os.O_CREAT, 0o644)  # not emptied before it is held
        if not lock_exclusively(self.lock):
            os.close(self.lock)
            raise BuildError(f"{self.partial}: another `degrade build` is writing this shard now; one build of a "
                             "folder at a time (the same command resumes it after that one ends)")
        self.sink = pa.OSFile(str(self.partial), "wb")
        self.stream = pa.ipc.new_stream(self.sink, schema)
        self.rows, self.skipped, self.fixes, self.without_attributes = 0, [], collections.Counter(), 0

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """An OSError of the shard's writes (a full disk, a lost mount) as a BuildError naming it."""
        try:
            yield
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            run = "free some space and run" if out_of_space(error) else "run"
            raise BuildError(f"{self.partial}: {reason}; the shard stays unfinished: {run} the same command again "
                             "to resume the build at it") from error

    def add(self, rows: HostRows | None, skipped: list, fixes: collections.Counter) -> None:
        if rows is not None:
            table = self.table_of(rows)
            with self._writing():
                self.stream.write_table(table)
            self.rows += table.num_rows
            if "attributes" in table.column_names:
                self.without_attributes += pairs_without_attributes(table.column("attributes"))
        self.skipped += skipped
        self.fixes.update(fixes)

    def release(self) -> None:
        """Close the file unfinished: the shard stays ``.partial`` (a build that failed before its end)."""
        self.sink.close()
        os.close(self.lock)

    def close(self) -> None:
        try:
            with self._writing():
                self.stream.close()
                self.sink.close()
            if self.rows + len(self.skipped) != self.pairs:
                raise BuildError(f"{self.partial}: {self.rows} rows and {len(self.skipped)} skipped inputs written "
                                 f"of {self.pairs}; the shard stays unfinished")
            with self._writing():
                _write_atomic(_account_of(self.path), json.dumps(
                    {"rows": self.rows, "skipped": self.skipped, "fixes": dict(sorted(self.fixes.items())),
                     "without_attributes": self.without_attributes}, sort_keys=True))
                os.replace(self.partial, self.path)
        finally:
            os.close(self.lock)


def pairs_without_attributes(column: pa.ChunkedArray) -> int:
    """How many rows of an attributes column have every attribute null (no row of the table named them)."""
    known = np.zeros(len(column), bool)
    for index in range(column.type.num_fields):
        known |= pc.is_valid(pc.struct_field(column, index)).to_numpy(zero_copy_only=False)
    return int((~known).sum())


def shard_names(pairs: int, shard_size: int) -> list[str]:
    """The file names of the shards of a build of ``pairs`` pairs, ``shard_size`` to a shard."""
    shards = math.ceil(pairs / shard_size)
    return [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]


def _shards_of(path: Path) -> list[Path]:
    """The shard files of the build in ``path``, as its manifest's settings name them."""
    settings = read_json(path / MANIFEST)
    return [path / name for name in shard_names(settings["pairs"], settings["shard_size"])]


def _account_of(shard: Path) -> Path:
    """A shard's account, ``NAME.arrow.json``: the rows written to it, its skipped inputs, its conversions."""
    return shard.with_name(shard.name + ".json")


def _shard_bounds(index: int, shard_size: int, total: int) -> tuple[int, int]:
    return index * shard_size, min((index + 1) * shard_size, total)


def _manifest(recipe: Recipe, source: Source, seed: int, total: int, shard_size: int, image_format: str,
              attributes: Attributes | None) -> dict:
    """What a build is made of; a resumed build must match it. The datasets version is read from
    its package metadata: importing it takes 0.7 s, a fifth of the README's demo build."""
    from degrade import __version__

    own_code = own_op_code([leaf.op for leaf in recipe.leaves])
    return {
        "recipe": recipe.name, "recipe_text": recipe.text, "seed": seed, "source": str(source.name),
        "pairs": total, "shard_size": shard_size, "format": image_format,
        "attributes": str(attributes.path) if attributes else None,
        # What the table says, so that a build resumed after its file was edited is refused; absent
        # without a table, so that builds without one, begun before it was recorded, still resume.
        **({"attributes_values": attributes.fingerprint()} if attributes else {}),
        # The files of the recipe's own ops (module:Class), as degrade's own code is known by its version.
        **({"own_ops_code": own_code} if own_code else {}),
        "versions": {"degrade": __version__, "torch": torch.__version__.split("+")[0],
                     "datasets": importlib.metadata.version("datasets"), "pyarrow": pa.__version__},
    }


def _differences(previous: dict, manifest: dict) -> str:
    """What a folder's build has that this one has not, e.g. "the recipe's text; seed 0 there, 3 here"."""
    def compared(settings: dict) -> dict:  # each version by its package's name
        return {**{k: v for k, v in settings.items() if k != "versions"}, **(settings.get("versions") or {})}

    return differences(compared(previous), compared(manifest))


def _prepare_folder(out: Path, manifest: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        previous = read_json(manifest_path)
        if previous != manifest:
            raise BuildError(f"{out}: holds a different build ({_differences(previous, manifest)}); "
                             "use a new --out or delete it")
    elif any(out.iterdir()):
        raise BuildError(f"{out}: exists and is not a degrade build; use an empty or new folder")
    for finished in ("state.json", SUMMARY):
        (out / finished).unlink(missing_ok=True)
    _write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))


def _finish(out: Path, names: list[str], total: int, recipe: Recipe, seed: int, schema: pa.Schema, image_format: str,
            started: float, done: set[int], rank: int) -> BuildSummary:
    """Gather the shards' accounts; rank 0 writes the summary and the files that make it a dataset.
    ``done``: the shards an earlier run had written."""
    rows, made, skipped, fixes, without_attributes = 0, 0, [], collections.Counter(), 0
    for index, name in enumerate(names):
        account = read_json(_account_of(out / name))
        rows += account["rows"]
        made += 0 if index in done else account["rows"]
        skipped += [tuple(entry) for entry in account["skipped"]]
        fixes.update(account["fixes"])
        without_attributes += account.get("without_attributes", 0)  # not counted by shards written before it was
    summary = BuildSummary(pairs=rows, made=made, shards=len(names), resumed_shards=len(done),
                           seconds=time.perf_counter() - started, skipped=skipped, fixes=dict(fixes),
                           without_attributes=without_attributes)
    if rank != 0:
        return summary
    _write_atomic(out / SUMMARY, json.dumps({"pairs": rows, "skipped": skipped, "fixes": dict(sorted(fixes.items()))},
                                            indent=2, sort_keys=True))
    if rows == 0:
        key, reason = skipped[0]
        raise BuildError(f"{out}: {every(total, 'input')} was skipped (key {key}: {reason}); "
                         f"{SUMMARY} lists them all")
    info = {"citation": "", "description": f"degrade build of recipe {recipe.name} (seed {seed})",
            "features": _features(schema, image_format), "homepage": "", "license": ""}
    _write_atomic(out / "dataset_info.json", json.dumps(info, indent=2, sort_keys=True))
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": f"degrade-{recipe.name}-{seed}-{total}",
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    _write_atomic(out / "state.json", json.dumps(state, indent=2, sort_keys=True))
    return summary


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def unfinished_progress(path: Path) -> str | None:
    """How far the build in ``path`` got, as ``'2 of 40 shards written'``, while it is unfinished;
    None for a finished build (also one whose every input was skipped) or a folder that holds none."""
    manifest = path / MANIFEST
    if not manifest.is_file() or (path / "state.json").is_file() or _skipped_throughout(path) is not None:
        return None
    done = len(list(path.glob("data-*.arrow")))
    return f"{done} of {len(_shards_of(path))} shards written"


def _skipped_throughout(path: Path) -> int | None:
    """The number of inputs of the build in ``path`` when it ended with every one skipped, else None."""
    summary = path / SUMMARY
    if not summary.is_file():
        return None
    account = read_json(summary)
    return len(account["skipped"]) if account["pairs"] == 0 else None


def open_dataset(path: str | Path) -> datasets.Dataset:
    """``datasets.load_from_disk`` for a degrade build; a BuildError naming the folder (or the shard)
    for one that did not finish, holds no pairs, or was damaged since it was written."""
    path = Path(path)
    if not path.is_dir():
        raise BuildError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}")
    progress = unfinished_progress(path)
    if progress:
        raise BuildError(f"{path}: this build did not finish ({progress}); "
                         "run the same `degrade build` command again to resume it")
    skipped = _skipped_throughout(path)
    if skipped is not None:
        raise BuildError(f"{path}: holds no pairs: {every(skipped, 'input')} was skipped ({SUMMARY} lists them)")
    if not (path / "state.json").is_file():
        raise BuildError(f"{path}: not a dataset folder (no state.json)")
    try:
        dataset = load_saved(path)
    except SourceError as error:  # naming a shard missing or unreadable, or state.json
        raise BuildError(f"{error}; {REMAKE}") from None
    summary = path / SUMMARY
    written = read_json(summary)["pairs"] if summary.is_file() else len(dataset)
    if len(dataset) != written:
        said = f"{path}: holds {len(dataset)} pairs, where {SUMMARY} says {written} were written"
        raise BuildError(f"{_first_damaged_shard(path) or said}; {REMAKE}")
    return dataset


def _first_damaged_shard(path: Path) -> str | None:
    """The first shard of the build in ``path`` that :func:`shard_damage` finds damaged, and how."""
    for shard in _shards_of(path):
        damage = shard_damage(shard)
        if damage:
            return f"{shard}: {damage}"
    return None


def shard_of_row(path: Path, row: int) -> Path:
    """The shard of the finished build in ``path`` that holds its row ``row`` (0-based, as
    ``open_dataset`` orders them: the shards' rows one shard after another, each shard's count
    from its account)."""
    end = 0
    for shard in _shards_of(path):
        end += read_json(_account_of(shard))["rows"]
        if row < end:
            return shard
    raise IndexError(f"{path}: row {row} asked of a build of {end} pairs")


def shard_damage(shard: Path) -> str | None:
    """What is wrong with a shard a build wrote, read back: missing, not a readable Arrow stream,
    or holding fewer rows than its account (``NAME.arrow.json``) says were written to it (a copy
    cut short between two record batches reads without an error); None when it is whole."""
    account = _account_of(shard)
    if not (shard.is_file() and account.is_file()):
        return "missing"
    try:
        held = stream_rows(shard)
    except (OSError, pa.ArrowException) as error:
        return f"not a readable Arrow stream ({error})"
    try:
        written = read_json(account)["rows"]
    except SourceError:
        return f"its account {account.name} is not readable JSON"
    return None if held == written else f"holds {held} of the {written} pairs written to it"


def read_manifest(path: str | Path) -> dict:
    """The settings a build recorded (recipe text, seed, source, format, versions)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise BuildError(f"{path}: not a degrade build (no {MANIFEST})")
    return read_json(manifest)
