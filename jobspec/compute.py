"""How a job's models compute: the dtype and attention-kernel names the API accepts and the engine runs
(worker/engine/precision.py resolves them on the device; docs/engine.md, "Precision")."""

from typing import Literal

DTYPES = ("auto", "float32", "bfloat16")
"""`auto`: bfloat16 on a CUDA GPU that supports it, float32 elsewhere. float16 is not offered: it needs
loss scaling, and every GPU with bfloat16 (Ampere and later) is better served by it."""
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
"""`auto`: flash_attention_2 on CUDA in bfloat16 when the flash-attn package is installed, else sdpa."""

DType = Literal["auto", "float32", "bfloat16"]
AttnImplementation = Literal["auto", "sdpa", "eager", "flash_attention_2"]
