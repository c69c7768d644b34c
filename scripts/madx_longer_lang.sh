#!/usr/bin/env bash
# Follow-up to scripts/madx_protocol.sh (docs/RESULTS.md): do language adapters trained 5x longer
# (600 instead of 120 MLM steps, same data, lr and sizes) close the gap between full MAD-X and the
# task adapter alone? en, sw, yo only (about 50 min on 2 cores). Reuses the protocol's store (MLM
# head, baselines) and writes en-x5, sw-x5, yo-x5, ner-x5-s0 into it.
#   scripts/madx_longer_lang.sh [STORE] [OUT]
set -euo pipefail
D=${DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
STORE=${1:-/tmp/madx-exp/store}
OUT=${2:-/tmp/madx-exp/results_x5.json}
T=${MADX_TRAIN:-madx-train}
STEPS=${LANG_STEPS:-600}
W=$D/ner/wikiann_xtreme_panx
U=$D/unlabelled
X=$D/qa/xquad
TY=$D/qa/tydiqa_goldp_xtreme
TXT=$(dirname "$STORE")/text
C="--store $STORE --threads 2 --no-progress"
[ -f "$STORE/_mlm_head/mlm_head.safetensors" ] || { echo "run scripts/madx_protocol.sh first" >&2; exit 2; }

lang() {  # lang CODE MIN_CHARS TEXT [EXCLUDE...]
  local code=$1 minc=$2 text=$3; shift 3
  grep -q "\"$code-x5\"" "$STORE/manifest.json" && return 0
  $T lang $C --language "$code" --name "$code-x5" --steps "$STEPS" --reduction-factor 16 --min-chars "$minc" \
    --max-minutes 25 --text "$text" "$@"
}
lang en 20 "$TXT/en.txt" --exclude-conll "$W/test-en.tsv" --exclude-squad "$X/xquad.en.json"
lang sw 20 "$U/masakhane_ner_text_by_language/swahili/voa_clean_final.txt" --exclude-conll "$W/test-sw.tsv" \
  --exclude-squad "$TY/train/tydiqa.goldp.sw.train.json"
lang yo 20 "$U/masakhane_ner_text_by_language/yoruba/yoruba.txt" --exclude-conll "$W/test-yo.tsv"

grep -q '"ner-x5-s0"' "$STORE/manifest.json" || \
  $T task $C --name ner-x5-s0 --seed 0 --lang-adapter en-x5 --task ner --train "$W/train-en.tsv" --steps 400

TEST=(en="$W/test-en.tsv" sw="$W/test-sw.tsv" yo="$W/test-yo.tsv")
E="eval --store $STORE --threads 2 --no-progress --out $OUT --seed-label 0 --max-examples 1000"
rm -f "$OUT"
$T $E --task-adapter ner-taskonly-s0 --no-lang-adapter --row "(a) task adapter only" --test "${TEST[@]}"
$T $E --task-adapter ner-s0 --row "(c) MAD-X, 120 MLM steps" --test "${TEST[@]}"
$T $E --task-adapter ner-x5-s0 --lang-suffix=-x5 --row "(c) MAD-X, 600 MLM steps" --test "${TEST[@]}"
$T report "$OUT"
