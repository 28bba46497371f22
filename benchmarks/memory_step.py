"""One configuration of benchmarks/memory.py, measured in a process of its own: a fresh trainer, one
untracked warm-up step (the optimizers' moments exist from then on, as in every later step), then one
step under TensorMemory with the peaks of its phases recorded apart: the rollout, the forwards and
backwards before each optimizer step (critic fit, PPO update), the optimizer steps themselves.
"""

import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from benchmarks.gpu_checks import run_config
from benchmarks.tensor_memory import TensorMemory
from worker.engine.callbacks import TrainerCallbacks
from worker.engine.memory import peak_memory_mb, reset_peak_memory
from worker.engine.rollout import Rollout
from worker.engine.trainer import Trainer


def storage_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """The bytes of the distinct storages behind `tensors`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if optimizer is None:
        return []
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def static_parts(trainer: Trainer) -> dict[str, Any]:
    """Parameter counts and the bytes of weights and optimizer state, read off the trainer's objects."""
    policy = list(trainer.policy.parameters())
    actor = {id(p) for p in trainer.opt.actor_params}
    critic_own = [] if trainer.critic is None else list(trainer.critic.parameters())
    shared = {id(p) for p in policy}
    critic = [p for p in critic_own if id(p) not in shared]  # a shared_lora critic's base is the policy's
    critic_trained = trainer.opt.critic_params
    return {
        "policy_frozen_params": sum(p.numel() for p in policy if not p.requires_grad),
        "policy_trained_params": sum(p.numel() for p in policy if id(p) in actor),
        "critic_params": sum(p.numel() for p in critic)
        + sum(p.numel() for p in critic_trained if id(p) in shared),
        "critic_trained_params": sum(p.numel() for p in critic_trained),
        "policy_weight_bytes": storage_bytes(policy),
        "critic_weight_bytes": storage_bytes(critic) if critic else 0,
        "optimizer_state_bytes": storage_bytes(
            optimizer_tensors(trainer.opt.actor) + optimizer_tensors(trainer.opt.critic)
        ),
    }


def measure(model_dir: Path, setup: dict[str, Any]) -> dict[str, Any]:
    """`setup`: algorithm, samples, max_response_tokens and RunConfig overrides (dtype, use_lora, ...)."""
    overrides = {k: v for k, v in setup.items() if k not in ("name", "algorithm", "samples")}
    samples = setup["samples"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        # one minibatch, one micro-batch: the update's activations are those of every row of the step
        config = run_config(model_dir, Path(work), torch.device("cpu"), setup["algorithm"], samples,
                            minibatch_size=samples, **overrides)  # fmt: skip
        reset_peak_memory()
        trainer = Trainer(config, TrainerCallbacks())
        trainer.train_step()
        gc.collect()
        shape: dict[str, int] = {}
        reset_peak_memory()
        with TensorMemory() as memory:
            before = memory.current
            trainer.collect = ended(memory, shape, trainer.collect)  # type: ignore[method-assign, assignment]
            # every optimizer step (critic fit, policy update) splits the update: the forwards and
            # backwards before it (activations, gradients) and the step itself (AdamW's temporaries)
            hooks = [
                register_optimizer_step_pre_hook(lambda *_: memory.end_phase("forward_backward")),
                register_optimizer_step_post_hook(lambda *_: memory.end_phase("optimizer_step")),
            ]
            trainer.train_step()
            for hook in hooks:
                hook.remove()
            memory.end_phase("after_steps")
        parts = static_parts(trainer)
    return {
        **setup,
        **shape,
        **parts,
        "step_start_bytes": before,
        "rollout_peak_bytes": memory.phases["rollout"],
        "update_peak_bytes": max(v for k, v in memory.phases.items() if k != "rollout"),
        "forward_backward_peak_bytes": memory.phases["forward_backward"],
        "optimizer_step_peak_bytes": memory.phases["optimizer_step"],
        "step_peak_bytes": max(memory.phases.values()),
        "vmhwm_step_mb": peak_memory_mb(torch.device("cpu")),
        "seconds": time.perf_counter() - started,
    }


def ended(
    memory: TensorMemory, shape: dict[str, int], collect: Callable[[list[int]], Any]
) -> Callable[[list[int]], Any]:
    """`collect` that closes the rollout phase when it returns and notes the rollout's token grid."""

    def wrapped(indices: list[int]) -> Any:
        result = collect(indices)
        rollout: Rollout = result[0]
        rows, width = rollout.input_ids.shape
        shape.update(rows=rows, width=width, tokens=rows * width,
                     response_width=rollout.response_mask.shape[1])  # fmt: skip
        memory.end_phase("rollout")
        return result

    return wrapped
