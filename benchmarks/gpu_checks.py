"""The measurements of benchmarks/gpu_check.py, each a function of a built model directory.

Every speed is a ratio within one run against a bare baseline on the same work: the engine's rollout
against `model.generate` on the same prompts and max tokens, its update against a plain
forward+backward+AdamW over the same tokens. The model never samples EOS (gpu_model.py), so every
response is `max_response_tokens` long and a step's work is the same in every run.
"""

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from benchmarks.gpu_model import parameter_counts, peak_flops, training_flops_per_token, utilisation
from worker.engine.batching import micro_batches
from worker.engine.callbacks import Control, Level, TrainerCallbacks
from worker.engine.config import RunConfig
from worker.engine.data import encode_prompts, load_items
from worker.engine.fixtures import FIXTURE_GRADER, ensure_fixture
from worker.engine.memory import peak_memory_mb, reset_peak_memory
from worker.engine.policy import load_base_model, load_policy, load_tokenizer, trainable_parameters
from worker.engine.precision import autocast
from worker.engine.rollout import Rollout, left_pad
from worker.engine.run import run_training
from worker.engine.trainer import Trainer

T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    """What one step does: `samples` responses of `max_response_tokens`, `steps` timed steps."""

    samples: int
    max_response_tokens: int
    steps: int
    resume_samples: int
    resume_tokens: int


MID = Workload(samples=128, max_response_tokens=256, steps=2, resume_samples=16, resume_tokens=32)
TINY = Workload(samples=8, max_response_tokens=16, steps=2, resume_samples=4, resume_tokens=8)


class Recorder(TrainerCallbacks):
    """Keeps the run's warnings; pauses once `pause_after` steps are done (None: never)."""

    def __init__(self, pause_after: int | None = None) -> None:
        self.pause_after, self.seen = pause_after, 0
        self.warnings: list[str] = []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.seen = step

    def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
        if level == "warning":
            self.warnings.append(message)

    def control(self) -> Control:
        return "pause" if self.pause_after is not None and self.seen >= self.pause_after else "continue"


def run_config(
    model_dir: Path, output_dir: Path, device: torch.device, algorithm: str, samples: int, **overrides: Any
) -> RunConfig:
    """A run on the benchmark model over the fixture's prompts, graded by the fixture's grader."""
    fixture = ensure_fixture()
    per_prompt = 8 if algorithm == "grpo" else 1
    values = {
        "model": str(model_dir), "train_file": str(fixture.train_file), "grader": FIXTURE_GRADER,
        "output_dir": str(output_dir), "device": str(device), "seed": 0, "algorithm": algorithm,
        "batch_size": samples // per_prompt, "minibatch_size": samples // 2, "temperature": 1.0,
        "checkpoint_interval": 1000, **overrides,
    }  # fmt: skip
    return RunConfig.from_dict(values)


def timed(device: torch.device, fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of fn, the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def release() -> None:
    """Give the memory of the models just dropped back, so the next peak is the next run's own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_config(config: RunConfig, steps: int) -> tuple[Trainer, dict[str, Any]]:
    """A fresh trainer: one warm-up step, `steps` timed ones; peak memory from before the models load."""
    release()
    reset_peak_memory()
    trainer = Trainer(config, TrainerCallbacks())
    trainer.train_step()  # warm-up: allocator, kernels, the critic's initialisation
    tokens_before = trainer.counters["tokens"]
    lines = [trainer.train_step() for _ in range(steps)]
    tokens_per_step = (trainer.counters["tokens"] - tokens_before) / steps
    samples = config.batch_size * config.samples_per_prompt
    rollout_s = statistics.median(line["perf/rollout_s"] for line in lines)
    train_s = statistics.median(line["perf/train_s"] for line in lines)
    counts = parameter_counts(trainer.policy, trainer.opt.actor_params)
    update_tokens_per_s = config.ppo_epochs * tokens_per_step / train_s
    generated = samples * statistics.median(line["rollout/response_length_mean"] for line in lines)
    peak = peak_flops(trainer.device)
    return trainer, {
        "peak_memory_mb": peak_memory_mb(trainer.device),
        "samples_per_step": samples,
        "tokens_per_step": tokens_per_step,
        "response_length_mean": generated / samples,
        "rollout_s": rollout_s,
        "update_s": train_s,
        "rollout_tokens_per_s": generated / rollout_s,
        "update_tokens_per_s": update_tokens_per_s,
        "update_mfu": utilisation(training_flops_per_token(counts), update_tokens_per_s, peak),
        "policy_params": counts,
    }


def config_memory(config: Callable[[], RunConfig]) -> dict[str, Any]:
    """measure_config of `config()` with one timed step: an algorithm and critic kind's peak memory."""
    return measure_config(config(), 1)[1]


def rollout_vs_bare(trainer: Trainer, rounds: int) -> tuple[dict[str, Any], Rollout]:
    """The engine's rollout (`Trainer.collect`: sampling, decoding, grading) against a plain bf16
    `model.generate` of the same prompts, alternating, after one untimed round of each."""
    config, device = trainer.config, trainer.device
    bare = load_base_model(
        config.model, device, trainer.precision.dtype, trainer.precision.attn_implementation
    )
    sampling = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0,
        max_new_tokens=config.max_response_tokens, eos_token_id=trainer.tokenizer.eos_token_id,
        pad_token_id=trainer.tokenizer.pad_token_id,
    )  # fmt: skip
    engine_rates, bare_rates = [], []
    for _ in range(rounds + 1):
        indices = trainer.sampler.next_batch()
        prompts = [trainer.prompts[i] for i in indices for _ in range(config.samples_per_prompt)]
        seconds, (rollout, _, _, _) = timed(device, partial(trainer.collect, indices))
        engine_rates.append(rollout.responses.numel() / seconds)
        input_ids, attention_mask = left_pad(prompts, trainer.tokenizer.pad_token_id, device)

        def generate(ids: torch.Tensor = input_ids, mask: torch.Tensor = attention_mask) -> torch.Tensor:
            return bare.generate(input_ids=ids, attention_mask=mask, generation_config=sampling)  # type: ignore[operator, no-any-return]

        with torch.no_grad():
            seconds, output = timed(device, generate)
        bare_rates.append(output[:, input_ids.shape[1] :].numel() / seconds)
    engine, plain = statistics.median(engine_rates[1:]), statistics.median(bare_rates[1:])
    flops, peak = 2 * parameter_counts(bare)["params"], peak_flops(device)
    return {
        "rows": len(prompts),
        "response_tokens": config.max_response_tokens,
        "engine_tokens_per_s": engine,
        "bare_tokens_per_s": plain,
        "engine_over_bare": engine / plain,
        "engine_mfu": utilisation(flops, engine, peak),
        "bare_mfu": utilisation(flops, plain, peak),
        "response_length_mean": rollout.response_mask.sum(-1).float().mean().item(),
    }, rollout


def bare_update(
    trainer: Trainer, rollout: Rollout, rounds: int, engine_tokens_per_s: float
) -> dict[str, Any]:
    """A plain causal-LM forward+backward over `rollout`'s tokens, cut by the engine's token budget, then
    one AdamW step, on a policy built as the engine builds it (LoRA, bf16 base, checkpointing); against
    the engine's update (every part of its step after the rollout, per token of each PPO epoch)."""
    config, device, dtype = trainer.config, trainer.device, trainer.precision.dtype
    policy = load_policy(config, device, trainer.precision)
    optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=config.learning_rate)
    labels = rollout.input_ids.masked_fill(rollout.attention_mask == 0, -100)  # (B, P + R)
    rows, width = rollout.input_ids.shape

    def step() -> None:
        for part in micro_batches(rows, width, trainer.update.micro_batch_tokens):
            with autocast(device, dtype):
                output = policy(input_ids=rollout.input_ids[part],
                                attention_mask=rollout.attention_mask[part], labels=labels[part])  # fmt: skip
            output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = [timed(device, step)[0] for _ in range(rounds + 1)][1:]  # the first warms up
    tokens = int(rollout.attention_mask.sum())
    plain = tokens / statistics.median(seconds)
    flops, peak = training_flops_per_token(parameter_counts(policy)), peak_flops(device)
    # what transformers' is_activation_checkpointing reads, through the peft wrapper
    checkpointing = any(
        getattr(module, "gradient_checkpointing", False) is True for module in policy.modules()
    )
    return {
        "tokens": tokens,
        "engine_tokens_per_s": engine_tokens_per_s,
        "bare_tokens_per_s": plain,
        "engine_over_bare": engine_tokens_per_s / plain,
        "engine_mfu": utilisation(flops, engine_tokens_per_s, peak),
        "bare_mfu": utilisation(flops, plain, peak),
        "gradient_checkpointing": checkpointing,
    }


def exact_resume(model_dir: Path, device: torch.device, workload: Workload) -> dict[str, Any]:
    """4 SPPO steps (shared_lora critic: small checkpoints) straight against 2, pause, resume, 2: the
    final adapters compared tensor by tensor. On CUDA with deterministic algorithms where torch has them
    (cuBLAS's workspace set by the caller before CUDA starts); the difference is reported, not assumed."""
    if device.type == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with tempfile.TemporaryDirectory() as work:
            runs = {}
            for name, pauses in (("straight", [None]), ("resumed", [2, None])):
                config = run_config(
                    model_dir, Path(work) / name, device, "sppo", workload.resume_samples,
                    critic="shared_lora", max_steps=4, checkpoint_interval=2,
                    max_response_tokens=workload.resume_tokens,
                )  # fmt: skip
                statuses = [run_training(config, Recorder(pause)).status for pause in pauses]
                if statuses != ["paused"] * (len(pauses) - 1) + ["completed"]:
                    raise RuntimeError(f"the {name} run ended {statuses}")
                runs[name] = load_file(Path(work) / name / "final" / "adapter" / "adapter_model.safetensors")
    finally:
        torch.use_deterministic_algorithms(False)
    straight, resumed = runs["straight"], runs["resumed"]
    if straight.keys() != resumed.keys():
        raise RuntimeError("the two runs saved different adapter tensors")
    diffs = [(resumed[k].float() - straight[k].float()).abs().max().item() for k in straight]
    return {
        "steps": 4,
        "resumed_at": 2,
        "tensors": len(straight),
        "bitwise_equal": all(torch.equal(resumed[k], straight[k]) for k in straight),
        "max_abs_diff": max(diffs),
        "deterministic_algorithms": device.type == "cuda",
    }


def forced_oom(model_dir: Path, device: torch.device, workload: Workload) -> dict[str, Any]:
    """A GRPO step whose update cannot fit: the process's CUDA memory capped halfway between the
    rollout's peak and a whole step's (measured unconstrained first), with the whole minibatch in one
    micro-batch. The engine must halve micro_batch_tokens (batching.TokenBudget) and finish the step."""
    if device.type != "cuda":
        return {"skipped": "CUDA only: set_per_process_memory_fraction caps the CUDA caching allocator"}
    prompts = encode_prompts(load_tokenizer(model_dir), load_items(ensure_fixture().train_file))
    # one micro-batch holds the whole step (one minibatch): the update's peak is a single forward+backward
    budget = workload.samples * (max(len(prompt) for prompt in prompts) + workload.max_response_tokens)
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as work:
        config = run_config(
            model_dir, Path(work), device, "grpo", workload.samples, minibatch_size=workload.samples,
            micro_batch_tokens=budget, max_response_tokens=workload.max_response_tokens,
        )  # fmt: skip
        release()
        trainer = Trainer(config, recorder)
        trainer.train_step()  # warm-up, unconstrained
        torch.cuda.reset_peak_memory_stats(device)
        trainer.collect(trainer.sampler.next_batch())
        rollout_peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step()
        step_peak = torch.cuda.max_memory_allocated(device)
        if step_peak < 1.1 * rollout_peak:  # a cap the update cannot fit would stop the rollout too
            peaks = f"{step_peak / 2**20:.0f} MB, the rollout alone {rollout_peak / 2**20:.0f} MB"
            return {"skipped": f"the update needs little more than the rollout: a step {peaks}"}
        cap = (rollout_peak + step_peak) // 2
        total = torch.cuda.get_device_properties(device).total_memory
        release()
        torch.cuda.set_per_process_memory_fraction(cap / total, device)
        try:
            seconds, _ = timed(device, trainer.train_step)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        after = trainer.update.micro_batch_tokens
        del trainer
        release()
    return {
        "rollout_peak_mb": rollout_peak / 2**20,
        "step_peak_mb": step_peak / 2**20,
        "cap_mb": cap / 2**20,
        "micro_batch_tokens_before": budget,
        "micro_batch_tokens_after": after,
        "retries": sum(message.startswith("out of GPU memory") for message in recorder.warnings),
        "step_s": seconds,
        "update_needs_more_than_rollout": step_peak > rollout_peak,
        "halved_and_completed": after < budget,
    }
