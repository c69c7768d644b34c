"""Entity aggregation from word tags, settings validation (word segmentation: tests/test_words.py)."""

from __future__ import annotations

import pytest

from serving.settings import SettingsError, load_settings
from serving.text import entities_from_words, split_words


def test_entities_from_word_tags():
    text = "Angela Merkel met UN staff in New York ."
    ws = split_words(text)
    tags = ["B-PER", "I-PER", "O", "B-ORG", "O", "O", "B-LOC", "I-LOC", "O"]
    ents = entities_from_words(text, ws, tags, [0.9, 0.7, 1, 0.8, 1, 1, 0.6, 0.4, 1])
    assert [(e.text, e.label, e.score) for e in ents] == [("Angela Merkel", "PER", 0.8), ("UN", "ORG", 0.8),
                                                          ("New York", "LOC", 0.5)]
    assert all(text[e.start:e.end] == e.text for e in ents)
    # an I- after O or after another type starts a new entity (seqeval)
    ents = entities_from_words("a b c", split_words("a b c"), ["I-PER", "I-LOC", "I-LOC"], [1, 1, 1])
    assert [(e.text, e.label) for e in ents] == [("a", "PER"), ("b c", "LOC")]


def test_settings_layers_yaml_env_overrides(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("port: 9000\nbatching:\n  max_wait_ms: 7\nfallback:\n  mode: strict\n")
    s = load_settings(cfg, env={"MADX_BATCHING__MAX_BATCH_TOKENS": "4096", "MADX_API_KEY": "s3cr3t-key", "MADX_PORT": "9001"})
    assert (s.port, s.batching.max_wait_ms, s.batching.max_batch_tokens, s.fallback.mode) == (9001, 7, 4096, "strict")
    assert s.api_key.get_secret_value() == "s3cr3t-key" and "s3cr3t" not in repr(s)


@pytest.mark.parametrize("env, message", [
    ({"MADX_PORT": "70000"}, "port: Input should be less than or equal to 65535 (got 70000)"),
    ({"MADX_FALLBACK__MODE": "guess"}, "fallback.mode: Input should be 'related', 'task_only' or 'strict' (got 'guess')"),
    ({"MADX_BATCHING__QA_STRIDE": "300"}, "qa_stride 300 must be below half of qa_window 384"),
    ({"MADX_TASKS": '{"pos": "pos"}'}, "tasks ['pos'] are unknown"),
    ({"MADX_BATCHNG__MAX_WAIT_MS": "3"}, "batchng: Extra inputs are not permitted"),
])
def test_settings_errors_name_field_value_and_rule(env, message):
    with pytest.raises(SettingsError) as e:
        load_settings(env=env)
    assert message in str(e.value)


def test_settings_file_errors(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(SettingsError, match="expected a mapping"):
        load_settings(bad, env={})


@pytest.mark.parametrize("route, ok", [
    ("ensemble:zu+none", True),  # was refused: the pattern knew no 'none' member
    ("madx@ner-en", True), ("ensemble:zu+none@ner-en", True), ("task_only", True), ("related:yo", True),
    ("madx@", False), ("madx@ner en", False), ("ensemble:zu", False), ("magic", False),
])
def test_routing_overrides_take_every_route_form(route, ok):
    settings = lambda: load_settings(env={}, routing={"overrides": {"zu:ner": route}})  # noqa: E731
    if ok:
        assert settings().routing.overrides == {"zu:ner": route}
    else:
        with pytest.raises(SettingsError, match="routing.overrides.zu:ner"):
            settings()
