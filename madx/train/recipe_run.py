"""`madx-train recipe FILE --out STORE`: run a recipe (madx/train/recipe.py), resumably.

Steps run in order. A step whose artifact exists and matches the recipe is skipped; a training step
stopped by the time budget keeps its checkpoint, and the next run resumes it; a derived artifact
(routing evidence, an evaluation) is re-made when the adapters it measured changed. Every step prints
one line when it starts and one when it ends. ``--dry-run`` lists what would run and changes nothing;
``--ship`` then builds the served store (``madx/default_store`` unless ``--ship-to``) from the recipe's
``ship`` section, and ``--compare DIR`` lists the files of the shipped store that differ from DIR's.
``--ship-only`` ships without running anything, once the steps the ship section needs are done (a
recipe may go on with steps the served store does not use, such as further seeds).

Exit codes: 0 every step done; 3 stopped by ``--max-minutes`` (re-run the same command to resume);
2 the recipe cannot run as written (the message says which step and why).
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
import time
from pathlib import Path

from .recipe import RESULTS_DIR, Recipe, RecipeError, adapter_checksums, load_recipe, measured_adapters, parse, status, step_argv
from .train_commands import STOPPED

DEFAULT_SHIP = Path(__file__).resolve().parents[1] / "default_store"
INTERRUPTED = 130  # a step stopped by SIGINT or SIGTERM (cli.stoppable)
BUDGETED = frozenset({"mlm-head", "lang", "task"})  # commands that stop at --max-minutes and resume


def _line(i: int, n: int, step, what: str) -> None:
    print(f"[{i}/{n}] {step.run} {step.name}: {what}", flush=True)


def _run_eval(main, argv: list[str], store: Path, name: str) -> int:
    """An evaluation step: rows to a temporary file, then one fragment with the command that made them."""
    d = store / RESULTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.rows.json"
    tmp.unlink(missing_ok=True)
    rc = main([*argv, "--out", str(tmp)])
    if rc == 0:
        rows = json.loads(tmp.read_text()) if tmp.exists() else []
        frag = {"command": "madx-train " + shlex.join(argv), "rows": rows, "adapters": adapter_checksums(store)}
        (d / f"{name}.json").write_text(json.dumps(frag, indent=1) + "\n")
    tmp.unlink(missing_ok=True)
    return rc


def _report(recipe: Recipe, store: Path, root: Path) -> None:
    from .eval_commands import cmd_report

    rows = []
    for s in recipe.steps:
        p = store / RESULTS_DIR / f"{s.name}.json"
        if s.run == "eval" and p.exists():
            rows += json.loads(p.read_text())["rows"]
    out = Path(recipe.report.out) if Path(recipe.report.out).is_absolute() else root / recipe.report.out
    out.write_text(json.dumps(rows, indent=1) + "\n")
    md = None if recipe.report.md is None else (root / recipe.report.md)
    cmd_report(type("Args", (), {"results": out, "md": md, "source": recipe.report.source,
                                 "groups": list(recipe.report.groups.items())})())


def run(args) -> int:
    from . import corpus
    from .cli import build_parser, main

    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store, data = args.out.resolve(), (args.data or corpus.default_root()).resolve()
    parser, n = build_parser(), len(recipe.steps)
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    extra = [*(["--threads", str(args.threads)] if args.threads else []), *(["--no-progress"] if args.no_progress else [])]
    for i, step in enumerate(recipe.steps, 1):  # every step's options parse before anything runs
        try:
            parse(parser, step_argv(recipe, step, store, data))
        except RecipeError as e:
            print(f"error: step {i} ({step.run} {step.name}): {e}", file=sys.stderr)
            return 2
    if args.ship_only:
        return _ship_only(args, recipe, store, data, parser)
    ran_eval, adds = False, {}  # adds: {adapter: step kind} a dry run would add before the later steps
    for i, step in enumerate(recipe.steps, 1):
        try:
            argv = step_argv(recipe, step, store, data)
            state, why = status(parser, recipe, step, store, data)
        except (RecipeError, KeyError, json.JSONDecodeError) as e:
            print(f"error: step {i} ({step.run} {step.name}): {e}", file=sys.stderr)
            return 2
        uses = measured_adapters(parser, recipe, step, store, data)
        # evidence measures every language adapter, those that earlier steps would add too
        added = sorted(adds if uses is None else
                       {a for a in adds if a in uses or (step.run == "evidence" and adds[a] != "task")})
        if state == "done" and added and step.run in ("evidence", "eval"):
            state, why = "stale", [f"earlier steps add adapters it measures: {', '.join(added)}"]
        if state == "todo" and step.run in ("lang", "derive", "task"):
            adds[step.name] = step.run
        if state == "done":
            _line(i, n, step, "done (matches the recipe)")
            continue
        if state == "differs":
            print(f"error: step {i} ({step.run} {step.name}): {store / step.name} exists but was made differently: "
                  f"{'; '.join(why)}. Remove it from the store to retrain it, or change the recipe back.", file=sys.stderr)
            return 2
        todo, reason = "re-measure" if state == "stale" else "run", f" ({'; '.join(why)})" if why else ""
        if args.dry_run:
            _line(i, n, step, f"would {todo}{reason}: madx-train {shlex.join(argv)}")
            continue
        left = None if deadline is None else (deadline - time.monotonic()) / 60
        if left is not None and left <= 0:
            print(f"stopped: the --max-minutes budget is spent before step {i}; re-run the same command to resume",
                  file=sys.stderr)
            return STOPPED
        budget = ["--max-minutes", f"{left:.2f}"] if left is not None and step.run in BUDGETED else []
        _line(i, n, step, f"{todo}s{reason}: madx-train {shlex.join(argv)}")
        t0 = time.monotonic()
        rc = (_run_eval(main, [*argv, *extra], store, step.name) if step.run == "eval"
              else main([*argv, *extra, *budget]))
        ran_eval |= step.run == "eval"
        if step.run == "eval" and rc == 0 and recipe.report is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # the report so far: a run stopped later keeps it
                _report(recipe, store, Path.cwd())
        if rc == STOPPED:
            _line(i, n, step, f"stopped by the time budget after {(time.monotonic() - t0) / 60:.1f} min; checkpoint kept, "
                              "re-run the same command to resume")
            return STOPPED
        if rc == INTERRUPTED:  # the step said so in its own line (cli.stoppable)
            _line(i, n, step, "stopped by a signal; checkpoint kept, re-run the same command to resume")
            return rc
        if rc != 0:
            print(f"error: step {i} ({step.run} {step.name}) failed with exit code {rc}", file=sys.stderr)
            return rc
        _line(i, n, step, f"done in {(time.monotonic() - t0) / 60:.1f} min")
    root = Path.cwd()
    if recipe.report is not None and not args.dry_run:
        out = Path(recipe.report.out) if Path(recipe.report.out).is_absolute() else root / recipe.report.out
        if ran_eval or not out.exists():
            _report(recipe, store, root)
    if args.ship and not args.dry_run:
        return _ship(args, recipe, store)
    return 0


def _ship(args, recipe: Recipe, store: Path) -> int:
    from ..backbone import load_backbone
    from ..model import MadxModel
    from .ship import checksums, ship

    if recipe.ship is None:
        print("error: --ship: the recipe has no ship section", file=sys.stderr)
        return 2
    bb = load_backbone(recipe.backbone)
    dest = args.ship_to or DEFAULT_SHIP
    sums = ship(MadxModel(bb.model, bb.name), store, dest, recipe.ship.languages, recipe.ship.tasks, recipe.ship.routing)
    size = sum((dest / f).stat().st_size for f in sums)
    print(f"shipped {len(recipe.ship.languages)} language and {len(recipe.ship.tasks)} task adapters to {dest} "
          f"({size / 2**20:.1f} MiB)")
    if args.compare:
        other = checksums(args.compare)
        for f in sorted(set(sums) | set(other)):
            if sums.get(f) != other.get(f):
                print(f"differs from {args.compare}: {f} "
                      f"({'missing there' if f not in other else 'missing here' if f not in sums else 'other bytes'})")
        print(f"{sum(sums.get(f) == other.get(f) for f in sums)} of {len(sums)} files identical to {args.compare}")
    return 0


def _ship_only(args, recipe: Recipe, store: Path, data: Path, parser) -> int:
    """Ship from what the ship section needs (its adapters, the MLM head, the routing evidence), each
    of which must be done as the recipe describes it; the recipe's other steps are not looked at."""
    if recipe.ship is None:
        print("error: --ship-only: the recipe has no ship section", file=sys.stderr)
        return 2
    needed = {*recipe.ship.languages, *recipe.ship.tasks.values()}
    for i, step in enumerate(recipe.steps, 1):
        if step.name in needed or step.run in ("fit-head", "mlm-head") or (step.run == "evidence" and recipe.ship.routing):
            state, why = status(parser, recipe, step, store, data)
            if state != "done":
                print(f"error: --ship-only: step {i} ({step.run} {step.name}) is not done ({state}"
                      f"{': ' + '; '.join(why) if why else ''}); run the recipe first", file=sys.stderr)
                return 2
            needed.discard(step.name)
    if needed:
        print(f"error: --ship-only: no step of the recipe makes {sorted(needed)}", file=sys.stderr)
        return 2
    return _ship(args, recipe, store)


def add_parser(sub) -> None:
    p = sub.add_parser("recipe", help="build a store from a recipe file (resumable; --ship writes madx/default_store)",
                       description=__doc__)
    p.add_argument("recipe", type=Path, help="recipes/*.yaml")
    p.add_argument("--out", required=True, type=Path, help="the training store (created if missing)")
    p.add_argument("--data", type=Path, default=None, help="shared data root, {data} in the recipe (default ../shared/data)")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget of this run (training resumes next run)")
    p.add_argument("--dry-run", action="store_true", help="list each step and whether it would run; change nothing")
    p.add_argument("--ship", action="store_true", help="then build the served store from the recipe's ship section")
    p.add_argument("--ship-only", action="store_true",
                   help="only build the served store, from the steps the ship section needs (each must be done)")
    p.add_argument("--ship-to", type=Path, default=None, help=f"where --ship and --ship-only write (default {DEFAULT_SHIP})")
    p.add_argument("--compare", type=Path, default=None, help="after --ship, list files that differ from this store")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bars inside steps (the step lines stay)")
    p.set_defaults(fn=run)
