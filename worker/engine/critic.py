"""Value models. `sequence` level (SPPO): one logit per prompt from the hidden state of the last prompt
token, so the critic never reads the response. `token` level (PPO-GAE): one value per response token.

- SeparateCritic: its own backbone (AutoModel from any local model directory, possibly smaller than the
  policy) plus a linear head, all trained.
- SharedLoraCritic: the policy's frozen base through its own LoRA adapter "critic" plus a head; no second
  copy of the base weights.

SPPO's sequence critic reads the prompt alone, so `SequenceCriticFit` fits it in one pass per step (one
optimizer step per minibatch, in row order) instead of once per PPO epoch, and that pass's forwards also
give the advantages' baselines: each sample's value is read before the critic has trained on that sample
(a baseline that had seen the sample's own reward would bias the advantage).
"""

import math
from collections import defaultdict
from functools import partial
from typing import Any, Literal, cast

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from worker.engine.algorithms import critic_bce_loss
from worker.engine.batching import TokenBudget
from worker.engine.config import RunConfig
from worker.engine.distributed import DistContext
from worker.engine.errors import ConfigError
from worker.engine.optim import check_finite, replicated_step
from worker.engine.policy import active_adapter, lora_config, trainable_parameters
from worker.engine.precision import FLOAT32, Precision, autocast, enable_gradient_checkpointing
from worker.engine.rollout import Rollout

Level = Literal["sequence", "token"]
CRITIC_ADAPTER = "critic"


class ValueHead(nn.Module):
    """Linear head with zero weights, so the initial value is exactly its bias (init_from_success_rate)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        values: torch.Tensor = self.linear(hidden.float()).squeeze(-1)
        return values


class Critic(nn.Module):
    """Shared forward logic; subclasses provide the backbone call and the trainable state. The backbone
    computes in `compute_dtype` (autocast), the head in float32."""

    def __init__(self, hidden_size: int, level: Level, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.level: Level = level
        self.compute_dtype = compute_dtype
        self.head = ValueHead(hidden_size)

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
    ) -> torch.Tensor:
        """Sequence level: value logits (B,) from the prompt alone. Token level: values (B, R)."""
        values: torch.Tensor
        if self.level == "sequence":
            prompt_ids, prompt_mask = input_ids[:, :prompt_length], attention_mask[:, :prompt_length]
            with autocast(input_ids.device, self.compute_dtype):
                hidden = self.backbone(prompt_ids, prompt_mask)  # (B, P, H)
            values = self.head(hidden[:, -1])  # (B,): prompts are left-padded, column P-1 is the last token
            return values
        with autocast(input_ids.device, self.compute_dtype):
            hidden = self.backbone(input_ids, attention_mask)  # (B, P + R, H)
        values = self.head(hidden[:, prompt_length - 1 : -1])  # (B, R): V(s_t) sits where y_t is predicted
        return values

    @torch.no_grad()
    def init_from_success_rate(self, success_rate: float) -> None:
        """Start at the measured success rate: a 0.5 start gives every failure A = -0.5 and collapses the
        policy (ALGORITHMS.md). Sequence level predicts a logit, token level a value in [0, 1]."""
        rate = min(max(success_rate, 0.02), 0.98)
        self.head.linear.bias.fill_(math.log(rate / (1 - rate)) if self.level == "sequence" else rate)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding shifts positions


class SeparateCritic(Critic):
    """Trained in full: float32 weights (the optimizer's master copy) computing in the run's dtype, in
    training mode (gradient checkpointing needs it; the critics' attention dropout is 0)."""

    def __init__(
        self,
        model_dir: str,
        level: Level,
        device: torch.device,
        layers: int | None = None,
        precision: Precision = FLOAT32,
    ) -> None:
        model_config = AutoConfig.from_pretrained(model_dir)
        if layers is not None:
            if layers > model_config.num_hidden_layers:
                message = f"critic_layers is {layers}; the model has {model_config.num_hidden_layers} layers"
                raise ConfigError(message, "critic_layers")
            # the decoder is built with `layers` layers and loads only their weights
            model_config.num_hidden_layers = layers
            if getattr(model_config, "layer_types", None):
                model_config.layer_types = model_config.layer_types[:layers]
        encoder = AutoModel.from_pretrained(
            model_dir,
            config=model_config,
            dtype=torch.float32,
            attn_implementation=precision.attn_implementation,
        ).to(device)
        enable_gradient_checkpointing(encoder, precision.gradient_checkpointing)
        encoder.train()
        super().__init__(encoder.config.hidden_size, level, precision.dtype)
        self.encoder = encoder
        self.head.to(device)

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)
        )
        hidden: torch.Tensor = output.last_hidden_state
        return hidden

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def state(self) -> dict[str, Any]:
        return {"kind": "separate", "weights": self.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["weights"])


class SharedLoraCritic(Critic):
    def __init__(
        self,
        policy: PeftModel,
        config: RunConfig,
        level: Level,
        policy_params: list[nn.Parameter],
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        base = cast(PreTrainedModel, policy.get_base_model())
        super().__init__(base.config.hidden_size, level, compute_dtype)
        # a plain list keeps the policy out of this module's parameters and state_dict
        self._policy = [policy]
        policy.add_adapter(CRITIC_ADAPTER, lora_config(config))
        self.head.to(next(policy.parameters()).device)
        self.adapter_params = [p for n, p in policy.named_parameters() if f".{CRITIC_ADAPTER}." in n]
        self._keep_trainable = policy_params + self.adapter_params
        for parameter in self._keep_trainable:
            parameter.requires_grad_(True)

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        policy = self._policy[0]
        with active_adapter(policy, CRITIC_ADAPTER, self._keep_trainable):
            base = cast(PreTrainedModel, policy.get_base_model())
            output = base.get_decoder()(  # type: ignore[no-untyped-call]
                input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)
            )
        hidden: torch.Tensor = output.last_hidden_state
        return hidden

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.adapter_params + trainable_parameters(self.head)

    def state(self) -> dict[str, Any]:
        adapter = get_peft_model_state_dict(self._policy[0], adapter_name=CRITIC_ADAPTER)
        return {"kind": "shared_lora", "head": self.head.state_dict(), "adapter": adapter}

    def load_state(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        set_peft_model_state_dict(self._policy[0], state["adapter"], adapter_name=CRITIC_ADAPTER)


def build_critic(
    config: RunConfig,
    level: Level,
    policy: nn.Module,
    policy_params: list[nn.Parameter],
    device: torch.device,
    precision: Precision = FLOAT32,
) -> Critic:
    if config.critic == "shared_lora":
        assert isinstance(policy, PeftModel), "config validation guarantees a LoRA policy"
        # its adapter is added in float32 on the policy's base, as the policy's own (peft's default)
        return SharedLoraCritic(policy, config, level, policy_params, precision.dtype)
    model_dir = config.critic_model or config.model
    return SeparateCritic(model_dir, level, device, config.critic_layers, precision)


class SequenceCriticFit:
    """One BCE pass of the prompt-only critic over a step's rows, one optimizer step per minibatch of rows
    in order. The loss is a sample-mean over the global minibatch, however it is cut into micro-batches."""

    def __init__(
        self,
        critic: Critic,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        *,
        budget: TokenBudget,
        dist: DistContext,
        max_grad_norm: float,
    ) -> None:
        assert critic.level == "sequence"
        self.critic, self.optimizer, self.params = critic, optimizer, params
        self.budget, self.dist, self.max_grad_norm = budget, dist, max_grad_norm

    def __call__(
        self, rollout: Rollout, returns: torch.Tensor, minibatch_size: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The value logits (B,) each minibatch's forward saw before its own step (the baselines of the
        advantages) and the pass's mean critic metrics."""
        num_rows, row_tokens = rollout.input_ids.shape
        chunks: list[torch.Tensor] = []
        totals: dict[str, list[float]] = defaultdict(list)
        for start in range(0, num_rows, minibatch_size):
            mb_inds = torch.arange(start, min(start + minibatch_size, num_rows))
            values, metrics = self.budget.retry(
                partial(self._minibatch, rollout, returns, mb_inds), row_tokens
            )
            chunks.append(values)
            for name, value in metrics.items():
                totals[name].append(value)
        return torch.cat(chunks), {name: sum(v) / len(v) for name, v in totals.items()}

    def _minibatch(
        self, rollout: Rollout, returns: torch.Tensor, mb_inds: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.optimizer.zero_grad(set_to_none=True)
        chunks: list[torch.Tensor] = []
        loss_total = 0.0
        rows_here = torch.tensor(float(len(mb_inds)), device=rollout.input_ids.device)  # nccl: on the GPU
        mb_size = float(self.dist.sum(rows_here))  # the global minibatch's rows
        for rows in self.budget.slices(len(mb_inds), rollout.input_ids.shape[1]):
            inds = mb_inds[rows]
            values = self.critic(rollout.input_ids[inds], rollout.attention_mask[inds], rollout.prompt_length)
            critic_loss, _ = critic_bce_loss(values, returns[inds])
            check_finite(critic_loss, "critic")
            weight = len(inds) / mb_size  # sample-mean over the minibatch, however it is cut
            (critic_loss * weight).backward()  # type: ignore[no-untyped-call]
            loss_total += critic_loss.item() * weight
            chunks.append(values.detach())
        replicated_step(self.optimizer, self.params, max_grad_norm=self.max_grad_norm, dist=self.dist)
        values = torch.cat(chunks)  # (b,) logits of the critic before this minibatch's step
        share = len(mb_inds) / mb_size  # of the global minibatch: the ranks' means add up to its mean
        metrics = {
            "train/critic_loss": loss_total,
            "train/value_mean": torch.sigmoid(values).mean().item() * share,
        }
        return values, self.dist.sum_scalars(metrics)
