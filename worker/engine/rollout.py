"""Batched sampling with the KV cache (HF `generate`), then old log-probs from the training forward.

Prompts are left-padded so every response starts at the same column P; responses are right-padded.
Old log-probs come from `response_logprobs`, the very function the PPO update uses, so the ratio in the
first PPO epoch is exactly 1 (up to batch composition).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from worker.engine.batching import micro_batches

ControlFn = Callable[[], str]
CONTROL_POLL_TOKENS = 16  # poll control() every this many generated tokens


class GenerationInterrupted(Exception):
    """control() answered something other than "continue" while tokens were being generated."""

    def __init__(self, signal: str) -> None:
        super().__init__(signal)
        self.signal = signal


@dataclass
class Rollout:
    """Sampled sequences. B rows, P prompt columns (left-padded), R response columns (right-padded)."""

    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    response_mask: torch.Tensor  # (B, R) float: 1 on response tokens up to and including EOS
    prompt_length: int  # P
    old_logprobs: torch.Tensor  # (B, R)

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]  # (B, R)


class _PollControl(StoppingCriteria):
    """Polls control() during generation; a non-"continue" answer aborts the rollout."""

    def __init__(self, control: ControlFn) -> None:
        self.control = control
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: object, **kwargs: object) -> torch.BoolTensor:
        self.calls += 1
        if self.calls % CONTROL_POLL_TOKENS == 0:
            signal = self.control()
            if signal != "continue":
                raise GenerationInterrupted(signal)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, P)
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[i, width - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, R) of the response tokens at `temperature`, and their entropies (B, R) if asked."""
    response_length = input_ids.shape[1] - prompt_length
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P + R): left padding shifts positions
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=response_length + 1,  # only the logits that predict response tokens
    )
    logits = output.logits[:, :-1].float() / temperature  # (B, R, V)
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, R, V)
    responses = input_ids[:, prompt_length:]  # (B, R)
    logprobs = log_probs.gather(-1, responses.unsqueeze(-1)).squeeze(-1)  # (B, R)
    entropy = -(log_probs.exp() * log_probs).sum(-1) if with_entropy else None  # (B, R)
    return logprobs, entropy


def _response_mask(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS; a response without EOS (truncated) keeps all its tokens."""
    is_eos = (responses == eos_id).long()  # (B, R)
    eos_seen_before = is_eos.cumsum(-1) - is_eos  # (B, R) number of EOS strictly before t
    return (eos_seen_before == 0).float()


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    token_budget: int = 65536,
    control: ControlFn | None = None,
) -> Rollout:
    """Sample one response per prompt (repeat a prompt for several samples); old_logprobs filled in."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    input_ids, attention_mask = left_pad(prompts, pad_id, device)
    prompt_length = input_ids.shape[1]
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_p=top_p if not greedy else None,
        top_k=0 if not greedy else None,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    stopping = StoppingCriteriaList([_PollControl(control)] if control is not None else [])
    chunks: list[torch.Tensor] = []
    for rows in micro_batches(len(prompts), prompt_length + max_new_tokens, token_budget):
        output = model.generate(  # type: ignore[operator]
            input_ids=input_ids[rows],
            attention_mask=attention_mask[rows],
            generation_config=config,
            stopping_criteria=stopping,
        )
        chunks.append(output[:, prompt_length:])  # (b, r): generate pads finished rows with pad_id
    width = max(chunk.shape[1] for chunk in chunks)
    responses = torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks])
    response_mask = _response_mask(responses, eos_id)  # (B, R)
    full_ids = torch.cat([input_ids, responses], dim=1)  # (B, P + R)
    full_mask = torch.cat([attention_mask, response_mask.long()], dim=1)  # (B, P + R)
    old_logprobs = torch.cat(
        [
            response_logprobs(model, full_ids[rows], full_mask[rows], prompt_length, temperature)[0]
            for rows in micro_batches(len(prompts), full_ids.shape[1], token_budget)
        ]
    )
    model.train(was_training)
    return Rollout(full_ids, full_mask, response_mask, prompt_length, old_logprobs * response_mask)
