"""What bounds ``degrade build``: each stage of a build alone, then the whole build, in one run.

    python3 benchmarks/build_bounds.py /tmp/lfw_x16 --recipe maug --device cuda --batch-size 1024 --n 65536

Stages, each at full speed on its own (pairs or faces per second):
  decoding   the DataLoader's workers reading and decoding the source, each batch copied to the device
  engine     one decoded batch degraded again and again and copied back as the writer gets it
  writing    one batch's rows written again and again as raw Arrow shards on the writer threads
  build      ``build_dataset`` end to end (raw), the three overlapped
  steady     the build past its start-up: (n - n/4) pairs over the difference of two builds' times
The slowest stage is the bound; a build well below it loses time where the stages meet.
"""

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import torch

from degrade.arrow import SHARD_WRITERS, HostRows, build_dataset, pair_schema, pairs_table
from degrade.engine import degrade_faces
from degrade.loader import decoded_batches
from degrade.machine import usable_cores
from degrade.recipe import load_recipe
from degrade.sources import open_source


def decoding_rate(source, batches: list[torch.Tensor], workers: int, device: torch.device) -> tuple[float, float]:
    """(faces/s after the first batch, seconds to the first batch), each batch's faces copied to
    ``device`` as a build on it takes them (through the workers' slot ring)."""
    started = time.perf_counter()
    stream = decoded_batches(source, batches, workers, to=device)
    next(stream)
    warm = time.perf_counter()
    faces = sum(len(batch.key) for batch in stream)
    return faces / (time.perf_counter() - warm), warm - started


def engine_rate(recipe, faces, device: torch.device, repeats: int) -> float:
    """Pairs/s of degrading one decoded batch and copying its rows back (``HostRows.of``)."""
    HostRows.of(faces, degrade_faces(recipe, faces, device), recipe)
    started = time.perf_counter()
    for _ in range(repeats):
        HostRows.of(faces, degrade_faces(recipe, faces, device), recipe)
    return repeats * len(faces.key) / (time.perf_counter() - started)


def writing_rate(table: pa.Table, folder: Path, shards: int, batches_per_shard: int) -> float:
    """Pairs/s of writing ``shards`` raw shards of the same batch on the build's writer threads."""

    def write(index: int) -> int:
        with pa.OSFile(str(folder / f"shard-{index}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as out:
            for _ in range(batches_per_shard):
                out.write_table(table)
        (folder / f"shard-{index}.arrow").unlink()
        return batches_per_shard * table.num_rows

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=SHARD_WRITERS) as writers:
        written = sum(writers.map(write, range(shards)))
    return written / (time.perf_counter() - started)


def build_seconds(recipe, source, out: Path, pairs: int, args: argparse.Namespace) -> float:
    """Seconds of a raw build of the source's first ``pairs``, start-up and shut-down included."""
    started = time.perf_counter()
    build_dataset(recipe, source, out, limit=pairs, batch_size=args.batch_size, device=args.device,
                  num_workers=args.workers, image_format="raw", progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="any --source of degrade build")
    parser.add_argument("--recipe", default="maug")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--n", type=int, default=65536, help="pairs of each stage (the source's first n)")
    parser.add_argument("-j", "--num-workers", dest="workers", type=int, default=usable_cores(), help="decoding workers (default: every core)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the shards (default: a temporary one)")
    args = parser.parse_args()
    recipe, device = load_recipe(args.recipe), torch.device(args.device)
    source = open_source(args.source, recipe.size)
    n = min(args.n, len(source))
    batches = list(torch.arange(n).split(args.batch_size))

    decoded, start_up = decoding_rate(source, batches, args.workers, device)
    faces = source.load(batches[0])
    engine = engine_rate(recipe, faces, device, repeats=max(1, n // len(faces.key)))
    rows = HostRows.of(faces, degrade_faces(recipe, faces, device), recipe)
    blank = [""] * len(rows.key)
    table = pairs_table(rows, pair_schema(recipe, "raw", []), blank, blank, "raw", None)
    with tempfile.TemporaryDirectory(dir=args.out) as scratch:
        batches_per_shard = max(1, 2048 // len(rows.key))
        writing = writing_rate(table, Path(scratch), max(1, n // (batches_per_shard * len(rows.key))),
                               batches_per_shard)
        seconds = {pairs: build_seconds(recipe, source, Path(scratch) / f"build-{pairs}", pairs, args)
                   for pairs in (n // 4, n)}
    build, steady = n / seconds[n], (n - n // 4) / (seconds[n] - seconds[n // 4])
    print(f"degrade build stages, recipe {recipe.name}, {n} pairs of {args.source}, batch {args.batch_size}, "
          f"{args.workers} decoding workers, engine on {device}")
    print(f"  decoding  {decoded:10,.0f} faces/s  (after the first batch, which took {start_up:.2f} s)")
    print(f"  engine    {engine:10,.0f} pairs/s  (one batch degraded and copied back, again and again)")
    print(f"  writing   {writing:10,.0f} pairs/s  (raw shards on {SHARD_WRITERS} threads, {table.nbytes / len(rows.key) / 1e3:.0f} kB a pair)")
    print(f"  build     {build:10,.0f} pairs/s  (all of it, raw, with the workers' start-up and shut-down)")
    print(f"  steady    {steady:10,.0f} pairs/s  (the last 3/4 of it: builds of n and n/4 pairs, timed apart)")


if __name__ == "__main__":
    main()
