"""`madx-train` commands that score adapters: eval (zero-shot, any stack) and report (results -> Markdown)."""

from __future__ import annotations

import json
import sys
import time

from ..config import AdapterStack
from .data import lang_paths, read_conll, read_squad
from .train_commands import load_model


def cmd_eval(args) -> int:
    from ..artifacts import load_store, read_manifest
    from .evaluate import evaluate_ner, evaluate_qa

    model, tok = load_model(args)
    manifest = read_manifest(args.store)["adapters"]
    load_store(model, args.store, [args.task_adapter])
    task_type = model.configs[args.task_adapter].head.task_type
    if args.ensemble_none and args.no_lang_adapter:
        raise SystemExit("--ensemble-none averages a language adapter's stack with the stack without one; "
                         "it needs a language adapter (drop --no-lang-adapter)")
    rows = []
    for lang, path in lang_paths(args.test, "--test"):
        lang_adapter = (None if args.no_lang_adapter else args.fixed_lang_adapter
                        or f"{lang.split('-')[0]}{args.lang_suffix}")
        if lang_adapter is not None and lang_adapter not in model.configs:
            if lang_adapter not in manifest and args.skip_missing:
                print(f"skipped {lang!r}: no adapter {lang_adapter!r} in {args.store} (--skip-missing)", file=sys.stderr)
                continue
            if lang_adapter not in manifest:
                raise SystemExit(f"language {lang!r}: no adapter {lang_adapter!r} in {args.store}; "
                                 f"has: {sorted(manifest)}")
            load_store(model, args.store, [lang_adapter])
        stack = AdapterStack(lang_adapter, args.task_adapter)
        if args.ensemble_none:  # the server's ensemble:L+none: the same task adapter with and without L
            stack = (stack, AdapterStack(None, args.task_adapter))
        t0 = time.monotonic()
        if task_type == "ner":
            data = read_conll(path)
            if args.max_examples:
                data.sentences = data.sentences[:args.max_examples]
            m = evaluate_ner(model, tok, stack, data, args.max_len, args.drop_types, not args.no_progress, f"{lang}",
                             words=args.words)
        else:
            ex = read_squad(path)
            if args.context_half:  # corpus.heldout(context, 50) is the dev half (route evidence)
                from .corpus import heldout

                ex = [q for q in ex if heldout(q.context, 50) == (args.context_half == "dev")]
            ex = ex[:args.max_examples or None]
            m = evaluate_qa(model, tok, stack, ex, args.max_len, args.stride, not args.no_progress, f"{lang}")
        m = {k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}
        row = {"row": args.row, "seed": args.seed_label, "task": task_type, "language": lang,
               "stack": " + ".join(map(str, stack)) if isinstance(stack, tuple) else str(stack),
               "backbone_dtype": model.backbone_dtype,
               "test": str(path), "seconds": round(time.monotonic() - t0, 1), **m}
        print(json.dumps(row))
        rows.append(row)
    if args.out:
        prev = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps(prev + rows, indent=1) + "\n")
    return 0


def _mean_spread(vals: list[float]) -> str:
    """'mean ±half-range' over seeds ('mean' alone for one seed, '–' for none)."""
    if not vals:
        return "–"
    return f"{sum(vals) / len(vals):.1f}" + (f" ±{(max(vals) - min(vals)) / 2:.1f}" if len(vals) > 1 else "")


def _common_targets(group: list[str], names: list[str], has: set[tuple[str, str]]) -> list[str]:
    """The targets of ``group`` that every row with any of them has: means compare rows on the same
    languages, and a row with none of them (e.g. not run there yet) is left out of the comparison."""
    rows_in = [n for n in names if any((n, lang) in has for lang in group)]
    return [lang for lang in group if all((n, lang) in has for n in rows_in)]


def _group_lines(groups: dict[str, list[str]], langs: list[str], names: list[str], seeds: list,
                 cell: dict) -> list[str]:
    """Per named group of targets (e.g. the languages without labelled data): each row's mean over the
    group for every seed that has all of its targets, ± half the range over seeds, and each row's
    difference to the first row per seed. Groups none of whose targets this task has are left out."""
    out = []
    for g, members in groups.items():
        if not any(t in langs for t in members):
            continue
        missing = [t for t in members if t not in langs]
        per_row = {n: {sd: sum(cell[(n, t, sd)]["f1"] for t in members) / len(members) for sd in seeds
                       if all((n, t, sd) in cell for t in members)} for n in names}
        out += ["", f"Mean over {g} ({len(members)} targets: {', '.join(members)})"
                + (f"; not measured: {', '.join(missing)}" if missing else "") + ":", ""]
        base = per_row[names[0]]
        for n in names:
            by_seed = per_row[n]
            both = [sd for sd in by_seed if sd in base]
            diff = "" if n == names[0] or not both else (
                f"; − {names[0]}: {sum(by_seed[sd] - base[sd] for sd in both) / len(both):+.1f} "
                f"(per seed: {', '.join(f'{by_seed[sd] - base[sd]:+.1f}' for sd in both)})")
            seeds_of = f" (seeds {', '.join(map(str, by_seed))})" if by_seed else ""
            out.append(f"- {n}: {_mean_spread(list(by_seed.values()))}{seeds_of}{diff}")
    return out


def cmd_report(args) -> int:
    """Results JSON -> Markdown: per row and target, the mean over seeds and its spread (half the
    range); languages the backbone saw in pre-training marked †; means over the unseen and the seen
    targets that every row of the table has (so rows are compared on the same languages); and the
    difference of each row to the first (per seed, then averaged) on the unseen targets."""
    from .corpus import PRETRAINED

    rows = json.loads(args.results.read_text())
    lines = []
    for task in ("ner", "qa"):
        rs = [r for r in rows if r["task"] == task]
        if not rs:
            continue
        langs = list(dict.fromkeys(r["language"] for r in rs))
        names = list(dict.fromkeys(r["row"] for r in rs))
        seen = {lang: lang.split("-")[0] in PRETRAINED for lang in langs}
        cell = {(r["row"], r["language"], r["seed"]): r for r in rs}
        seeds = sorted({r["seed"] for r in rs}, key=str)
        has = {(n, lang) for n, lang, _ in cell}
        common = {want: _common_targets([lang for lang in langs if lang != args.source and seen[lang] == want],
                                        names, has) for want in (False, True)}
        what = "entity F1" if task == "ner" else "F1 / EM (question-blind baseline F1)"
        lines += [f"### {task.upper()} ({what}; mean over seeds ± half their range; † seen in pre-training)", "",
                  "| row | " + " | ".join(lang + (" †" if seen[lang] else "") for lang in langs)
                  + " | mean unseen | mean seen |", "|---" * (len(langs) + 3) + "|"]
        per_seed: dict[str, dict] = {}
        for n in names:
            cells = []
            for lang in langs:
                vals = [cell[(n, lang, sd)] for sd in seeds if (n, lang, sd) in cell]
                if not vals:
                    cells.append("–")
                    continue
                em = f" / {sum(v['exact_match'] for v in vals) / len(vals):.1f}" if task == "qa" else ""
                blind = [v["blind_f1"] for v in vals if v.get("blind_f1") is not None]
                em += f" (blind {sum(blind) / len(blind):.1f})" if blind else ""
                cells.append(_mean_spread([v["f1"] for v in vals]) + em)
            means = []
            for want_seen in (False, True):
                group = common[want_seen]
                by_seed = {sd: sum(cell[(n, lang, sd)]["f1"] for lang in group) / len(group)
                           for sd in seeds if group and all((n, lang, sd) in cell for lang in group)}
                if not want_seen:
                    per_seed[n] = by_seed
                means.append(_mean_spread(list(by_seed.values())))
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {means[0]} | {means[1]} |")
        unseen = common[False]
        lines += ["", f"Means over the targets every row has (of the rows with any): unseen {', '.join(unseen) or '–'}; "
                  f"seen {', '.join(common[True]) or '–'}."]
        base = names[0]
        for n in names[1:]:
            both = [sd for sd in per_seed[n] if sd in per_seed[base]]
            if both:
                d = [per_seed[n][sd] - per_seed[base][sd] for sd in both]
                lines.append(f"- {n} − {base}, mean over the unseen targets: {sum(d) / len(d):+.1f} "
                             f"(per seed: {', '.join(f'{x:+.1f}' for x in d)})")
            # and over every target (seen ones too) that both rows have for the same seed
            pairs = [(cell[(n, lang, sd)]["f1"], cell[(base, lang, sd)]["f1"]) for lang in langs if lang != args.source
                     for sd in seeds if (n, lang, sd) in cell and (base, lang, sd) in cell]
            if pairs and len(pairs) > len(both) * len(unseen):
                k = len({lang for lang in langs for sd in seeds if (n, lang, sd) in cell and (base, lang, sd) in cell})
                lines.append(f"- {n} − {base}, mean over all {k} targets both have: "
                             f"{sum(a - b for a, b in pairs) / len(pairs):+.1f}")
        lines += _group_lines(dict(getattr(args, "groups", None) or []), langs, names, seeds, cell)
        lines.append("")
    text = "\n".join(lines)
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0
