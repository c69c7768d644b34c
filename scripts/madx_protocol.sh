#!/usr/bin/env bash
# The MAD-X protocol (Pfeiffer et al. 2020, sections 3-4) at the scale a 2-core CPU allows, on the
# embedded e5-small backbone. Writes the adapters into $STORE and the results into $OUT.
#   scripts/madx_protocol.sh [STORE] [OUT]      (needs ../shared/data; about 80 minutes on 2 cores)
# Rows: (a) task adapter only, (b) MAD-X without invertible adapters, (c) full MAD-X.
set -euo pipefail
D=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
STORE=${1:-/tmp/madx-exp/store}
OUT=${2:-/tmp/madx-exp/results.json}
T=${MADX_TRAIN:-madx-train}
LANG_STEPS=${LANG_STEPS:-120}
NER_STEPS=${NER_STEPS:-400}
QA_STEPS=${QA_STEPS:-250}
NER_SEEDS=${NER_SEEDS:-"0 1"}
QA_EVAL_MAX=${QA_EVAL_MAX:-300}
W=$D/ner/wikiann_xtreme_panx
U=$D/unlabelled
X=$D/qa/xquad
TY=$D/qa/tydiqa_goldp_xtreme
mkdir -p "$STORE" "$(dirname "$OUT")"
TXT=$(dirname "$STORE")/text
mkdir -p "$TXT"
C="--store $STORE --threads 2 --no-progress"

# English MLM text: TyDiQA-GoldP en train contexts (no English raw-text corpus is available here).
python - "$TY/train/tydiqa.goldp.en.train.json" "$TXT/en.txt" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
ctx = dict.fromkeys(p["context"].replace("\n", " ") for a in doc["data"] for p in a["paragraphs"])
open(sys.argv[2], "w").write("\n".join(ctx) + "\n")
PY

# 1. MLM head transform, once for the backbone (e5-small ships none), on a multilingual mix.
[ -f "$STORE/_mlm_head/mlm_head.safetensors" ] || $T mlm-head $C --steps 200 --text "$TXT/en.txt" \
  "$U/masakhane_ner_text_by_language/swahili/voa_clean_final.txt" "$U/bucc2018_xtreme/zh-en.dev.zh" \
  "$U/my_myPOS/mypos-dver.0.9.word.txt" "$U/masakhane_ner_text_by_language/yoruba/yoruba.txt" \
  --exclude-conll "$W/test-sw.tsv" "$W/test-zh.tsv" "$W/test-my.tsv" "$W/test-yo.tsv"

# 2. Language adapters (+ invertible) by MLM, and the same without invertible adapters.
lang() {  # lang CODE MIN_CHARS EXCLUDE... -- TEXT...
  local code=$1 minc=$2; shift 2
  local ex=() tx=() sq=()
  while [ "$1" != "--" ]; do case $1 in *.json) sq+=("$1");; *) ex+=("$1");; esac; shift; done; shift
  tx=("$@")
  local sqa=(); [ ${#sq[@]} -gt 0 ] && sqa=(--exclude-squad "${sq[@]}")
  for variant in full noinv; do
    local name=$code extra=()
    [ $variant = noinv ] && name=$code-noinv && extra=(--no-invertible)
    grep -q "\"$name\"" "$STORE/manifest.json" 2>/dev/null && continue
    $T lang $C --language "$code" --name "$name" --steps "$LANG_STEPS" --reduction-factor 16 --min-chars "$minc" \
      --text "${tx[@]}" --exclude-conll "${ex[@]}" "${sqa[@]}" "${extra[@]}"
  done
}
lang en 20 "$W/test-en.tsv" "$X/xquad.en.json" -- "$TXT/en.txt"
lang sw 20 "$W/test-sw.tsv" "$TY/train/tydiqa.goldp.sw.train.json" -- "$U/masakhane_ner_text_by_language/swahili/voa_clean_final.txt"
lang yo 20 "$W/test-yo.tsv" -- "$U/masakhane_ner_text_by_language/yoruba/yoruba.txt"
lang rw 20 "$W/test-rw.tsv" -- "$U/masakhane_ner_text_by_language/kinyarwanda/kinyarwanda.txt"
lang qu 10 "$W/test-qu.tsv" -- "$U/americasnlp2021/quechua-spanish/dev.quy" "$U/bible_corpus/Quichua-NT.xml"
lang my 20 "$W/test-my.tsv" -- "$U/my_myPOS/mypos-dver.0.9.word.txt"
lang is 5 "$W/test-is.tsv" -- "$U/laser_tatoeba_v1/tatoeba.isl-eng.isl"
lang ar 5 "$W/test-ar.tsv" "$X/xquad.ar.json" -- "$U/laser_tatoeba_v1/tatoeba.ara-eng.ara"
lang zh 5 "$W/test-zh.tsv" "$X/xquad.zh.json" -- "$U/bucc2018_xtreme/zh-en.dev.zh"

# 3. Task adapters on English, stacked on the frozen English adapter (or none, row a).
task() {  # task NAME SEED LANG_ADAPTER(or -) ARGS...
  local name=$1 seed=$2 la=$3; shift 3
  grep -q "\"$name\"" "$STORE/manifest.json" 2>/dev/null && return 0
  local lo=(); [ "$la" != - ] && lo=(--lang-adapter "$la")
  $T task $C --name "$name" --seed "$seed" "${lo[@]}" "$@"
}
for s in $NER_SEEDS; do
  task ner-taskonly-s$s $s - --task ner --train "$W/train-en.tsv" --steps "$NER_STEPS"
  task ner-noinv-s$s $s en-noinv --task ner --train "$W/train-en.tsv" --steps "$NER_STEPS"
  task ner-s$s $s en --task ner --train "$W/train-en.tsv" --steps "$NER_STEPS"
done
QA_TRAIN=(--task qa --train "$TY/train/tydiqa.goldp.en.train.json" "$D/qa/squad_v1.1/dev-v1.1.json.zip"
          --exclude-squad "$X/xquad.en.json" --steps "$QA_STEPS" --batch-size 8 --max-len 256)
task qa-taskonly-s0 0 - "${QA_TRAIN[@]}"
task qa-noinv-s0 0 en-noinv "${QA_TRAIN[@]}"
task qa-s0 0 en "${QA_TRAIN[@]}"

# 4. Zero-shot evaluation: swap the language adapter.
NER_TEST=(en="$W/test-en.tsv" sw="$W/test-sw.tsv" yo="$W/test-yo.tsv" rw="$W/test-rw.tsv" qu="$W/test-qu.tsv"
          my="$W/test-my.tsv" is="$W/test-is.tsv" ar="$W/test-ar.tsv" zh="$W/test-zh.tsv")
# sw: TyDiQA-GoldP sw *train* (never trained on: QA is trained on English only); the dev files here
# have their gold answers stripped (every answer is an empty string), so they cannot be scored.
QA_TEST=(en="$X/xquad.en.json" ar="$X/xquad.ar.json" zh="$X/xquad.zh.json" sw="$TY/train/tydiqa.goldp.sw.train.json")
E="eval --store $STORE --threads 2 --no-progress --out $OUT"
rm -f "$OUT"
for s in $NER_SEEDS; do
  $T $E --task-adapter ner-taskonly-s$s --no-lang-adapter --row "(a) task adapter only" --seed-label $s --max-examples 1000 --test "${NER_TEST[@]}"
  $T $E --task-adapter ner-noinv-s$s --lang-suffix=-noinv --row "(b) MAD-X without inv" --seed-label $s --max-examples 1000 --test "${NER_TEST[@]}"
  $T $E --task-adapter ner-s$s --row "(c) MAD-X" --seed-label $s --max-examples 1000 --test "${NER_TEST[@]}"
done
$T $E --task-adapter qa-taskonly-s0 --no-lang-adapter --row "(a) task adapter only" --max-examples "$QA_EVAL_MAX" --max-len 384 --test "${QA_TEST[@]}"
$T $E --task-adapter qa-noinv-s0 --lang-suffix=-noinv --row "(b) MAD-X without inv" --max-examples "$QA_EVAL_MAX" --max-len 384 --test "${QA_TEST[@]}"
$T $E --task-adapter qa-s0 --row "(c) MAD-X" --max-examples "$QA_EVAL_MAX" --max-len 384 --test "${QA_TEST[@]}"
$T report "$OUT"
