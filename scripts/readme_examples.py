"""Print the README's example tables from a RUNNING server (so they are a real run's output).

    madx-serve &                      # the main job; wait for its URL
    python scripts/readme_examples.py [--url http://127.0.0.1:8000]

NER: a few sentences in several languages, no ``language`` given (the server detects it). QA: one
context, several questions (the answers must depend on the question).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.client import MadxClient  # noqa: E402

NER = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "Rais William Ruto alikutana na viongozi wa Umoja wa Mataifa mjini Nairobi.",
    "国家主席习近平在北京会见了美国总统拜登。",
    "東京都知事の小池百合子は大阪を訪れた。",
    "Perezida Paul Kagame yahuye n’intumwa i Kigali.",
    "Владимир Путин встретился с делегацией ООН в Москве.",
    "ጠቅላይ ሚኒስትር ዐቢይ አሕመድ ትናንት በአዲስ አበባ ከተባበሩት መንግሥታት ልዑካን ጋር ተወያዩ።",
    "Bola Tinubu don travel go Abuja yesterday, and im people dey wait am for airport.",
]
QA_CONTEXT = ("Safaricom is a Kenyan mobile network operator headquartered at Safaricom House in Nairobi. "
              "It was launched in 1997 as a fully owned subsidiary of Telkom Kenya. In May 2000, Vodafone "
              "acquired a 40% stake in the company. Its mobile money service, M-Pesa, was launched in 2007.")
QUESTIONS = ["When was Safaricom launched?", "Where is Safaricom headquartered?",
             "Who acquired a stake in Safaricom in 2000?", "What is the name of its mobile money service?",
             "How large was the stake that Vodafone acquired?"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    args = ap.parse_args(argv)
    c = MadxClient(args.url)
    res = c.ner_full(NER)["results"]
    print("| text | language | route | entities (`text`, label, start–end, score) |\n|---|---|---|---|")
    for text, r in zip(NER, res, strict=True):
        lang = f"{r['language']} ({r['language_source']}, {r['detection_confidence']})"
        route = f"{r['stack']['language'] or '–'}+{r['stack']['task']} ({r['route']})"
        ents = " · ".join(f"{e['text']} {e['label']} {e['start']}–{e['end']} {e['score']:.2f}" for e in r["entities"])
        print(f"| {text} | {lang} | {route} | {ents or '(none)'} |")
    print(f"\nContext: {QA_CONTEXT}\n\n| question | answer (score) | second answer (score) |\n|---|---|---|")
    for q in QUESTIONS:
        a = c.qa(q, QA_CONTEXT, top_k=2)["answers"]
        cells = [f"{x['text']} ({x['score']:.2f})" for x in a] + ["–"] * (2 - len(a))
        print(f"| {q} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
