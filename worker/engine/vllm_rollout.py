"""Rollouts sampled by vLLM (`rollout_backend: vllm`, SPPO_ROLLOUT_BACKEND=vllm on a worker): the `vllm`
extra, a CUDA GPU, a LoRA policy, one device per job.

HF `generate` re-runs the whole batch at every token over a padded KV cache; vLLM's paged cache and
continuous batching sample many times faster on real models, and rollouts are most of an RL step. The
engine is created by the trainer on the training GPU (vLLM runs its engine core in a process of its own)
and takes `rollout_gpu_memory_utilization` of the GPU's memory for the frozen base and the KV cache.
After every update the trainer saves the policy's adapter and the engine hot-swaps it (a new LoRARequest
id; vLLM loads it at the next request and evicts the old one), so every step samples from the current
policy.

What keeps the samples close to on-policy for PPO's ratio:
- the engine runs the policy's weights in bfloat16 (vLLM's LoRA kernels take fp16/bf16 only; the trainer
  computes in bf16 too with dtype "auto" on such a GPU), so it samples the training forward's distribution
  up to the rounding of two different bf16 kernels;
  `rollout/sampler_logprob_gap`, the mean absolute gap between vLLM's log-prob of each sampled token
  (after temperature, vLLM >= 0.11's processed log-probs) and the training forward's, is logged every
  step to show how large that is (with top_p 1 only: below 1 vLLM renormalises over the nucleus, which
  the training forward does not);
- explicit SamplingParams: no repetition penalty or other default from the model's generation_config;
- old log-probs are still the training forward's (update.py), never vLLM's.
Each row gets its own sampling seed drawn from the trainer's torch RNG, which the checkpoint holds, so a
resumed run samples what an uninterrupted one would (on the same vLLM version and GPU).
"""

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from worker.engine.config import RunConfig
from worker.engine.errors import ConfigError
from worker.engine.policy import POLICY_ADAPTER
from worker.engine.rollout import Rollout, rollout_from_tokens

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA kernels are built for
ADAPTERS_DIR = "rollout-adapters"  # under the run's output directory: the adapter the engine serves
SEED_SPACE = 2**31


def unavailable_reason(device: str) -> str | None:
    """Why rollouts cannot be sampled with vLLM on `device` here, or None when they can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed: pip install 'sppo-service[vllm]' (CUDA GPUs), or use the hf backend"
    if not device.startswith("cuda"):
        return f"vLLM samples on a CUDA GPU and this run's device is {device}"
    return None


class VllmRollout:
    """A vLLM engine over the policy's base model that samples with the policy's current adapter."""

    def __init__(self, config: RunConfig, policy: nn.Module, device: torch.device) -> None:
        if (reason := unavailable_reason(str(device))) is not None:
            raise ConfigError(f"rollout_backend vllm: {reason}", "rollout_backend")
        from vllm import LLM

        self.config = config
        self.adapters = Path(config.output_dir) / ADAPTERS_DIR
        self.version = 0
        self.lora: Any = None
        rank = next((r for r in VLLM_LORA_RANKS if r >= config.lora_rank), None)
        if rank is None:
            raise ConfigError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}", "lora_rank")
        self.llm = LLM(
            model=config.model,
            dtype="bfloat16",
            enable_lora=True,
            max_lora_rank=rank,
            max_loras=1,
            gpu_memory_utilization=config.rollout_gpu_memory_utilization,
            seed=config.seed,
            skip_tokenizer_init=True,  # prompts go in as token ids, responses come back as token ids
            logprobs_mode="processed_logprobs",  # after temperature, as the training forward computes them
            trust_remote_code=False,
        )
        self.sync(policy)

    def sync(self, policy: nn.Module) -> None:
        """Serve the policy's adapter as it is now (after an update or a resume)."""
        assert isinstance(policy, PeftModel)
        from vllm.lora.request import LoRARequest

        self.version += 1
        path = self.adapters / f"v{self.version}"
        policy.save_pretrained(str(path), selected_adapters=[POLICY_ADAPTER])
        # absolute: vLLM looks a path that does not exist locally up on the Hugging Face Hub
        self.lora = LoRARequest(f"policy-v{self.version}", self.version, str(path.resolve()))
        for old in self.adapters.glob("v*"):  # earlier versions were loaded by earlier requests
            if old != path:
                shutil.rmtree(old, ignore_errors=True)

    def sample(self, prompts: list[list[int]], *, pad_id: int, eos_id: int, device: torch.device) -> Rollout:
        """One response per prompt at the run's temperature and top_p, with per-row seeds from torch's RNG."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        first_seed = int(torch.randint(SEED_SPACE, (1,)).item())
        gap_measurable = self.config.top_p == 1.0
        params = [
            SamplingParams(
                n=1,
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                max_tokens=self.config.max_response_tokens,
                stop_token_ids=[eos_id],
                logprobs=0 if gap_measurable else None,  # the sampled token's own log-prob
                detokenize=False,
                seed=(first_seed + row) % SEED_SPACE,
            )
            for row in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=prompt) for prompt in prompts], params, lora_request=self.lora,
            use_tqdm=False,
        )  # fmt: skip
        responses = [list(output.outputs[0].token_ids) for output in outputs]
        logprobs = (
            [
                [step[token].logprob for step, token in zip(output.outputs[0].logprobs, tokens, strict=True)]
                for output, tokens in zip(outputs, responses, strict=True)
            ]
            if gap_measurable
            else None
        )
        return rollout_from_tokens(prompts, responses, pad_id=pad_id, eos_id=eos_id, device=device,
                                   logprobs=logprobs)  # fmt: skip

    def close(self) -> None:
        """Give the engine's GPU memory back: a worker runs many jobs in one process."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
        del self.llm
        torch.cuda.empty_cache()
        shutil.rmtree(self.adapters, ignore_errors=True)
