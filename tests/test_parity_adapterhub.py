"""Parity with AdapterHub `adapters` 1.3.0 (the MAD-X reference), tolerance 1e-5 fp32.

Both libraries get the same tiny backbone and the same random non-identity adapter weights
(AdapterHub exports them with save_adapter(use_safetensors=True); we import them).
"""

from __future__ import annotations

import pytest
import torch

# AdapterHub is a test dependency and the parity reference: imported directly, so a missing
# install fails the suite instead of skipping it.
from adapters import BertAdapterModel, SeqBnConfig, SeqBnInvConfig, XLMRobertaAdapterModel
from adapters.composition import Stack

from madx.adapterhub import export_adapterhub, import_adapterhub
from madx.config import AdapterStack
from tests.helpers import NER_LABELS, TOL, batch, tiny_madx

HUB_CLASS = {"bert": BertAdapterModel, "xlm-roberta": XLMRobertaAdapterModel}

# (case id, language adapter kwargs or None, task: None | "ner" | "qa")
CASES = [
    ("lang-only", dict(inv=False), None),
    ("lang-inv", dict(inv=True), None),
    ("lang-leave-out", dict(inv=True, leave_out=[0]), None),
    ("stack-ner", dict(inv=True), "ner"),
    ("stack-qa", dict(inv=True), "qa"),
    ("stack-ner-no-inv", dict(inv=False), "ner"),
    ("task-only-ner", None, "ner"),
    ("task-only-qa", None, "qa"),
]


def hub_twin(family: str, ours, lang: dict | None, task: str | None, tmp_path, seed: int):
    """An AdapterHub model with our backbone weights and random adapters, exported to disk."""
    hub = HUB_CLASS[family](ours.backbone.config)
    base = hub.base_model
    missing, unexpected = base.load_state_dict(ours.backbone.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("pooler.", "prompt_tuning.")) for k in missing), (missing, unexpected)
    names = []
    if lang is not None:
        cfg_cls = SeqBnInvConfig if lang["inv"] else SeqBnConfig
        hub.add_adapter("xx", config=cfg_cls(reduction_factor=2, leave_out=lang.get("leave_out", [])))
        names.append("xx")
    if task == "ner":
        hub.add_adapter("ner", config=SeqBnConfig(reduction_factor=16))
        hub.add_tagging_head("ner", num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)))
        names.append("ner")
    elif task == "qa":
        hub.add_adapter("qa", config=SeqBnConfig(reduction_factor=16))
        hub.add_qa_head("qa")
        names.append("qa")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in hub.named_parameters():
            if any(f".{n}." in k or k.startswith(f"heads.{n}.") for n in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    hub.set_active_adapters(Stack(*names))
    if task:
        hub.active_head = task
    hub.eval()
    for n in names:
        hub.save_adapter(str(tmp_path / n), n, with_head=(n == task), use_safetensors=True)
    return hub, names


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("case,lang,task", CASES, ids=[c[0] for c in CASES])
def test_matches_adapterhub(family, case, lang, task, tmp_path):
    ours = tiny_madx(family, seed=3)
    hub, names = hub_twin(family, ours, lang, task, tmp_path, seed=7)
    for n in names:
        import_adapterhub(ours, tmp_path / n)
    ours.eval()
    pad = ours.backbone.config.pad_token_id
    ids, mask = batch(ours.backbone.config.vocab_size, [11, 7, 9], seed=1, pad_id=pad)
    stack = AdapterStack("xx" if lang is not None else None, task)
    with torch.no_grad():
        out = hub(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden, logits = ours(ids, mask, [stack] * 3)
    keep = mask.bool()
    ref_hidden = out.hidden_states[-1]
    assert (hidden - ref_hidden)[keep].abs().max() <= TOL
    # the adapters must matter: the same input without them differs clearly
    with torch.no_grad():
        plain = ours.encode(ids, mask, [AdapterStack()] * 3)
    assert (plain - ref_hidden)[keep].abs().max() > 1e-2
    if task == "ner":
        ours_logits = torch.stack(logits)
        assert (ours_logits - out.logits)[keep].abs().max() <= TOL
    elif task == "qa":
        ours_logits = torch.stack(logits)
        assert (ours_logits[..., 0] - out.start_logits)[keep].abs().max() <= TOL
        assert (ours_logits[..., 1] - out.end_logits)[keep].abs().max() <= TOL


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_export_loads_in_adapterhub(family, tmp_path):
    """Our export -> AdapterHub load_adapter -> the same outputs as ours."""
    from madx.config import AdapterConfig
    from tests.helpers import add_random

    ours = tiny_madx(family, seed=5)
    add_random(ours, AdapterConfig.language("sw", leave_out=(1,)), seed=1)
    add_random(ours, AdapterConfig.task("ner", "ner", NER_LABELS), seed=2)
    cls = HUB_CLASS[family]
    for n in ("sw", "ner"):
        export_adapterhub(ours, n, tmp_path / n, model_class=cls.__name__)
    hub = cls(ours.backbone.config)
    hub.base_model.load_state_dict(ours.backbone.state_dict(), strict=False)
    hub.load_adapter(str(tmp_path / "sw"), load_as="sw", with_head=False, use_safetensors=True)
    hub.load_adapter(str(tmp_path / "ner"), load_as="ner", use_safetensors=True)
    hub.set_active_adapters(Stack("sw", "ner"))
    hub.active_head = "ner"
    hub.eval()
    ids, mask = batch(ours.backbone.config.vocab_size, [9, 5], seed=2, pad_id=ours.backbone.config.pad_token_id)
    with torch.no_grad():
        out = hub(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden, logits = ours(ids, mask, [AdapterStack("sw", "ner")] * 2)
    keep = mask.bool()
    assert (hidden - out.hidden_states[-1])[keep].abs().max() <= TOL
    assert (torch.stack(logits) - out.logits)[keep].abs().max() <= TOL
