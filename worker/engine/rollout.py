"""Batched sampling with the KV cache (HF `generate`), and the log-probs of response tokens.

Prompts are left-padded so every response starts at the same column P; responses are right-padded.
Sampling uses a clean generation config: the model's own `generation_config.json` (repetition penalty,
min_p, top_k, ...) would otherwise reshape the sampling distribution, and the PPO ratio would compare
log-probs of a distribution that was never sampled from. Old log-probs are filled in by the PPO update
(`update.py`) with `response_logprobs`, the very function its training forward uses.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from peft import PeftModel
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, StoppingCriteria, StoppingCriteriaList

from worker.engine.batching import micro_batches
from worker.engine.distributed import max_over_ranks
from worker.engine.policy import lora_merged
from worker.engine.precision import autocast
from worker.engine.sharding import gathered, is_sharded

LOGPROB_CHUNK_ELEMENTS = 1 << 22  # logits elements upcast at a time (16 MiB of float32)
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
    old_logprobs: torch.Tensor | None = None  # (B, R), filled in by the PPO update before its first step
    # (B, R) log-probs the serving engine reported for the tokens it sampled (vLLM rollouts only): their
    # gap to old_logprobs measures how far the sampler's distribution is from the training forward's
    sampler_logprobs: torch.Tensor | None = None

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


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z / T)[token] = z[token] / T − logsumexp(z / T), in row chunks.

    The autograd graph keeps only the logits (which the model produced anyway): no (B, R, V) float
    log-softmax, probability or upcast copy is saved, and the backward rebuilds softmax chunk by chunk.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        flat, flat_tokens = logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1, 1)  # (N, V), (N, 1)
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)  # (N,)
        for rows in _chunks(flat):
            z = flat[rows].float() / temperature  # (n, V)
            out[rows] = z.gather(-1, flat_tokens[rows]).squeeze(-1) - torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(logits, tokens)
        ctx.temperature = temperature
        return out.view(tokens.shape)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, tokens = ctx.saved_tensors
        flat, flat_tokens = logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1, 1)
        flat_grad = grad_out.reshape(-1, 1).float()  # (N, 1)
        grad = torch.empty_like(flat)  # (N, V)
        for rows in _chunks(flat):
            # d/dz_v [z_y/T − logsumexp(z/T)] = (1[v = y] − softmax(z/T)_v) / T
            g = -torch.softmax(flat[rows].float() / ctx.temperature, dim=-1) * flat_grad[rows]
            g.scatter_add_(-1, flat_tokens[rows], flat_grad[rows])
            grad[rows] = g / ctx.temperature
        return grad.view(logits.shape), None, None


def _chunks(flat: torch.Tensor) -> list[slice]:
    return micro_batches(flat.shape[0], flat.shape[1], LOGPROB_CHUNK_ELEMENTS)


@torch.no_grad()
def _entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of softmax(z / T) per position, chunked and without gradient: (..., V) -> (...)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for rows in _chunks(flat):
        z = flat[rows].float() / temperature
        out[rows] = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    return out.view(logits.shape[:-1])


def response_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    temperature: float,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, R) of the response tokens at `temperature`, and their entropies (B, R) if asked.

    The model's forward runs in `compute_dtype` (autocast); the log-probs and entropies are float32.
    The entropy carries a gradient only with `entropy_grad` (an entropy bonus); a metric needs none.
    """
    response_length = input_ids.shape[1] - prompt_length
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P + R): left padding shifts positions
    with autocast(input_ids.device, compute_dtype):
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            # only the R positions that predict response tokens (P-1 .. P+R-2)
            logits_to_keep=torch.arange(
                prompt_length - 1, prompt_length - 1 + response_length, device=input_ids.device
            ),
            use_cache=False,  # one forward: a KV cache would only be filled and dropped
        )
    logits = output.logits  # (B, R, V), in compute_dtype
    responses = input_ids[:, prompt_length:]  # (B, R)
    logprobs: torch.Tensor = _TokenLogprobs.apply(logits, responses, temperature)  # type: ignore[no-untyped-call]
    entropy: torch.Tensor | None = None
    if with_entropy and entropy_grad:
        z = logits.float() / temperature  # (B, R, V)
        entropy = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    elif with_entropy:
        entropy = _entropy(logits.detach(), temperature)
    return logprobs, entropy


def _response_mask(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS; a response without EOS (truncated) keeps all its tokens."""
    is_eos = (responses == eos_id).long()  # (B, R)
    eos_seen_before = is_eos.cumsum(-1) - is_eos  # (B, R) number of EOS strictly before t
    return (eos_seen_before == 0).float()


def rollout_from_tokens(
    prompts: list[list[int]],
    responses: list[list[int]],
    *,
    pad_id: int,
    eos_id: int,
    device: torch.device,
    logprobs: list[list[float]] | None = None,
) -> Rollout:
    """A Rollout of responses sampled elsewhere (a serving engine): prompts left-padded, responses
    right-padded, each response's mask up to and including its first EOS; `logprobs` (one per response
    token) become `sampler_logprobs`."""
    input_ids, attention_mask = left_pad(prompts, pad_id, device)
    width = max(1, max(len(r) for r in responses))
    response_ids = torch.full((len(responses), width), pad_id, dtype=torch.long)  # (B, R)
    sampled = torch.zeros((len(responses), width))  # (B, R)
    for i, response in enumerate(responses):
        response_ids[i, : len(response)] = torch.tensor(response, dtype=torch.long)
        if logprobs is not None:
            sampled[i, : len(response)] = torch.tensor(logprobs[i])
    response_mask = _response_mask(response_ids, eos_id)  # (B, R)
    for i, response in enumerate(responses):
        response_mask[i, len(response) :] = 0  # padding (possibly pad_id == eos_id) is never a response
    response_ids, response_mask = response_ids.to(device), response_mask.to(device)
    return Rollout(
        torch.cat([input_ids, response_ids], dim=1),
        torch.cat([attention_mask, response_mask.long()], dim=1),
        response_mask,
        input_ids.shape[1],
        sampler_logprobs=None if logprobs is None else sampled.to(device) * response_mask,
    )


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
    compute_dtype: torch.dtype = torch.float32,
) -> Rollout:
    """Sample one response per prompt (repeat a prompt for several samples); old_logprobs left empty.
    The forwards run in `compute_dtype` (autocast; transformers samples from float32 logits).

    A sharded model (sharding.py) generates in lockstep with the other ranks: as many chunks on every
    rank (cut by the widest rank's prompts), each generate call stepping until every rank's rows are done.
    """
    device = next(model.parameters()).device
    sharded = is_sharded(model)
    if sharded and control is not None:
        raise ValueError("a sharded model cannot stop one rank's generation: poll control between steps")
    was_training = model.training
    model.eval()
    input_ids, attention_mask = left_pad(prompts, pad_id, device)
    prompt_length = input_ids.shape[1]
    config = _generation_config(greedy, temperature, top_p, max_new_tokens, eos_id=eos_id, pad_id=pad_id)
    stopping = StoppingCriteriaList([_PollControl(control)] if control is not None else [])
    row_tokens = prompt_length + max_new_tokens
    if sharded:
        row_tokens = max_over_ranks(row_tokens, device)
    with (
        _without_model_generation_defaults(model),
        lora_merged(model),
        gathered(model),
        autocast(device, compute_dtype),
    ):
        chunks = [
            _generate_rows(model, input_ids[rows], attention_mask[rows], config, stopping, sharded=sharded)
            for rows in micro_batches(len(prompts), row_tokens, token_budget)
        ]
    width = max(chunk.shape[1] for chunk in chunks)
    responses = torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks])
    response_mask = _response_mask(responses, eos_id)  # (B, R)
    full_ids = torch.cat([input_ids, responses], dim=1)  # (B, P + R)
    full_mask = torch.cat([attention_mask, response_mask.long()], dim=1)  # (B, P + R)
    model.train(was_training)
    return Rollout(full_ids, full_mask, response_mask, prompt_length)


def _generate_rows(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    stopping: StoppingCriteriaList,
    *,
    sharded: bool,
) -> torch.Tensor:
    """The responses (b, r) of one `model.generate` call; generate pads finished rows with pad_id."""
    output: torch.Tensor = model.generate(  # type: ignore[operator]
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        stopping_criteria=stopping,
        synced_gpus=sharded,
    )
    return output[:, input_ids.shape[1] :]


def _generation_config(
    greedy: bool, temperature: float, top_p: float, max_new_tokens: int, *, eos_id: int, pad_id: int
) -> GenerationConfig:
    """Greedy decoding, or sampling at `temperature` with nucleus `top_p` and nothing else (no top-k)."""
    return GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_p=top_p if not greedy else None,
        top_k=0 if not greedy else None,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


@contextmanager
def _without_model_generation_defaults(model: nn.Module) -> Iterator[None]:
    """HF fills every unset field of our GenerationConfig from the model's generation_config.json
    (repetition_penalty, min_p, typical_p, no_repeat_ngram_size, suppress_tokens, ...); swap in a
    blank one for the call, so only what we set shapes the distribution."""
    hf_model = cast(PreTrainedModel, model.get_base_model() if isinstance(model, PeftModel) else model)
    saved = hf_model.generation_config
    hf_model.generation_config = GenerationConfig()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_model.generation_config = saved
