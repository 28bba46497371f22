"""Numeric precision and kernels of a run: the dtype weights are stored in and forwards compute in, the
attention kernel, gradient checkpointing and TF32 (docs/engine.md, "Precision").

With dtype bfloat16 (what "auto" picks on a CUDA GPU with native bf16; float32 everywhere else):
- a LoRA policy's frozen base is stored in bf16, half the memory of float32; peft keeps the adapter
  weights in float32 on a bf16 base, and so their gradients and AdamW state;
- a model trained in full (a fully fine-tuned policy, a `separate` critic) keeps float32 weights: they are
  the master copy AdamW updates, since a bf16 weight (8 significant bits) rounds away any update below
  2^-8 of its magnitude (at lr 1e-6 nearly all of them); its forwards still compute in bf16;
- every forward of policy and critic runs under autocast; the logits are upcast to float32 (in chunks)
  before the log-softmax (rollout.py), the value head runs in float32 (critic.py), and advantages and
  losses are float32 tensor maths on those;
- a sharded policy (FSDP2) gathers its float32 shards as bf16 and reduces gradients in float32.
Old log-probs and the training forward take the very same path (`response_logprobs` under the same
autocast, which gives a row the same numbers whichever rows share its batch), so the first-epoch ratio
stays exactly 1. With float32 nothing is autocast: the engine computes as it did before dtype existed.
"""

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.utils.import_utils import is_flash_attn_2_available

from worker.engine.config import RunConfig
from worker.engine.errors import ConfigError

CHECKPOINTING_MIN_PARAMETERS = 300_000_000
"""gradient_checkpointing "auto" turns it on for models of this size and more. From about here a training
forward keeps over 1 MB of bf16 activations per token (Qwen2.5-0.5B 1.5 MB, 1.5B 3.2 MB, 7B 6.9 MB), so
the default 65,536-token micro-batch would need 80 GB and more; checkpointed, a layer's input is kept
(0.5B: 43 KB per token) and its activations are recomputed in the backward, one more forward per
micro-batch (about a third more compute in the update). Smaller models fit without it."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """How a run's models are loaded and computed."""

    dtype: torch.dtype
    """Forwards compute in it (autocast unless float32); a frozen LoRA base is stored in it."""
    attn_implementation: str
    """The transformers attention kernel: sdpa, eager or flash_attention_2."""
    gradient_checkpointing: bool | None
    """None: on for models of CHECKPOINTING_MIN_PARAMETERS and more."""


FLOAT32 = Precision(torch.float32, "sdpa", False)
"""What the engine did before it had a precision setting (and still does on a CPU with "auto")."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto": bfloat16 on a CUDA GPU of compute capability 8.0 or later (A100, H100, RTX 30xx on), where
    bf16 runs natively; float32 elsewhere. An explicit name is taken as it is (bf16 runs on a CPU too)."""
    if name != "auto" and name not in DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}", "dtype")
    if name == "auto":
        native_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native_bf16 else torch.float32
    return DTYPES[name]


def resolve_attn_implementation(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """ "auto": flash_attention_2 where it can run (the flash-attn package, CUDA, bf16), else sdpa."""
    flash_runs = device.type == "cuda" and dtype != torch.float32 and is_flash_attn_2_available()
    if name == "auto":
        return "flash_attention_2" if flash_runs else "sdpa"
    if name == "flash_attention_2" and not flash_runs:
        message = "flash_attention_2 needs the flash-attn package, a CUDA device and dtype bfloat16"
        raise ConfigError(message, "attn_implementation")
    return name


def resolve_precision(config: RunConfig, device: torch.device) -> Precision:
    dtype = resolve_dtype(config.dtype, device)
    checkpointing = config.gradient_checkpointing
    return Precision(
        dtype,
        resolve_attn_implementation(config.attn_implementation, device, dtype),
        checkpointing if isinstance(checkpointing, bool) else None,
    )


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[object]:
    """Forwards in `dtype` under autocast; in float32 nothing changes (no autocast at all)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def enable_gradient_checkpointing(model: PreTrainedModel, setting: bool | None) -> bool:
    """Checkpoint every decoder layer when `setting` says so (None: by the model's size); returns whether.

    Non-reentrant checkpointing needs no input that requires grad, so a frozen base under LoRA works as
    it is; transformers checkpoints only in training mode with gradients on (generation is untouched).
    """
    enabled = setting if setting is not None else model.num_parameters() >= CHECKPOINTING_MIN_PARAMETERS
    if not enabled:
        return False
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5: the older name warns
        model.activation_checkpointing_enable(options)
    else:
        model.gradient_checkpointing_enable(options)  # type: ignore[no-untyped-call]
    return True


def enable_tf32(device: torch.device) -> None:
    """float32 matmuls and convolutions on a CUDA GPU use TF32 tensor cores (Ampere and later): the ones
    left in float32 under bf16 autocast, and all of a float32 run. Process-wide; nothing on a CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
