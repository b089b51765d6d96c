"""Faces per second that one process decodes from a source, as each decoding worker of a build does
before the engine (read, decode, channel order, stacking into a batch), on one thread.

    python3 benchmarks/load_rate.py /tmp/lfw_x16 --n 8192
"""

import argparse
import time

import torch

from degrade.engine import prepare_cpu_worker
from degrade.sources import open_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="any --source of degrade build")
    parser.add_argument("--n", type=int, default=8192, help="faces to decode (the source's first n)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    prepare_cpu_worker()
    source = open_source(args.source)
    keys = torch.arange(min(args.n, len(source)))
    source.load(keys[:args.batch_size])  # warm-up: file cache, first allocations
    started = time.perf_counter()
    for batch in keys.split(args.batch_size):
        source.load(batch)
    seconds = time.perf_counter() - started
    print(f"{len(keys)} faces of {args.source} in {seconds:.2f} s: {len(keys) / seconds:,.0f} faces/s, "
          f"{seconds / len(keys) * 1e6:.0f} us per face, one process")


if __name__ == "__main__":
    main()
