"""Loading the policy: a base model from a local directory, trained as a LoRA adapter or in full."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from jobspec.warmstart import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from worker.engine.config import RunConfig
from worker.engine.errors import AdapterLoadError, ModelNotFoundError
from worker.engine.precision import FLOAT32, Precision, enable_gradient_checkpointing

POLICY_ADAPTER = "default"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    if not (Path(model_dir) / "config.json").exists():
        raise ModelNotFoundError(f"no model found at {model_dir} (expected a save_pretrained directory)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # never trust_remote_code
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelNotFoundError(f"the tokenizer at {model_dir} has no chat template")
    return tokenizer


def load_base_model(
    model_dir: str | Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The model's weights in `dtype`, whatever dtype they were saved in; transformers' default attention
    kernel unless one is named."""
    if not (Path(model_dir) / "config.json").exists():
        raise ModelNotFoundError(f"no model found at {model_dir} (expected a save_pretrained directory)")
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=attn_implementation
    )
    model.to(device)  # type: ignore[arg-type]
    return model


def lora_config(config: RunConfig) -> LoraConfig:
    return LoraConfig(
        r=config.lora_rank,
        # peft annotates alpha as an int but only divides by it; a job may ask for any positive alpha (16.5)
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_policy(config: RunConfig, device: torch.device, precision: Precision = FLOAT32) -> nn.Module:
    """The trainable policy: a PeftModel with the LoRA adapter "default", or the full base model.

    A LoRA policy's frozen base is stored in the compute dtype; a policy trained in full keeps float32
    weights, the master copy its optimizer updates (precision.py). It trains in training mode, which
    transformers' gradient checkpointing needs (a LoRA policy used to get there at its first rollout, when
    `generate` restored the peft wrapper's mode; a full one trained in eval mode: the same numbers with
    dropout 0, and update.py treats active attention dropout like any other).
    """
    weights_dtype = precision.dtype if config.use_lora else torch.float32
    base = load_base_model(config.model, device, weights_dtype, precision.attn_implementation)
    enable_gradient_checkpointing(base, precision.gradient_checkpointing)
    base.train()
    if not config.use_lora:
        return base
    if config.init_adapter is not None:  # a warm start: the parent's adapter, trained further
        return with_adapter(base, config.init_adapter, trainable=True)
    return get_peft_model(base, lora_config(config), adapter_name=POLICY_ADAPTER)


def with_adapter(
    model: PreTrainedModel, adapter_dir: str | Path | None, *, trainable: bool = False
) -> nn.Module:
    """`model` with the peft adapter saved in `adapter_dir` on top (as the policy's adapter), or `model`
    itself when there is none: a fine-tuned model as evaluations score it and a warm start trains it."""
    if adapter_dir is None:
        return model
    # checked here: peft would look a missing file up on the Hugging Face Hub
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (Path(adapter_dir) / name).is_file()]
    if missing:
        raise AdapterLoadError(f"the adapter to load has no {' or '.join(missing)}")
    return PeftModel.from_pretrained(
        model, str(adapter_dir), adapter_name=POLICY_ADAPTER, is_trainable=trainable
    )


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


@contextmanager
def active_adapter(model: PeftModel, name: str, keep_trainable: list[nn.Parameter]) -> Iterator[None]:
    """Run with adapter `name` active, then switch back to the policy's adapter.

    peft's set_adapter also freezes every inactive adapter; the policy and a shared_lora critic both
    train, so their parameters get requires_grad back after each switch.
    """
    model.set_adapter(name)
    for parameter in keep_trainable:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        model.set_adapter(POLICY_ADAPTER)
        for parameter in keep_trainable:
            parameter.requires_grad_(True)


@contextmanager
def lora_merged(model: nn.Module) -> Iterator[None]:
    """Run with the policy adapter folded into its base weights (W + s·B·A), then restore W bit for bit.

    Generation is dominated by per-layer Python overhead on small models and by extra kernel launches on
    large ones: each wrapped linear runs three matmuls instead of one (1.3-1.7x slower sampling on the
    fixture). peft's unmerge subtracts the delta again, which drifts W by rounding at every step; a saved
    copy of W avoids that at the cost of one copy of the adapted weights while generating.
    """
    if not isinstance(model, PeftModel):
        yield
        return
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and POLICY_ADAPTER in m.lora_A]
    weights: list[torch.Tensor] = [layer.get_base_layer().weight for layer in layers]  # type: ignore[misc]
    saved = [weight.detach().clone() for weight in weights]
    with torch.no_grad():
        for layer in layers:
            layer.merge(adapter_names=[POLICY_ADAPTER])
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight, original in zip(layers, weights, saved, strict=True):
                weight.copy_(original)
                layer.merged_adapters.clear()
