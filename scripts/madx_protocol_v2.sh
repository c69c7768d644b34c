#!/usr/bin/env bash
# The MAD-X protocol of issue 12 on the embedded e5-small backbone, at a budget that is resumable
# over several CPU sessions (or one GPU run). Needs ../shared/data and a STORE that already has the
# MLM head (scripts/mlm_head_study.py --store) and the language adapters (scripts/lang_adapters.sh).
#   scripts/madx_protocol_v2.sh STORE OUT.json [train|eval|all]
# Rows: (a) task adapter only; (b) MAD-X without invertible adapters; (c) MAD-X; (d) the English
# stack (the task adapter of (c) with the English adapter for every target); (e) MAD-X 2.0: the task
# adapter of (c) with every language adapter minus its last layer at inference (`madx-train derive
# --leave-out -1`). Seeds 0 and 1 for every row. TASKS, SEEDS and ROWS (taskonly noinv madx) pick
# which task adapters to train, so a queue can order the work (scripts/madx12_queue.sh).
# Each training run stops after MAX_MINUTES and resumes on the next call; finished adapters are skipped.
set -uo pipefail
D=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
STORE=${1:?store}
OUT=${2:?results json}
WHAT=${3:-all}
T=${MADX_TRAIN:-madx-train}
SEEDS=${SEEDS:-"0 1"}
MAX_MINUTES=${MAX_MINUTES:-45}
W=$D/ner/wikiann_xtreme_panx
M1=$D/ner/masakhaner1
X=$D/qa/xquad
TY=$D/qa/tydiqa_goldp_xtreme
C="--store $STORE --threads ${THREADS:-2} --no-progress ${BACKBONE_DTYPE:+--backbone-dtype $BACKBONE_DTYPE}"  # BACKBONE_DTYPE=bf16: faster training steps
. "$(dirname "$0")/store_lib.sh"
have() { have_adapter "$STORE" "$1"; }

if [ "$WHAT" != eval ]; then
  for a in $(language_adapters "$STORE"); do
    have "$a-v2" || $T derive --store "$STORE" --source "$a" --name "$a-v2" --leave-out -1
  done
  task() {  # NAME SEED LANG_ADAPTER|- ARGS...
    local name=$1 seed=$2 la=$3; shift 3
    have "$name" && return 0
    local lo=(); [ "$la" != - ] && lo=(--lang-adapter "$la")
    $T task $C --name "$name" --seed "$seed" --max-minutes "$MAX_MINUTES" "${lo[@]}" "$@"
  }
  NER=(--task ner --train "$W/train-en.tsv" --dev "$W/dev-en.tsv" --dev-max 1000 --epochs 5 --batch-size 32
       --max-len 128 --reduction-factor 4 --lr 1e-3 --eval-every 300 --patience 4 --checkpoint-every 100)
  QA=(--task qa --train "$TY/train/tydiqa.goldp.en.train.json" "$D/qa/squad_v1.1/dev-v1.1.json.zip"
      --exclude-squad "$X/xquad.en.json" --epochs 1 --batch-size 16 --max-len 384 --reduction-factor 4 --lr 1e-3
      --dev-fraction 0.05 --dev-max 300 --eval-every 200 --patience 4 --checkpoint-every 50)
  for t in ${TASKS:-ner qa}; do  # every NER adapter first (they are the cheaper ones)
    for s in $SEEDS; do
      for row in ${ROWS:-taskonly noinv madx}; do
        case $row in taskonly) set -- taskonly - ;; noinv) set -- noinv en-noinv ;; madx) set -- madx en ;; esac
        if [ $t = ner ]; then task "ner-$1-s$s" "$s" "$2" "${NER[@]}"; else task "qa-$1-s$s" "$s" "$2" "${QA[@]}"; fi
      done
    done
  done
fi
[ "$WHAT" = train ] && exit 0

# Test sets only here (never trained, tuned or selected on). NER: WikiANN (10 targets) and
# MasakhaNER 1.0 (10 targets; PER/ORG/LOC scored, DATE as O). QA: XQuAD where an adapter exists, and
# the test half of TyDiQA-GoldP sw train (the other half is route-evidence dev data).
NER_TEST=()
for l in sw yo rw qu my zh ja is jv ar; do NER_TEST+=("$l=$W/test-$l.tsv"); done
for p in yo:yor ig:ibo rw:kin lg:lug luo:luo pcm:pcm wo:wol ha:hau am:amh sw:swa; do
  NER_TEST+=("${p%%:*}-masakhaner=$M1/${p##*:}/test.txt")
done
QA_TEST=(en="$X/xquad.en.json" ar="$X/xquad.ar.json" zh="$X/xquad.zh.json")
QA_TY=(sw-tydiqa="$TY/train/tydiqa.goldp.sw.train.json")
E="eval --store $STORE --threads ${THREADS:-2} --no-progress --skip-missing --out $OUT ${BACKBONE_DTYPE:+--backbone-dtype $BACKBONE_DTYPE}"  # partial runs: targets without an adapter yet are skipped (and said)
rm -f "$OUT"
for s in $SEEDS; do
  [[ " ${TASKS:-ner qa} " == *" ner "* ]] || continue
  $T $E --task-adapter ner-taskonly-s$s --no-lang-adapter --row "(a) task adapter only" --seed-label "$s" --drop-types DATE --test "${NER_TEST[@]}"
  $T $E --task-adapter ner-noinv-s$s --lang-suffix=-noinv --row "(b) MAD-X without inv" --seed-label "$s" --drop-types DATE --test "${NER_TEST[@]}"
  $T $E --task-adapter ner-madx-s$s --row "(c) MAD-X" --seed-label "$s" --drop-types DATE --test "${NER_TEST[@]}"
  $T $E --task-adapter ner-madx-s$s --fixed-lang-adapter en --row "(d) English stack" --seed-label "$s" --drop-types DATE --test "${NER_TEST[@]}"
  $T $E --task-adapter ner-madx-s$s --lang-suffix=-v2 --row "(e) MAD-X 2.0" --seed-label "$s" --drop-types DATE --test "${NER_TEST[@]}"
  [[ " ${TASKS:-ner qa} " == *" qa "* ]] || continue
  for q in "--test ${QA_TEST[*]}" "--context-half test --test ${QA_TY[*]}"; do
    $T $E --task-adapter qa-taskonly-s$s --no-lang-adapter --row "(a) task adapter only" --seed-label "$s" --max-len 384 $q
    $T $E --task-adapter qa-noinv-s$s --lang-suffix=-noinv --row "(b) MAD-X without inv" --seed-label "$s" --max-len 384 $q
    $T $E --task-adapter qa-madx-s$s --row "(c) MAD-X" --seed-label "$s" --max-len 384 $q
    $T $E --task-adapter qa-madx-s$s --fixed-lang-adapter en --row "(d) English stack" --seed-label "$s" --max-len 384 $q
    $T $E --task-adapter qa-madx-s$s --lang-suffix=-v2 --row "(e) MAD-X 2.0" --seed-label "$s" --max-len 384 $q
  done
done
# (r): the shipped store's routing policy (its evidence is dev-only) on the same NER test sets; its
# task adapters are seed 0's
if [[ " ${TASKS:-ner qa} " == *" ner "* && " $SEEDS " == *" 0 "* ]]; then
  python "$(dirname "$0")/routed_test.py" --store "${ROUTED_STORE:-$(dirname "$0")/../madx/default_store}" --out "$OUT" \
    --threads "${THREADS:-2}" ${BACKBONE_DTYPE:+--backbone-dtype $BACKBONE_DTYPE} --seed-label 0 --test "${NER_TEST[@]}"
fi
$T report "$OUT"
