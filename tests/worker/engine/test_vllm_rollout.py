"""Rollouts sampled by vLLM (vllm_rollout.py). Without vLLM (every CPU machine) only the refusal runs; the
rest needs the `vllm` extra and a CUDA GPU and is skipped cleanly elsewhere."""

import importlib.util
from pathlib import Path

import pytest
import torch

from worker.engine.data import encode_prompts, load_items
from worker.engine.errors import ConfigError
from worker.engine.fixtures import Fixture
from worker.engine.policy import load_policy, load_tokenizer
from worker.engine.rollout import response_logprobs
from worker.engine.run import run_training

from .conftest import tiny_config

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm_gpu = pytest.mark.skipif(
    not (HAVE_VLLM and torch.cuda.is_available()), reason="needs the vllm extra and a CUDA GPU"
)
# |vLLM's log-prob − the training forward's| of a sampled token: vLLM runs bf16 (its LoRA kernels take
# nothing wider), the trainer float32. bf16 keeps 8 mantissa bits: logits of magnitude ~10 move by up to
# ~0.04, so a token's log-prob by up to ~0.1 and on average by far less; a wrong temperature, adapter or
# sampling distribution moves them by whole nats
LOGPROB_TOLERANCE = 0.1
MEAN_TOLERANCE = 0.02


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_a_run_asking_for_vllm_without_it_is_refused_with_the_fix(tiny: Fixture, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        run_training(tiny_config(tiny, tmp_path / "run", rollout_backend="vllm"))
    assert refused.value.param == "rollout_backend" and "pip install" in refused.value.message


@needs_vllm_gpu
def test_vllm_samples_the_training_forwards_distribution_and_follows_the_adapter(
    tiny: Fixture, tmp_path: Path
) -> None:
    from worker.engine.vllm_rollout import VllmRollout

    device = torch.device("cuda")
    config = tiny_config(tiny, tmp_path / "run", rollout_backend="vllm", temperature=1.0, top_p=1.0)
    policy = load_policy(config, device)
    tokenizer = load_tokenizer(tiny.model_dir)
    prompts = encode_prompts(tokenizer, load_items(tiny.validation_file)[:16])
    options = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id, "device": device}
    engine = VllmRollout(config, policy, device)
    try:
        torch.manual_seed(0)
        with torch.no_grad():  # an adapter that changes the policy: LoRA B starts at zero
            for name, parameter in policy.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05)
        engine.sync(policy)
        for seed in (1, 2):
            torch.manual_seed(seed)
            rollout = engine.sample(prompts, **options)
            with torch.no_grad():
                logprobs, _ = response_logprobs(
                    policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_length, 1.0
                )
            assert rollout.sampler_logprobs is not None
            gaps = (logprobs - rollout.sampler_logprobs).abs() * rollout.response_mask
            assert gaps.max().item() < LOGPROB_TOLERANCE, f"seed {seed}: largest gap {gaps.max().item()}"
            mean = gaps.sum().item() / rollout.response_mask.sum().item()
            assert mean < MEAN_TOLERANCE, f"seed {seed}: mean gap {mean}"
        torch.manual_seed(2)
        again = engine.sample(prompts, **options)
        assert again.input_ids.equal(rollout.input_ids)  # per-row seeds from torch's RNG: reproducible
    finally:
        engine.close()


@needs_vllm_gpu
def test_a_run_with_vllm_rollouts_trains_and_logs_the_sampler_gap(tiny: Fixture, tmp_path: Path) -> None:
    result = run_training(
        tiny_config(tiny, tmp_path / "run", rollout_backend="vllm", max_steps=3, device="cuda", top_p=1.0)
    )
    assert result.status == "completed"
    assert result.metrics["rollout/sampler_logprob_gap"] < MEAN_TOLERANCE
