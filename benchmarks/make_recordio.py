"""Write an encoded source's images, repeated, as an insightface RecordIO: a large JPEG source for
timing builds at a steady state (LFW alone is gone in under a second at 20 k pairs/s).

    python3 benchmarks/make_recordio.py ../shared/data/lfw112 /tmp/lfw_x16 --repeats 16
"""

import argparse
from pathlib import Path

from degrade.progress import progress_bar
from degrade.sources import open_source
from degrade.sources.recordio import write_insightface_recordio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a source of encoded images (folder, pairs.txt, RecordIO, table)")
    parser.add_argument("out", type=Path, help="folder to write train.rec / train.idx into")
    parser.add_argument("--repeats", type=int, default=16)
    args = parser.parse_args()
    source = open_source(args.source)
    images = [source.read(key)[0] for key in progress_bar(iterable=range(len(source)), desc="read", unit="image")]
    labels = source.identities.tolist()
    args.out.mkdir(parents=True, exist_ok=True)
    write_insightface_recordio(args.out / "train", images * args.repeats, labels * args.repeats)
    print(f"wrote {args.out / 'train.rec'}: {len(images) * args.repeats} images")


if __name__ == "__main__":
    main()
