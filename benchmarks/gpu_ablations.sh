#!/usr/bin/env bash
# The real-face ablations of docs/results.md (LRFR, BTNet, LGAF, CATFace), all trained at once on
# one GPU, then evaluated on LFW folds 7-8:
#   DATA=../shared/data RESULTS=runs/ablations bash benchmarks/gpu_ablations.sh
# Every run stops at its --steps or after LIMIT seconds (its last.pt, saved every 100 steps, is
# evaluated either way; the step it reached is in its log.csv). ARCHIVE=path.tgz packs the logs
# and evaluations (no checkpoints) every minute and at the end.
# FAMILIES="lgaf catface" runs only those (default: all four).
# To check the script itself on a CPU: DEVICE=cpu BATCH=8 MAX_STEPS=2.
set -u
DATA=${DATA:-../shared/data}
RESULTS=${RESULTS:-runs/ablations}
LIMIT=${LIMIT:-430}
DEVICE=${DEVICE:-cuda}
LFW=$DATA/lfw112
TEACHER=$DATA/weights/mobilefacenet/068.ckpt
FAMILIES=${FAMILIES:-lrfr btnet lgaf catface}
mkdir -p "$RESULTS"
wants() { [[ " $FAMILIES " == *" $1 "* ]]; }
pack() { [ -n "${ARCHIVE:-}" ] && tar czf "$ARCHIVE" -C "$RESULTS" --exclude='*.pt' . ; }

common=(--source "$LFW" --exclude-pairs "$LFW/pairs.txt" --exclude-folds 7,8
        --batch-size ${BATCH:-256} --precision bf16 --device $DEVICE -j 2 --checkpoint-every 100 --warmup 50
        ${MAX_STEPS:+--max-steps $MAX_STEPS})
train() {  # train RUN TRAINER OPTIONS...
  local run=$1; shift
  timeout "$LIMIT" degrade train "$@" "${common[@]}" --out "$RESULTS/$run" > "$RESULTS/$run.txt" 2>&1
  echo "$run: exit $? at step $(tail -n 1 "$RESULTS/$run/log.csv" 2>/dev/null | cut -d, -f1)"
}
trunk=(--init "$TEACHER")  # not for CATFace's stage 2, whose backbone is its stage 1's
lrfr=(--steps 500 --frozen-backbone-steps 50 "${trunk[@]}")
logexp=(--teacher "$TEACHER" --contrast-weight 50)
if wants lrfr; then
  train lrfr_hq_only lrfr "${lrfr[@]}" --hq-only &
  train lrfr_maug lrfr "${lrfr[@]}" --contrast-weight 0 &
  train lrfr_maug_logexp_p1 lrfr "${lrfr[@]}" "${logexp[@]}" --p 1 &
  train lrfr_maug_logexp_p2 lrfr "${lrfr[@]}" "${logexp[@]}" --p 2 &
  train lrfr_maug111_logexp_p2 lrfr "${lrfr[@]}" "${logexp[@]}" --p 2 --recipe maug_111 &
fi
wants btnet && train btnet btnet --steps 400 --optimizer adamw --lr 0.001 "${trunk[@]}" &
if wants lgaf; then
  for mode in local global concat lgf; do
    train "lgaf_$mode" lgaf --steps 300 --frozen-backbone-steps 50 --mode $mode "${trunk[@]}" &
  done
  train lgaf_lgf_b2 lgaf --steps 300 --frozen-backbone-steps 50 --mode lgf --heads 2 "${trunk[@]}" &
  train lgaf_lgf_b8 lgaf --steps 300 --frozen-backbone-steps 50 --mode lgf --heads 8 "${trunk[@]}" &
fi
wants catface && ( train catface_stage1 catface --steps 300 --frozen-backbone-steps 50 --stage 1 \
    --attributes "$LFW/attributes.tsv" "${trunk[@]}"
  for fusion in none concat add catf; do
    train "catface_$fusion" catface --steps 250 --stage 2 --stage1 "$RESULTS/catface_stage1/last.pt" --fusion $fusion &
  done
  wait ) &
( while sleep 60; do
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> "$RESULTS/gpu_use.txt"; pack
  done ) &
monitor=$!
wait $(jobs -p | grep -v "^$monitor$")
kill $monitor

models() {  # models RUN...: --model RUN=checkpoint for each run that saved one
  for run in "$@"; do [ -f "$RESULTS/$run/last.pt" ] && echo "--model $run=$RESULTS/$run/last.pt"; done
}
evaluate() {  # evaluate NAME RESOLUTIONS EVAL-OPTIONS... (--model ..., --recipe ...)
  local name=$1 sides=$2; shift 2
  degrade eval "$@" --pairs "$LFW/pairs.txt" --folds 7,8 --resolutions "$sides" --device $DEVICE \
    --out "$RESULTS/eval_$name" > "$RESULTS/eval_$name.txt" 2>&1
  echo "eval $name: exit $?"
}
teacher="--model teacher=mobilefacenet:$TEACHER"
wants lrfr && evaluate lrfr 7,14,20,112 $teacher \
  $(models lrfr_hq_only lrfr_maug lrfr_maug_logexp_p1 lrfr_maug_logexp_p2 lrfr_maug111_logexp_p2) &
wants btnet && evaluate btnet 7,14,28,56,112 $teacher $(models btnet) &
lgaf_models=$(models lgaf_local lgaf_global lgaf_concat lgaf_lgf lgaf_lgf_b2 lgaf_lgf_b8)
catface_models=$(models catface_none catface_concat catface_add catface_catf)
# LGAF and CATFace are judged twice: on probes reduced in resolution only, and on probes their own
# recipe degraded first (occluded and deformed; turbulence or capture), what their fusions are for.
wants lgaf && evaluate lgaf 7,14,20,112 $lgaf_models &
wants lgaf && evaluate lgaf_recipe_probes 7,14,20,112 --recipe lgaf $lgaf_models &
wants catface && evaluate catface 7,14,20,112 $catface_models &
wants catface && evaluate catface_recipe_probes 7,14,20,112 --recipe catface $catface_models &
wait
pack
cat "$RESULTS"/eval_*.txt
