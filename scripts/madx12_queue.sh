#!/usr/bin/env bash
# Issue 12's CPU training queue, in the order that gives usable results soonest: the English
# adapters and the seed-0 NER task adapters on them, then the languages the backbone never saw
# (the paper-effect target), then seed 1 of rows (a) and (c), row (b) without NICE, the seen languages,
# then QA and row (b)'s second seed, row (b)'s adapters for the QA targets, its QA task adapters. Every step is
# resumable and skips finished artifacts, so re-running this after a stop continues the queue.
#   scripts/madx12_queue.sh STORE [LANG_MINUTES]
# Precision: the English adapters were trained over the fp32 backbone (before bf16 training was
# checked); everything else over a bf16 backbone (BACKBONE_DTYPE, default bf16: 1.9x faster task
# training here, the same dev F1: WikiANN en 83.1 vs 82.4 fp32). The adapters are fp32 either way.
set -uo pipefail
S=${1:?store}
MIN=${2:-12}
H=$(cd "$(dirname "$0")" && pwd)
UNSEEN="yo rw ig lg luo pcm wo qu"
SEEN="sw ha am my jv is zh ar ja"
DT=${BACKBONE_DTYPE-bf16}
lang() { VARIANTS="$1" "$H/lang_adapters.sh" "$S" "$MIN" $2; }  # MIN=... lang ... overrides the budget
tasks() { TASKS=$1 SEEDS=$2 ROWS=$3 MAX_MINUTES=${TASK_MINUTES:-90} "$H/madx_protocol_v2.sh" "$S" /dev/null train; }
# the task adapters need the English adapters: give them time to finish (a re-run resumes them)
BACKBONE_DTYPE= MIN=${EN_MINUTES:-90} lang "full noinv" en
export BACKBONE_DTYPE=$DT
tasks ner 0 "madx"
SNAPSHOTS=$S/.snapshots lang full "$UNSEEN"  # snapshots: MLM loss vs zero-shot F1 curves
tasks ner 1 "taskonly madx"  # rows (a) and (c) with two seeds: the paper-effect target
tasks ner 0 "noinv"  # row (b): the ablation without NICE
lang noinv "$UNSEEN"
lang full "$SEEN"  # 17 languages in all; XQuAD ar/zh and TyDiQA sw need these for rows (c)/(e)
tasks qa 0 "taskonly madx"
tasks ner 1 "noinv"
tasks qa 1 "taskonly madx"
lang noinv "sw zh ar"  # row (b) on the QA targets (XQuAD ar/zh, TyDiQA sw) first
tasks qa 0 "noinv"
tasks qa 1 "noinv"
lang noinv "$SEEN"  # the other seen targets of row (b)
