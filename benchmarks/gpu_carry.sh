#!/usr/bin/env bash
# What a session with a lent GPU machine carries there (nothing can be fetched there, and ../shared does
# not travel), made here and unpacked there. Both paths are ignored by git; name them in the device
# call's `carry` (together about 59 MB of the 64 MiB a call may carry, the repository included).
#   .whl/          wheels of the packages the machine's image lacks, for its Python 3.12
#   .gpu/data.tgz  ../shared/data's LFW (faces, pairs, attributes) and the MobileFaceNet teacher
# Here, in the repository root:
#     bash benchmarks/gpu_carry.sh
# There, at the start of each device command (installs the wheels and this checkout, editable, unpacks the
# data to $DATA, and puts a `degrade` command on the PATH):
#     source benchmarks/gpu_carry.sh unpack || exit; DATA=$DATA PARTS="tests build" bash benchmarks/gpu_engine.sh

# The versions this project is tested with; kornia_rs, dill and multiprocess are what kornia and datasets
# need that the image lacks (it has numpy, pyarrow, pandas, fsspec, huggingface-hub, xxhash, ...).
WHEELS=(kornia==0.9.0 kornia_rs==0.2.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

if [ "${1:-}" = unpack ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && PYTHONPATH=/tmp/site python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    && mkdir -p /tmp/data /tmp/bin && tar xzf .gpu/data.tgz -C /tmp/data \
    && printf '#!/bin/sh\nexec python3 -m degrade "$@"\n' > /tmp/bin/degrade && chmod +x /tmp/bin/degrade \
    && export PYTHONPATH=/tmp/site PATH=/tmp/bin:$PATH DATA=/tmp/data PYTHONUNBUFFERED=1
else
  set -euo pipefail
  rm -rf .whl .gpu && mkdir -p .whl .gpu
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
  tar czf .gpu/data.tgz -C "${DATA:-../shared/data}" lfw112 weights/mobilefacenet/068.ckpt
  du -sh .whl .gpu
fi
