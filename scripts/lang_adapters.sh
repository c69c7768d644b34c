#!/usr/bin/env bash
# Language adapters as in MAD-X (issue 12): bottleneck rf 2 + NICE invertible adapter, trained by
# masked-LM on madx/train/corpus.py's training cut of each language, with the store's frozen MLM head,
# stopped by a held-out criterion (full-vocabulary MLM loss on 200 dev lines, scored every 50 steps,
# patience 3; the best step is kept). Resumable: each run has a time budget and a re-run continues
# where it stopped, so languages are trained in turns over several sessions.
#   scripts/lang_adapters.sh STORE [MINUTES_EACH] [LANG...]
# SNAPSHOTS=DIR keeps the adapter at every dev scoring (for curves of MLM loss against zero-shot F1).
# BACKBONE_DTYPE=bf16 trains over a bf16 backbone (1.7x faster steps here; the adapters stay fp32).
set -uo pipefail
STORE=${1:?store}
MIN=${2:-6}
shift 2 || true
LANGS=${*:-"en sw yo rw ha ig lg luo pcm wo am qu my jv is zh ar ja"}
T=${MADX_TRAIN:-madx-train}
. "$(dirname "$0")/store_lib.sh"
for variant in ${VARIANTS:-full noinv}; do  # every language's full adapter first, then the ablation without NICE
  for code in $LANGS; do
    name=$code; extra=()
    [ "$variant" = noinv ] && name=$code-noinv && extra=(--no-invertible)
    have_adapter "$STORE" "$name" && continue
    $T lang --store "$STORE" --language "$code" --name "$name" --corpus --reduction-factor 2 \
      --steps 600 --batch-size 16 --max-len 128 --lr 5e-4 --candidates 16384 --dev-lines 200 \
      --eval-every 50 --patience 3 --checkpoint-every 50 --max-minutes "$MIN" --threads 2 --no-progress \
      --save-dtype float16 ${SNAPSHOTS:+--snapshots "$SNAPSHOTS"} ${BACKBONE_DTYPE:+--backbone-dtype "$BACKBONE_DTYPE"} "${extra[@]}"
    rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 3 ] || echo "lang $name failed with exit code $rc" >&2
  done
done
