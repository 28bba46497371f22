"""One batch of sequences decoded together: left-padded prompts, a shared KV cache, one token per step.

Each row keeps its own adapter, sampling parameters, random generator and token budget, so requests with
different settings share a batch. A row ends at EOS, at its budget, or when `on_token` says so (a stop
string, or a client that went away); the batch ends when every row has.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from worker.engine.rollout import left_pad


@dataclass
class Row:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    adapter: str
    generator: torch.Generator | None


@torch.inference_mode()
def decode_batch(
    model: PreTrainedModel | PeftModel,
    rows: list[Row],
    *,
    pad_id: int,
    eos_ids: set[int],
    pick: Callable[[torch.Tensor, Row], int],
    on_token: Callable[[int, int], bool],
) -> list[tuple[str, int]]:
    """Decode until every row ended; `on_token(row, token)` returns False to end that row early.

    Returns each row's (finish reason, tokens produced): "stop" (EOS, or ended by `on_token`) or "length".
    """
    device = next(model.parameters()).device
    input_ids, mask = left_pad([row.prompt_ids for row in rows], pad_id, device)  # (B, T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift positions
    extra = {"adapter_names": [row.adapter for row in rows]} if isinstance(model, PeftModel) else {}
    finish: list[str | None] = [None] * len(rows)
    produced = [0] * len(rows)
    cache = None
    for _ in range(max(row.max_new_tokens for row in rows)):
        out = model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions,
            past_key_values=cache, use_cache=True, **extra,
        )  # fmt: skip
        cache = out.past_key_values
        logits = out.logits[:, -1, :]  # (B, vocab)
        tokens = [pad_id] * len(rows)
        for i, row in enumerate(rows):
            if finish[i] is not None:
                continue
            token = pick(logits[i], row)
            produced[i] += 1
            if token in eos_ids:
                finish[i] = "stop"
                continue
            tokens[i] = token
            if not on_token(i, token):
                finish[i] = "stop"
            elif produced[i] >= row.max_new_tokens:
                finish[i] = "length"
        if all(reason is not None for reason in finish):
            break
        input_ids = torch.tensor(tokens, device=device).unsqueeze(-1)  # (B, 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)  # (B, T + step)
        positions = positions[:, -1:] + 1  # (B, 1)
    return [(reason or "length", count) for reason, count in zip(finish, produced, strict=True)]
