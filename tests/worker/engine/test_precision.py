"""Precision (precision.py) on the CPU, where bfloat16 runs too: what `auto` picks, bf16 log-probs against
float32 ones, the first-epoch ratio, gradient checkpointing, float32 state around a bf16 base."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from worker.engine.callbacks import TrainerCallbacks
from worker.engine.data import encode_prompts, load_items
from worker.engine.errors import ConfigError
from worker.engine.fixtures import Fixture
from worker.engine.policy import load_policy, load_tokenizer
from worker.engine.precision import (
    DTYPES,
    Precision,
    enable_gradient_checkpointing,
    enable_tf32,
    resolve_attn_implementation,
    resolve_dtype,
    resolve_precision,
)
from worker.engine.rollout import Rollout, generate, response_logprobs
from worker.engine.trainer import Trainer

from .conftest import tiny_config

CPU = torch.device("cpu")
# bf16 keeps 8 bits of mantissa: on the fixture (hidden 128, 4 layers, a trained-like adapter) its
# per-token log-probs are 0.008 nats from float32's on average and 0.15 at worst (docs/engine.md)
BF16_MEAN_GAP, BF16_MAX_GAP = 0.02, 0.3


def _policy(tiny: Fixture, tmp_path: Path, dtype: str, **overrides: Any) -> nn.Module:
    """The fixture's policy in `dtype`, LoRA A drawn from seed 0 and B from seed 1 (B = 0 would leave the
    adapter out of every comparison)."""
    config = tiny_config(tiny, tmp_path, dtype=dtype, **overrides)
    torch.manual_seed(0)
    policy = load_policy(config, CPU, resolve_precision(config, CPU))
    _draw_lora_b(policy)
    return policy


def _draw_lora_b(policy: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def _rollout(tiny: Fixture, policy: nn.Module, prompts: int = 16) -> Rollout:
    tokenizer = load_tokenizer(tiny.model_dir)
    torch.manual_seed(0)
    return generate(
        policy,
        encode_prompts(tokenizer, load_items(tiny.train_file)[:prompts]),
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        max_new_tokens=32,
    )


def test_auto_is_float32_and_sdpa_on_a_cpu(tiny: Fixture, tmp_path: Path) -> None:
    assert resolve_precision(tiny_config(tiny, tmp_path), CPU) == Precision(torch.float32, "sdpa", None)
    explicit = tiny_config(tiny, tmp_path, dtype="bfloat16", attn_implementation="eager",
                           gradient_checkpointing=True)  # fmt: skip
    assert resolve_precision(explicit, CPU) == Precision(torch.bfloat16, "eager", True)
    with pytest.raises(ConfigError) as info:
        resolve_attn_implementation("flash_attention_2", CPU, torch.bfloat16)
    assert info.value.param == "attn_implementation"
    with pytest.raises(ConfigError) as info:
        resolve_dtype("float16", CPU)
    assert info.value.param == "dtype"


def test_tf32_is_turned_on_for_cuda_devices_only() -> None:
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        enable_tf32(CPU)
        assert not torch.backends.cuda.matmul.allow_tf32
        enable_tf32(torch.device("cuda"))  # sets the flag only: no GPU is touched
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_bf16_log_probs_are_within_the_stated_gap_of_float32(tiny: Fixture, tmp_path: Path) -> None:
    """A bf16 base under autocast, float32 LoRA weights: the log-probs (float32 themselves) stay within
    BF16_MEAN_GAP nats per token on average and BF16_MAX_GAP at worst of the float32 policy's."""
    exact, bf16 = _policy(tiny, tmp_path, "float32"), _policy(tiny, tmp_path, "bfloat16")
    weights = dict(bf16.named_parameters())
    assert weights["base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"].dtype == torch.bfloat16
    assert {p.dtype for p in bf16.parameters() if p.requires_grad} == {torch.float32}
    rollout = _rollout(tiny, exact)
    args = (rollout.input_ids, rollout.attention_mask, rollout.prompt_length, 1.0)
    with torch.no_grad():
        reference, _ = response_logprobs(exact, *args)
        logprobs, _ = response_logprobs(bf16, *args, compute_dtype=torch.bfloat16)
    assert logprobs.dtype == torch.float32
    mask = rollout.response_mask
    gap = (logprobs - reference).abs() * mask  # (B, R)
    mean_gap = (gap.sum() / mask.sum()).item()
    assert 1e-4 < mean_gap < BF16_MEAN_GAP  # above 1e-4: the bf16 path really ran in bf16
    assert gap.max().item() < BF16_MAX_GAP


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_old_log_probs_are_the_training_forwards_in_bf16(
    tiny: Fixture, tmp_path: Path, use_lora: bool
) -> None:
    """The no-grad forward that gives the other minibatches their old log-probs and the training forward
    with its graph compute bit-identical bf16 log-probs, whatever rows share their batch: the ratio of
    every row is exactly 1 before the first optimizer step."""
    config = tiny_config(tiny, tmp_path, dtype="bfloat16", micro_batch_tokens=100, use_lora=use_lora)
    trainer = Trainer(config, TrainerCallbacks())  # micro-batches of 1-2 rows
    _draw_lora_b(trainer.policy)  # float32 weights that take part (autocast casts them)
    rollout, _, _, _ = trainer.collect(trainer.sampler.next_batch())
    everything = torch.arange(rollout.input_ids.shape[0])
    old = trainer.update._old_logprobs(rollout, everything)  # (B, R), in budget-sized slices
    rows = torch.tensor([5, 2, 7])
    new, _ = trainer.update._logprobs(rollout, rows)  # the training forward, graph and all
    assert new.requires_grad
    mask = rollout.response_mask[rows]
    ratio = torch.exp(new.detach() * mask - old[rows])
    assert torch.equal(ratio, torch.ones_like(ratio))


def _gradients(policy: nn.Module, rollout: Rollout, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    logprobs, _ = response_logprobs(
        policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_length, 1.0, compute_dtype=dtype
    )
    (logprobs * rollout.response_mask).sum().backward()  # type: ignore[no-untyped-call]
    return {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("dtype", "use_lora"),
    [("float32", True), ("bfloat16", True), ("bfloat16", False)],
    ids=["lora-float32", "lora-bf16", "full-bf16"],
)
def test_gradient_checkpointing_gives_identical_gradients(
    tiny: Fixture, tmp_path: Path, dtype: str, use_lora: bool
) -> None:
    """Every decoder layer recomputed in the backward (its MLP runs twice), every gradient bit-identical
    to the one computed from kept activations; a frozen LoRA base needs no input that requires grad."""
    gradients, mlp_calls = [], []
    for checkpointing in (False, True):
        policy = _policy(tiny, tmp_path, dtype, use_lora=use_lora, gradient_checkpointing=checkpointing)
        rollout = _rollout(tiny, policy, prompts=4)
        calls: list[int] = []
        layer = next(m for name, m in policy.named_modules() if name.endswith("layers.0"))
        # a pre-hook: the recomputation stops as soon as the last tensor the backward needs is back,
        # inside the MLP, before a forward hook would run
        layer.mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        gradients.append(_gradients(policy, rollout, DTYPES[dtype]))
        mlp_calls.append(len(calls))
    assert mlp_calls == [1, 2]
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, gradient in plain.items():
        assert torch.equal(checkpointed[name], gradient), name


def test_auto_checkpointing_is_off_for_the_fixture(tiny: Fixture, tmp_path: Path) -> None:
    """1M parameters, far below CHECKPOINTING_MIN_PARAMETERS: "auto" leaves it off; true turns it on."""
    policy = _policy(tiny, tmp_path, "float32")
    base = policy.get_base_model()  # type: ignore[operator]
    assert enable_gradient_checkpointing(base, None) is False
    assert not any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    assert enable_gradient_checkpointing(base, True) is True


@pytest.mark.parametrize("critic", ["separate", "shared_lora"])
def test_a_bf16_step_keeps_trained_weights_and_optimizer_state_in_float32(
    tiny: Fixture, tmp_path: Path, critic: str
) -> None:
    """Around a bf16 frozen base: LoRA weights, the value head, a separate critic's weights (its master
    copy) and every AdamW moment are float32 after a step."""
    trainer = Trainer(tiny_config(tiny, tmp_path, dtype="bfloat16", critic=critic), TrainerCallbacks())
    trainer.train_step()
    frozen = {p.dtype for p in trainer.policy.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    trained = trainer.opt.actor_params + trainer.opt.critic_params
    assert {p.dtype for p in trained} == {torch.float32}
    optimizers = [trainer.opt.actor] + ([trainer.opt.critic] if trainer.opt.critic else [])
    moments = [s[k] for o in optimizers for s in o.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(trained)
    assert {m.dtype for m in moments} == {torch.float32}


def test_every_forward_of_a_bf16_run_is_autocast_and_the_value_head_is_not(
    tiny: Fixture, tmp_path: Path
) -> None:
    """Rollouts, evaluation, old log-probs, the training forward and both critics' backbones compute in
    bf16; the value head reads their hidden states in float32."""
    seen: dict[str, list[bool]] = {"policy": [], "critic": [], "head": []}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            on = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            seen[name].append(on)

        return hook

    for critic in ("separate", "shared_lora"):
        trainer = Trainer(tiny_config(tiny, tmp_path / critic, dtype="bfloat16", critic=critic),
                          TrainerCallbacks())  # fmt: skip
        assert trainer.critic is not None
        backbones = {"policy": trainer.policy.get_base_model().get_decoder()}  # type: ignore[operator]
        if critic == "separate":
            backbones["critic"] = trainer.critic.encoder
        for name, module in backbones.items():
            module.register_forward_pre_hook(record(name))
        trainer.critic.head.register_forward_pre_hook(record("head"))
        trainer.train_step()
        trainer.evaluate()
    assert seen["policy"] and all(seen["policy"])  # shared_lora's critic forwards are the policy's base too
    assert seen["critic"] and all(seen["critic"])
    assert seen["head"] and not any(seen["head"])
