"""Zero-shot evaluation of NER and QA with any adapter stack (or an ensemble of stacks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import AdapterStack
from ..decode import best_spans, word_predictions
from ..features import ner_features, pad, project_tags, qa_windows
from ..model import MadxModel
from ..words import join_words, split_words
from .data import NerFile, QAExample
from .metrics import ner_f1, squad_scores


@torch.no_grad()
def logits_for(model: MadxModel, seqs: Sequence[Sequence[int]],
               stacks: Sequence[AdapterStack | tuple[AdapterStack, ...]], pad_id: int,
               batch_tokens: int = 8192, progress: bool = False, desc: str = "eval") -> list[torch.Tensor]:
    """Head logits (T_i, n_out) for each sequence; batches are formed from length-sorted rows
    (each row keeps its own stack) under a padded-token budget. A tuple of stacks for a sequence is
    an ensemble: the sequence runs once per stack (rows of the same batches) and the logits are averaged."""
    if any(isinstance(st, tuple) for st in stacks):
        flat_seqs, flat_stacks, owner = [], [], []
        for i, (q, st) in enumerate(zip(seqs, stacks, strict=True)):
            for one in (st if isinstance(st, tuple) else (st,)):
                flat_seqs.append(q)
                flat_stacks.append(one)
                owner.append(i)
        flat = logits_for(model, flat_seqs, flat_stacks, pad_id, batch_tokens, progress, desc)
        groups: list[list[torch.Tensor]] = [[] for _ in seqs]
        for i, lg in zip(owner, flat, strict=True):
            groups[i].append(lg)
        return [torch.stack(g).mean(0) for g in groups]
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    bar = tqdm(total=len(seqs), desc=desc, disable=not progress, unit="seq", dynamic_ncols=True)
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j + 1 - i) * len(seqs[order[j]]) <= batch_tokens:
            j += 1
        rows = order[i:j]
        ids = pad([seqs[r] for r in rows], pad_id)
        lens = torch.tensor([len(seqs[r]) for r in rows])
        mask = (torch.arange(ids.shape[1])[None, :] < lens[:, None]).long()
        _, logits = model(ids, mask, [stacks[r] for r in rows])
        for k, r in enumerate(rows):
            out[r] = logits[k][:len(seqs[r])].float()
        bar.update(len(rows))
        i = j
    bar.close()
    return out  # type: ignore[return-value]


def evaluate_ner(model: MadxModel, tokenizer, stack: AdapterStack | tuple[AdapterStack, ...], data: NerFile,
                 max_len: int = 256,
                 drop_types: Sequence[str] = (), progress: bool = False, desc: str = "eval ner",
                 words: str = "gold", per_example: bool = False) -> dict[str, Any]:
    """Entity-level F1 of the task adapter's predictions on ``data`` under ``stack``. Gold types in
    ``drop_types`` (e.g. DATE, MISC, which the adapter cannot predict) are scored as O.

    ``words="gold"`` tags the data's own tokens; ``words="segmented"`` tags what the server would:
    each sentence is written out as text (``join_words``), cut into words by ``split_words``, tagged,
    and the word tags are projected onto the gold tokens (``project_tags``). ``per_example`` adds
    each sentence's (true positives, gold, predicted) entity counts (``per_example``), for a bootstrap."""
    if words not in ("gold", "segmented"):
        raise ValueError(f"words {words!r} must be 'gold' or 'segmented'")
    task = (stack[0] if isinstance(stack, tuple) else stack).task  # a tuple: an ensemble of stacks
    labels = model.configs[task].head.labels
    types = {lab[2:] for lab in labels if lab != "O"}
    gold = [[("O" if t != "O" and t[2:] in drop_types else t) for t in s.tags] for s in data.sentences]
    unknown = sorted({t[2:] for g in gold for t in g if t != "O"} - types)
    if unknown:
        raise ValueError(f"gold entity types {unknown} cannot be predicted by {task!r} "
                         f"(labels {list(labels)}); pass them as drop_types to score them as O")
    joined = [join_words(s.tokens) for s in data.sentences]
    texts = [t for t, _ in joined]
    spans = ([sp for _, sp in joined] if words == "gold"
             else [[(w.start, w.end) for w in split_words(t)] for t in texts])
    feats = ner_features(tokenizer, texts, spans, None, max_len, skip_empty=words == "segmented")
    logits = logits_for(model, [f.input_ids for f in feats], [stack] * len(feats), tokenizer.pad_token_id,
                        progress=progress, desc=desc)
    tags = [["O"] * len(sp) for sp in spans]  # words with no sub-word stay O
    for f, lg in zip(feats, logits, strict=True):
        for w, (lab, _) in word_predictions(f.word_ids, lg).items():
            tags[f.sentence][w] = labels[lab]
    pred = tags if words == "gold" else [project_tags(spans[i], tags[i], joined[i][1]) for i in range(len(texts))]
    res = ner_f1(gold, pred)
    return {"f1": 100 * res["f1"], "precision": 100 * res["precision"], "recall": 100 * res["recall"],
            "sentences": len(gold), "gold_entities": res["gold_entities"], "words": words,
            **({"per_example": res["per_sentence"]} if per_example else {})}


def qa_predictions(model: MadxModel, tokenizer, stack: AdapterStack | tuple[AdapterStack, ...],
                   pairs: Sequence[tuple[str, str]],
                   max_len: int = 384, stride: int = 128, progress: bool = False, desc: str = "eval qa") -> list[str]:
    """The best answer string for each (question, context), over all windows of the context."""
    wins, owner = [], []
    for i, (q, c) in enumerate(pairs):
        for w in qa_windows(tokenizer, q, c, max_len, stride):
            wins.append(w)
            owner.append(i)
    logits = logits_for(model, [w.input_ids for w in wins], [stack] * len(wins), tokenizer.pad_token_id,
                        progress=progress, desc=desc)
    per: dict[int, list[int]] = {}
    for k, i in enumerate(owner):
        per.setdefault(i, []).append(k)
    out = [""] * len(pairs)
    for i, ks in per.items():
        spans = best_spans([wins[k].offsets for k in ks], [logits[k][:, 0] for k in ks], [logits[k][:, 1] for k in ks])
        out[i] = pairs[i][1][spans[0].start:spans[0].end] if spans else ""
    return out


def evaluate_qa(model: MadxModel, tokenizer, stack: AdapterStack, examples: Sequence[QAExample], max_len: int = 384,
                stride: int = 128, progress: bool = False, desc: str = "eval qa", blind: bool = True,
                per_example: bool = False) -> dict[str, Any]:
    """SQuAD v1.1 EM/F1 over all windows of each context (doc stride, nothing truncated).
    Questions whose gold answers are all empty strings cannot be scored: an error if all are (a
    file with its labels stripped), else they are left out and counted.

    With ``blind`` it also scores a **question-blind baseline**: one answer per context, the
    model's best span for that context with an empty question, given to every question of the
    context (what a model that ignores the question would score), and ``same_answer_rate``: the
    share of contexts with two or more questions whose questions all got the same answer.
    ``per_example`` adds each scored question's (F1 in [0, 1], 1) (``per_example``), for a bootstrap."""
    unscorable = [ex.id for ex in examples if not any(a for a, _ in ex.answers)]
    if len(unscorable) == len(examples):
        raise ValueError(f"all {len(examples)} questions have empty gold answers (labels stripped?); cannot score")
    examples = [ex for ex in examples if any(a for a, _ in ex.answers)]
    answers = qa_predictions(model, tokenizer, stack, [(ex.question, ex.context) for ex in examples], max_len,
                             stride, progress, desc)
    preds = {ex.id: a for ex, a in zip(examples, answers, strict=True)}
    golds = {ex.id: [a for a, _ in ex.answers if a] for ex in examples}
    scores = squad_scores(preds, golds)
    each = scores.pop("per_question")
    out = {**scores, "unscorable_empty_gold": len(unscorable), **({"per_example": each} if per_example else {})}
    if blind:
        contexts = list(dict.fromkeys(ex.context for ex in examples))
        blind_ans = dict(zip(contexts, qa_predictions(model, tokenizer, stack, [("", c) for c in contexts], max_len,
                                                       stride, progress, f"{desc} (blind)"), strict=True))
        b = squad_scores({ex.id: blind_ans[ex.context] for ex in examples}, golds)
        b.pop("per_question")
        by_ctx: dict[str, set[str]] = {}
        count: dict[str, int] = {}
        for ex in examples:
            by_ctx.setdefault(ex.context, set()).add(preds[ex.id])
            count[ex.context] = count.get(ex.context, 0) + 1
        multi = [c for c in contexts if count[c] > 1]
        out.update({"blind_f1": b["f1"], "blind_exact_match": b["exact_match"],
                    "same_answer_rate": 100.0 * sum(len(by_ctx[c]) == 1 for c in multi) / len(multi) if multi else None})
    return out
