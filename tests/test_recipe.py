"""Recipes (madx/train/recipe.py, recipe_run.py): a tiny store built end to end from one file on the
tiny test backbone, a second run that does nothing, and the ways a recipe and a store can disagree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from madx.artifacts import read_manifest
from madx.train.cli import build_parser, main
from madx.train.recipe import RecipeError, differences, load_recipe, step_argv
from madx.train.ship import checksums

FIX = Path(__file__).parent / "fixtures"
TINY = "tiny-xlmr-0+xlmr"
TEXT, NER = str(FIX / "text_sw.txt"), str(FIX / "ner_en.conll")


def tiny_recipe(extra_lang: bool = False, lr: str = "1e-3", with_eval: bool = False, also: bool = False) -> dict:
    langs = ["sw", "yo", *(["rw"] if extra_lang else [])]
    dev = {"test": [f"sw={NER}"], "max-examples": 5, "backbone-dtype": "fp32", "seed-label": 0}
    evals = [{"eval": "dev-madx", "with": {**dev, "task-adapter": "ner-madx", "row": "madx"}},
             {"eval": "dev-alone", "with": {**dev, "task-adapter": "ner-alone", "row": "alone", "no-lang-adapter": True}}]
    return {
        "backbone": TINY,
        "options": {"small": {"batch-size": 2, "max-len": 32, "steps": 2, "save-dtype": "float16"},
                    "ner": {"task": "ner", "train": NER, "reduction-factor": 4, "steps": 3}},
        "steps": [
            {"mlm-head": "_mlm_head", "use": ["small"], "with": {"text": [TEXT]}},
            *({"lang": lg, "use": ["small"], "with": {"language": lg, "text": [TEXT], "lr": lr}} for lg in langs),
            {"task": "ner-madx", "use": ["small", "ner"], "with": {"lang-adapter": "sw"}},
            {"task": "ner-alone", "use": ["small", "ner"]},
            # a second stacked NER adapter, measured as route madx@ner-yo-s0 and shipped as ner-yo
            *([{"task": "ner-yo-s0", "use": ["small", "ner"], "with": {"lang-adapter": "yo"}}] if also else []),
            {"evidence": "evidence", "with": {"tasks": ["ner"], "task-adapter": ["ner=ner-madx"], "alone": ["ner=ner-alone"],
                                              "ner-dev": [f"sw={NER}", f"yo={NER}"], "max-dev": 5, "resamples": 50,
                                              "backbone-dtype": "fp32", **({"also-stacked": ["ner=ner-yo-s0"]} if also else {})}},
            *(evals if with_eval else []),
        ],
        "ship": {"languages": ["sw", "yo"], "tasks": {"ner": "ner-madx", "ner-alone": "ner-alone",
                                                      **({"ner-yo": "ner-yo-s0"} if also else {})}},
    }


def write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return p


def run(recipe: Path, store: Path, *more: str) -> int:
    return main(["recipe", str(recipe), "--out", str(store), "--no-progress", *more])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The default tiny recipe's store, built once per module (tests that start from it copy it)."""
    d = tmp_path_factory.mktemp("built")
    assert run(write(d, tiny_recipe()), d / "store") == 0
    return d / "store"


def built_copy(built: Path, tmp_path: Path) -> Path:
    """A copy of the built store in this test's folder; the recipe finds every step of it done."""
    store = tmp_path / "store"
    shutil.copytree(built, store)
    assert run(write(tmp_path, tiny_recipe()), store) == 0
    return store


def mtimes(store: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}


def test_a_tiny_recipe_runs_end_to_end_and_a_second_run_does_nothing(tmp_path, capsys):
    recipe, store, shipped = write(tmp_path, tiny_recipe()), tmp_path / "store", tmp_path / "shipped"
    assert run(recipe, store, "--ship", "--ship-to", str(shipped)) == 0
    out = capsys.readouterr().out
    assert out.count("done in") == 6 and "shipped 2 language and 2 task adapters" in out
    m = read_manifest(shipped)
    assert sorted(m["adapters"]) == ["ner", "ner-alone", "sw", "yo"]
    assert m["adapters"]["ner"]["trained_as"] == "ner-madx"
    assert set(m["routing"]["evidence"]) >= {"sw", "yo"} and m["routing"]["task_adapters"]["ner"] == {
        "stacked": "ner", "alone": "ner-alone"}
    assert (shipped / "_mlm_head" / "mlm_head.json").exists()
    # every artifact records the step that made it
    cfg = json.loads((store / "sw" / "adapter_config.json").read_text())
    assert cfg["training"]["command"].startswith("madx-train lang --store")

    before, sums = mtimes(store), checksums(shipped)
    assert run(recipe, store, "--ship", "--ship-to", str(shipped), "--compare", str(shipped)) == 0
    out = capsys.readouterr().out
    assert out.count("done (matches the recipe)") == 6 and "done in" not in out
    assert mtimes(store) == before  # nothing retrained, nothing re-measured
    assert checksums(shipped) == sums and f"{len(sums)} of {len(sums)} files identical" in out
    # --ship-only: the same store, without running a step the ship section does not need
    more = tiny_recipe()
    more["steps"].append({"task": "ner-later-s1", "use": ["small", "ner"], "with": {"seed": 1}})
    assert run(write(tmp_path, more, "more.yaml"), store, "--ship-only", "--ship-to", str(tmp_path / "again")) == 0
    out = capsys.readouterr().out
    assert ": runs" not in out and "ner-later-s1" not in read_manifest(store)["adapters"]
    assert checksums(tmp_path / "again") == sums
    assert run(recipe, tmp_path / "empty", "--ship-only", "--ship-to", str(tmp_path / "none")) == 2
    assert "step 1 (mlm-head _mlm_head) is not done (todo); run the recipe first" in capsys.readouterr().err


def test_a_language_the_evidence_routes_keeps_its_detector_profile_when_its_adapter_is_left_out(tmp_path, capsys, built):
    from madx.backbone import load_backbone
    from madx.langid import load_profiles
    from madx.model import MadxModel
    from madx.train.ship import ship

    store = built_copy(built, tmp_path)
    bb = load_backbone(TINY)
    ship(MadxModel(bb.model, bb.name), store, tmp_path / "sw-only", ["sw"], {"ner": "ner-madx", "ner-alone": "ner-alone"})
    m = read_manifest(tmp_path / "sw-only")
    assert sorted(n for n, e in m["adapters"].items() if e["kind"] == "language") == ["sw"]
    assert "yo" in m["routing"]["evidence"] and set(load_profiles(tmp_path / "sw-only")) == {"sw", "yo"}
    ship(MadxModel(bb.model, bb.name), store, tmp_path / "no-evidence", ["sw"], {"ner": "ner-madx"}, routing=False)
    assert set(load_profiles(tmp_path / "no-evidence")) == {"sw"}


def test_evidence_measures_another_stacked_task_adapter_and_ships_it_under_its_served_name(tmp_path, capsys):
    recipe, store, shipped = write(tmp_path, tiny_recipe(also=True)), tmp_path / "store", tmp_path / "shipped"
    assert run(recipe, store, "--ship", "--ship-to", str(shipped)) == 0
    trained, served = read_manifest(store)["routing"], read_manifest(shipped)["routing"]
    for lang in ("sw", "yo"):
        assert "madx@ner-yo-s0" in trained["evidence"][lang]["ner"]["scores"]
        ev = served["evidence"][lang]["ner"]
        assert ev["scores"]["madx@ner-yo"] == trained["evidence"][lang]["ner"]["scores"]["madx@ner-yo-s0"]
        assert "madx@ner-yo" in ev["vs_task_only"] and "not_served" not in ev
    assert trained["task_adapters"]["ner"]["also"] == ["ner-yo-s0"] and served["task_adapters"]["ner"]["also"] == ["ner-yo"]
    assert read_manifest(shipped)["adapters"]["ner-yo"]["trained_as"] == "ner-yo-s0"


def test_a_route_over_a_task_adapter_left_out_of_the_ship_is_not_served():
    from madx.train.ship import served_routing

    routing = {"source_language": "en", "task_adapters": {"ner": {"stacked": "ner-multi", "also": ["ner-en-s0"]}},
               "evidence": {"en": {"ner": {"scores": {"task_only": 70.0, "madx@ner-en-s0": 75.0, "madx": 71.0},
                                           "vs_task_only": {"madx@ner-en-s0": {"low": 1.0}, "madx": {"low": -1.0}}}}}}
    kept = served_routing(routing, {"en"}, {"ner": "ner-multi", "ner-en": "ner-en-s0"})["evidence"]["en"]["ner"]
    assert kept["scores"] == {"task_only": 70.0, "madx@ner-en": 75.0, "madx": 71.0} and "not_served" not in kept
    assert set(kept["vs_task_only"]) == {"madx@ner-en", "madx"}
    left = served_routing(routing, {"en"}, {"ner": "ner-multi"})["evidence"]["en"]["ner"]
    assert left["scores"] == {"task_only": 70.0, "madx": 71.0} and left["not_served"] == {"madx@ner-en-s0": 75.0}
    assert set(left["vs_task_only"]) == {"madx"}


def test_dry_run_and_budget_change_nothing(tmp_path, capsys):
    recipe, store = write(tmp_path, tiny_recipe()), tmp_path / "store"
    assert run(recipe, store, "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("would run: madx-train") == 6 and not store.exists()
    assert run(recipe, store, "--max-minutes", "0.000001") == 3  # spent before the first step: resumable
    got = capsys.readouterr()
    assert "re-run the same command to resume" in got.out + got.err
    assert not (store / "manifest.json").exists()


def test_a_step_made_differently_is_refused_and_new_adapters_re_measure_the_evidence(tmp_path, capsys, built):
    store = built_copy(built, tmp_path)
    capsys.readouterr()
    # a trained adapter the recipe now describes differently: an error naming the option, nothing overwritten
    before = mtimes(store)
    assert run(write(tmp_path, tiny_recipe(lr="5e-3"), "changed.yaml"), store) == 2
    err = capsys.readouterr().err
    assert "step 2 (lang sw)" in err and "made differently: lr: recipe 0.005, artifact 0.001" in err
    assert mtimes(store) == before
    # a new language adapter: it is trained, and the evidence measured without it is re-measured
    grown = write(tmp_path, tiny_recipe(extra_lang=True), "grown.yaml")
    assert run(grown, store, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "lang rw: would run" in out
    assert "evidence evidence: would re-measure (earlier steps add adapters it measures: rw)" in out
    assert run(grown, store) == 0
    assert "evidence evidence: re-measures (adapters it measures changed since it was measured: rw)" in capsys.readouterr().out
    assert "rw" in read_manifest(store)["routing"]["adapters"]
    # a task adapter the evidence does not name (another task's, a later seed's): nothing re-measured
    more = tiny_recipe(extra_lang=True)
    more["steps"].append({"task": "ner-later-s1", "use": ["small", "ner"], "with": {"seed": 1}})
    more = write(tmp_path, more, "more.yaml")
    assert run(more, store, "--dry-run") == 0
    assert "evidence evidence: done (matches the recipe)" in capsys.readouterr().out
    before = read_manifest(store)["routing"]
    assert run(more, store) == 0
    out = capsys.readouterr().out
    assert "task ner-later-s1: runs" in out and "evidence evidence: done (matches the recipe)" in out
    assert run(more, store) == 0  # and once that adapter is in the store (was: re-measured every run)
    assert "evidence evidence: done (matches the recipe)" in capsys.readouterr().out
    assert read_manifest(store)["routing"] == before


def test_an_evaluation_is_re_measured_only_when_an_adapter_it_runs_changes(tmp_path, capsys):
    """Was: every evaluation of a store was re-run whenever any adapter was added to it (a store that
    grows over sessions re-ran all of its dev rows each time)."""
    store = tmp_path / "store"
    assert run(write(tmp_path, tiny_recipe(with_eval=True)), store) == 0
    capsys.readouterr()
    grown = write(tmp_path, tiny_recipe(extra_lang=True, with_eval=True), "grown.yaml")
    assert run(grown, store, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "eval dev-madx: done (matches the recipe)" in out and "eval dev-alone: done (matches the recipe)" in out
    assert "evidence evidence: would re-measure" in out  # the evidence measures every language: rw too
    # the task adapter dev-madx runs is retrained (removed, made again with another seed): it alone is re-measured
    r = tiny_recipe(extra_lang=True, with_eval=True)
    r["steps"][4]["with"]["seed"] = 1
    import shutil

    shutil.rmtree(store / "ner-madx")
    m = json.loads((store / "manifest.json").read_text())
    del m["adapters"]["ner-madx"]
    (store / "manifest.json").write_text(json.dumps(m))
    assert run(write(tmp_path, r, "reseeded.yaml"), store) == 0
    out = capsys.readouterr().out
    assert "eval dev-madx: re-measures (adapters it measures changed since it was measured: ner-madx)" in out
    assert "eval dev-alone: done (matches the recipe)" in out


@pytest.mark.parametrize("recipe, message", [
    ({"steps": []}, "steps: List should have at least 1 item"),
    ({"steps": [{"lang": "sw", "task": "x"}]}, "a step names exactly one kind"),
    ({"steps": [{"lang": "sw", "lr": 1}]}, "steps.0.lr: Extra inputs are not permitted (got 1)"),
    ({"steps": [{"lang": "sw", "use": ["nope"]}]}, "uses option groups ['nope']"),
    ({"steps": [{"lang": "sw"}, {"task": "sw"}]}, "makes the same artifact as step 1"),
    ({"steps": [{"lang": "a b"}]}, "String should match pattern"),
    ({"steps": [{"lang": "sw"}], "shipp": {}}, "shipp: Extra inputs are not permitted"),
    ({"steps": [{"evidence": "ev-a"}, {"lang": "sw"}, {"evidence": "ev-b"}]},
     "steps 1 (ev-a), 3 (ev-b) are evidence steps; a store holds one routing evidence"),
])
def test_bad_recipes_say_where_and_why(tmp_path, recipe, message):
    with pytest.raises(RecipeError, match=None) as e:
        load_recipe(write(tmp_path, recipe))
    assert message in str(e.value)


def test_an_unknown_option_of_a_step_is_an_error_before_anything_runs(tmp_path, capsys):
    r = tiny_recipe()
    r["steps"][1]["with"]["learning-rate"] = 1
    assert run(write(tmp_path, r), tmp_path / "store") == 2
    assert "step 2 (lang sw): not a valid madx-train command" in capsys.readouterr().err


@pytest.mark.parametrize("recorded, same", [
    # the same options in another order, other run-only options, data under another root
    ("/venv/bin/madx-train task --store /elsewhere --threads 2 --no-progress --max-minutes 90 --name x-s0 --task ner "
     "--train /work/shared/data/ner/train-en.tsv --lr 1e-3", True),
    ("madx-train task --store s --task ner --lr 0.001 --train /other/data/ner/train-en.tsv --name y", True),
    ("madx-train task --store s --name x --task ner --lr 0.001 --train /other/data/ner/train-en.tsv --seed 1", False),
    ("madx-train task --task ner --lr 0.001 --train /other/data/ner/train-sw.tsv", False),
    ("madx-train task --task ner --lr 0.001 --train /other/data/ner/train-en.tsv --backbone-dtype bf16", False),
    ("madx-train lang --language en --text a.txt", False),
    # LANG=PATH values: the language must agree, the path by its place under the data root
    ("madx-train task --store s --name x --task ner --lr 0.001 --train /other/data/ner/train-en.tsv "
     "--train-lang sw=/other/data/ner/sw.tsv", True),
    ("madx-train task --store s --name x --task ner --lr 0.001 --train /other/data/ner/train-en.tsv "
     "--train-lang yo=/other/data/ner/sw.tsv", False),
])
def test_recorded_commands_match_by_what_they_make(tmp_path, recorded, same):
    data = tmp_path / "data"
    recipe = load_recipe(write(tmp_path, {"steps": [{"task": "x-s0", "with": {
        "task": "ner", "lr": 1e-3, "train": "{data}/ner/train-en.tsv"}}]}))
    if "--train-lang" in recorded:
        recipe.steps[0].options["train-lang"] = ["sw={data}/ner/sw.tsv"]
    argv = step_argv(recipe, recipe.steps[0], tmp_path / "store", data)
    assert (differences(build_parser(), argv, recorded, data) == []) is same


def test_a_step_stopped_by_a_signal_stops_the_recipe_with_its_code(tmp_path, capsys, monkeypatch):
    """Was: "error: step 38 (task ...) failed with exit code 130" after a plain Ctrl-C or SIGTERM."""
    import madx.train.cli as cli

    real = cli.main
    monkeypatch.setattr(cli, "main", lambda argv: 130 if argv[0] == "lang" else real(argv))
    assert run(write(tmp_path, tiny_recipe()), tmp_path / "store") == 130
    got = capsys.readouterr()
    assert "lang sw: stopped by a signal; checkpoint kept, re-run the same command to resume" in got.out
    assert "failed" not in got.err and "lang yo" not in got.out


def test_the_report_holds_every_row_measured_so_far_when_a_later_step_stops(tmp_path, capsys, monkeypatch):
    """Was: the report was written only once every step had finished, so a recipe that runs over
    several sessions had no report of the dev rows it had already measured."""
    import madx.train.cli as cli

    r = tiny_recipe(with_eval=True)
    r["steps"].append({"task": "ner-late", "use": ["small", "ner"]})
    r["report"] = {"out": str(tmp_path / "report.json")}
    real = cli.main
    monkeypatch.setattr(cli, "main", lambda argv: 3 if "ner-late" in argv else real(argv))  # stopped by its budget
    assert run(write(tmp_path, r), tmp_path / "store") == 3
    rows = json.loads((tmp_path / "report.json").read_text())
    assert sorted(x["row"] for x in rows) == ["alone", "madx"]


RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
# the file names of held-out splits: MasakhaNER and WikiANN test splits, XQuAD, MLQA
HELD_OUT = ("/test.txt", "/test-", "xquad.", "mlqa")


def step_values(recipe_path: Path, data: Path) -> list[tuple[str, list[str]]]:
    recipe = load_recipe(recipe_path)
    return [(s.name, step_argv(recipe, s, Path("store"), data)) for s in recipe.steps]


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_step_of_the_repository_recipes_is_a_valid_command(path):
    from madx.train.recipe import parse

    parser = build_parser()
    for name, argv in step_values(path, Path("/data")):
        assert parse(parser, argv), name


def test_the_training_recipe_reads_no_held_out_split_and_the_test_recipe_only_evaluates():
    """recipes/multisource.yaml makes every choice on dev data: no step reads a test split (its QA
    step names XQuAD only to remove those contexts from SQuAD). recipes/multisource_test.yaml trains
    nothing and evaluates only adapters the training recipe makes."""
    root = Path(__file__).parents[1] / "recipes"
    for name, argv in step_values(root / "multisource.yaml", Path("/data")):
        values = [v for i, v in enumerate(argv) if i == 0 or argv[i - 1] != "--exclude-squad"]
        leaked = [v for v in values if any(h in v for h in HELD_OUT)]
        assert not leaked and "--context-half" not in argv or argv[argv.index("--context-half") + 1] == "dev", (name, leaked)
    made = {s.name for s in load_recipe(root / "multisource.yaml").steps if s.run == "task"}
    test = load_recipe(root / "multisource_test.yaml")
    assert {s.run for s in test.steps} == {"eval"}
    assert {s.options["task-adapter"] for s in test.steps} <= made


def test_evaluating_an_adapter_the_store_lacks_is_one_line_not_a_traceback(tmp_path, capsys):
    """Was: a recipe whose eval step names a task adapter not trained yet ended in a traceback."""
    store = tmp_path / "store"  # a store without that adapter
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"format": "madx-serve/store@1", "adapters": {}}))
    rc = main(["eval", "--store", str(store), "--backbone", TINY, "--task-adapter", "ner-s9", "--test", f"sw={NER}",
               "--row", "x", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: adapter store '{store}' has no adapters") and err.count("\n") == 1


def test_evidence_measures_a_language_named_twice_on_both_of_its_dev_sets(tmp_path, capsys, built):
    store = built_copy(built, tmp_path)
    news = tmp_path / "masakhaner2" / "yor" / "dev.txt"
    news.parent.mkdir(parents=True)
    news.write_text(Path(NER).read_text())
    assert main(["evidence", "--store", str(store), "--backbone", TINY, "--tasks", "ner", "--task-adapter", "ner=ner-madx",
                 "--alone", "ner=ner-alone", "--ner-dev", f"yo={NER}", f"yo={news}", f"sw={NER}", "--max-dev", "5",
                 "--resamples", "50", "--backbone-dtype", "fp32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    ev = read_manifest(store)["routing"]["evidence"]
    assert ev["yo"]["ner"]["dev_sets"] == ["masakhaner2/yor/dev.txt", "ner_en.conll"] and "dev_sets" not in ev["sw"]["ner"]
    # the same sentences twice: the mean of the two sets is the one set's score, route by route
    yo, sw = ev["yo"]["ner"]["scores"], ev["sw"]["ner"]["scores"]
    assert {r: yo[r] for r in ("madx", "task_only")} == {r: sw[r] for r in ("madx", "task_only")}
    assert "yo ner on yo dev (masakhaner2/yor/dev.txt): task_only" in out
