"""A tiny served store: tiny XLM-R-vocabulary backbone, non-identity adapters, detector profiles."""

from __future__ import annotations

from pathlib import Path

from madx.artifacts import save_to_store
from madx.backbone import load_backbone
from madx.config import AdapterConfig
from madx.langid import build_profile, save_profile
from madx.model import MadxModel

from ..helpers import NER_LABELS, randomize_

BACKBONE = "tiny-xlmr-0+xlmr"
TEXT = {
    "en": ["The president spoke to reporters in the capital yesterday evening.",
           "Heavy rain fell across the coast of East Africa this week.",
           "Students returned to school after the long holiday at the end of the year."],
    "sw": ["Rais wa Kenya alizungumza na waandishi wa habari mjini Nairobi jana jioni.",
           "Mvua kubwa imenyesha katika maeneo mengi ya pwani ya Afrika Mashariki wiki hii.",
           "Wanafunzi walirudi shuleni baada ya likizo ndefu ya mwisho wa mwaka."],
    "de": ["Der Präsident sprach gestern Abend mit Journalisten in der Hauptstadt.",
           "Starker Regen fiel diese Woche an der Küste Ostafrikas.",
           "Die Schüler kehrten nach den langen Ferien am Jahresende in die Schule zurück."],
}


def make_store(store: Path, languages=("en", "sw", "de"), more_ner: tuple[str, ...] = ()) -> Path:
    """``more_ner``: names of further NER task adapters (another stacked one, which routes name after '@')."""
    bb = load_backbone(BACKBONE)
    model = MadxModel(bb.model, bb.name)
    for i, lang in enumerate(languages):
        randomize_(model.add_adapter(AdapterConfig.language(lang, reduction_factor=4)), 10 + i, std=0.1)
        save_to_store(model, lang, store)
        save_profile(store, lang, build_profile(TEXT[lang]))
    randomize_(model.add_adapter(AdapterConfig.task("ner", "ner", NER_LABELS)), 1, std=0.3)
    save_to_store(model, "ner", store)
    for i, name in enumerate(more_ner):
        randomize_(model.add_adapter(AdapterConfig.task(name, "ner", NER_LABELS)), 20 + i, std=0.3)
        save_to_store(model, name, store)
    randomize_(model.add_adapter(AdapterConfig.task("qa", "qa")), 2, std=0.3)
    save_to_store(model, "qa", store)
    return store
