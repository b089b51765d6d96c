#!/usr/bin/env bash
# Issue #6's GPU measurements and a CUDA check of every trainer, in one run on a GPU machine.
#   DATA=../shared/data RESULTS=runs/gpu bash benchmarks/gpu_engine.sh
# On a lent GPU machine, with what benchmarks/gpu_carry.sh made here carried there:
#   source benchmarks/gpu_carry.sh unpack || exit; PARTS="tests build" bash benchmarks/gpu_engine.sh
# SCALE=64 DEVICE=cpu divides every size by 64 and runs on the CPU (to check the script itself).
# PARTS="tests build" runs only those of: tests bench levels build target2 train trainers (default: all; each of
# build and target2 fits in one 10-minute call).
# ROUNDS=1 times the engine and the OpenCV loop once each in the bench step (default: 3, best of each).
# ARCHIVE=path.tgz: after each step, the logs so far (no checkpoints) are packed there.
# Each step is time-limited and logged to $RESULTS/<step>.txt; a failing step does not stop the rest.
set -u
DATA=${DATA:-../shared/data}
RESULTS=${RESULTS:-runs/gpu}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-1}
LFW=$DATA/lfw112
TEACHER=$DATA/weights/mobilefacenet/068.ckpt
PARTS=${PARTS:-tests bench levels build target2 train trainers}
ROUNDS=${ROUNDS:-3}
mkdir -p "$RESULTS"
wants() { [[ " $PARTS " == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...: run, log, report
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$RESULTS/$name.txt" 2>&1
  echo "== $name: exit $? in $((SECONDS - started)) s"
  tail -n 12 "$RESULTS/$name.txt"
  [ -n "${ARCHIVE:-}" ] && tar czf "$ARCHIVE" -C "$RESULTS" --exclude='*.pt' .
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, kornia; print('torch', torch.__version__, 'kornia', kornia.__version__)"
if wants tests && [ "$DEVICE" = cuda ]; then
  step cuda_tests 90 env DEGRADE_TEST_DATA="$DATA" python3 -m pytest -q -rs tests -k cuda
  # The probes made on the GPU: docs/results.md has this on the CPU (same / cross: 20 px 81.17 / 88.67,
  # 112 px 85.17 / 91.67); the GPU's should match to within a pair or two (float rounding).
  step eval_teacher_catface 120 degrade eval --model teacher=mobilefacenet:"$TEACHER" --recipe catface \
    --pairs "$LFW/pairs.txt" --folds 7,8 --resolutions 20,112 --device $DEVICE --out "$RESULTS/eval_teacher_catface"
  # torchrun on a machine of one GPU: a rank's `cuda` is its own GPU, cuda:LOCAL_RANK (made the current
  # device, on which Triton launches); two ranks build on the GPU they share when it is named
  step torchrun_train 120 python3 -m torch.distributed.run --nproc-per-node 1 -m degrade train lrfr --steps 20 \
    -b 64 --device cuda --out "${TMPDIR:-/tmp}/degrade_torchrun_train"
  step torchrun_build 120 python3 -m torch.distributed.run --nproc-per-node 2 -m degrade build --recipe catface \
    --source "$LFW" --limit 4096 --format raw --device cuda:0 --out "${TMPDIR:-/tmp}/degrade_torchrun_build"
fi
if wants bench; then
  for recipe in catface mixed mixed_no_turbulence; do
    step "bench_$recipe" 90 degrade bench --recipe $recipe --source "$LFW" --device $DEVICE \
      --batch-size $((8192 / SCALE)) --n $((65536 / SCALE)) --rounds $ROUNDS
  done
  step profile_mixed 90 python3 benchmarks/profile_engine.py --recipe mixed --source "$LFW" --device $DEVICE \
    --batch-size $((8192 / SCALE))
fi
# turbulence's blur levels as direct convolutions in Triton against the engine's GEMMs (target 1's bound)
wants levels && [ "$DEVICE" = cuda ] && step turbulence_levels 120 python3 benchmarks/turbulence_levels.py \
  --source "$LFW" --batch-size 4096
# LFW 16 times over as RecordIO (JPEG), for a steady state past the workers' start-up
repeated=${TMPDIR:-/tmp}/degrade_lfw_x16
if wants build || wants target2; then
  python3 benchmarks/make_recordio.py "$LFW" "$repeated" --repeats 16 > /dev/null 2>&1
fi
if wants build; then
  step bench_build 90 degrade bench --build --recipe maug --source "$LFW" --device $DEVICE \
    --batch-size $((1024 / SCALE)) --n $((9575 / SCALE))
  step load_x16 60 python3 benchmarks/load_rate.py "$repeated" --n $((65536 / SCALE))  # one worker's decoding
  step bounds_x16 90 python3 benchmarks/build_bounds.py "$repeated" --device $DEVICE --batch-size $((1024 / SCALE)) \
    --n $((153200 / SCALE))  # each stage of a build alone, and its steady rate
  step bench_build_x16 200 degrade bench --build --recipe maug --source "$repeated" --device $DEVICE \
    --batch-size $((1024 / SCALE)) --n $((65536 / SCALE))
fi
if wants target2; then
  # bench_build_x16 again with the GIL handed between threads every 0.1 ms (Python's default: 5 ms): if the PNG
  # rate rises, the build's PNG encoding threads wait for the GIL (docs/benchmarks.md, session 15).
  step bench_build_x16_switch 200 python3 -c "import sys; sys.setswitchinterval(1e-4); from degrade.cli import main; main()" \
    bench --build --recipe maug --source "$repeated" --device $DEVICE --batch-size $((1024 / SCALE)) --n $((65536 / SCALE))
  # target 2 end to end (the build's own timer): from the JPEGs, then from that raw build read back
  # as the source, which has nothing to decode
  step build_x16_raw 200 degrade build --recipe maug --source "$repeated" --format raw --device $DEVICE \
    --batch-size $((1024 / SCALE)) --limit $((153200 / SCALE)) --out "$repeated.raw"
  step build_from_raw 200 degrade build --recipe maug --source "$repeated.raw" --format raw --device $DEVICE \
    --batch-size $((1024 / SCALE)) --out "$repeated.again"
  rm -rf "$repeated.raw" "$repeated.again"
fi
rm -rf "$repeated"
wants train && step bench_train 90 degrade bench --train iresnet50 --recipe maug --source "$LFW" --device $DEVICE \
  --batch-size $((512 / SCALE)) --n $((40960 / SCALE)) --precision bf16
wants trainers || exit 0
common=(--source "$LFW" --exclude-pairs "$LFW/pairs.txt" --exclude-folds 7,8 --steps 60
        --max-steps $((60 / SCALE + 3)) --batch-size $((256 / SCALE)) --precision bf16 --device $DEVICE -j 6)
trunk=(--init "$TEACHER")  # not for CATFace's stage 2, whose backbone is its stage 1's
step train_lrfr 60 degrade train lrfr "${common[@]}" "${trunk[@]}" --teacher "$TEACHER" --out "$RESULTS/lrfr"
step train_btnet 60 degrade train btnet "${common[@]}" "${trunk[@]}" --optimizer adamw --lr 0.001 --out "$RESULTS/btnet"
step train_lgaf 60 degrade train lgaf "${common[@]}" "${trunk[@]}" --out "$RESULTS/lgaf"
step train_catface1 60 degrade train catface "${common[@]}" "${trunk[@]}" --stage 1 --attributes "$LFW/attributes.tsv" \
  --out "$RESULTS/catface1"
step train_catface2 60 degrade train catface "${common[@]}" --stage 2 --stage1 "$RESULTS/catface1/last.pt" --out "$RESULTS/catface2"
step eval 90 degrade eval --model teacher=mobilefacenet:"$TEACHER" --model lrfr="$RESULTS/lrfr/last.pt" \
  --model btnet="$RESULTS/btnet/last.pt" --model lgaf="$RESULTS/lgaf/last.pt" --model catface="$RESULTS/catface2/last.pt" \
  --pairs "$LFW/pairs.txt" --folds 7,8 --resolutions 7,14,20,112 --device $DEVICE --out "$RESULTS/eval"
for run in lrfr btnet lgaf catface1 catface2; do
  echo "$run: $(tail -n 1 "$RESULTS/$run/log.csv" 2>/dev/null)"
done
