"""Atomic checkpoints: written into a temporary directory, then renamed into place.

Layout of `<output_dir>/checkpoints/step-000010/`:
  adapter/       the policy's LoRA adapter in peft format (adapter_model.safetensors + adapter_config.json),
                 or model/ with the full weights when the policy is fully fine-tuned
  critic.pt      the critic's trainable state (None without a critic)
  state.pt       optimizer and scheduler states, RNG states, sampler position, trainer counters
  metrics.json   the step's metrics (and evaluation scores, if any)
A crash mid-save leaves only a `.tmp-*` directory, which is ignored and removed; the previous checkpoint
stays intact. Pruning keeps the last K checkpoints plus the best one by validation score.
"""

import json
import logging
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from worker.engine.errors import CheckpointError
from worker.engine.policy import POLICY_ADAPTER

logger = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_policy(policy: nn.Module, directory: Path) -> Path:
    """The policy in a format `from_pretrained` reads: a peft adapter, or the full model."""
    if isinstance(policy, PeftModel):
        policy.save_pretrained(str(directory / "adapter"), selected_adapters=[POLICY_ADAPTER])
        return directory / "adapter"
    policy.save_pretrained(directory / "model")  # type: ignore[operator]
    return directory / "model"


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(
    output_dir: Path,
    step: int,
    policy: nn.Module,
    critic_state: dict[str, Any] | None,
    state: dict[str, Any],
    metrics: dict[str, float],
) -> Path:
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    save_policy(policy, staging)
    torch.save(critic_state, staging / "critic.pt")
    torch.save({**state, "step": step}, staging / "state.pt")
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if target.exists():  # re-saving a step (pause right after a periodic save): replace it
        shutil.rmtree(target)
    staging.rename(target)
    logger.info("checkpoint written: %s", target)
    return target


def load_checkpoint(path: Path, policy: nn.Module) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Restore the policy's trainable weights in place; return (critic state, trainer state)."""
    try:
        if isinstance(policy, PeftModel):
            weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
            set_peft_model_state_dict(policy, weights, adapter_name=POLICY_ADAPTER)
        else:
            policy.load_state_dict(load_file(str(path / "model" / "model.safetensors")), strict=False)
        critic_state = torch.load(path / "critic.pt", weights_only=False)
        state = torch.load(path / "state.pt", weights_only=False)
    except (OSError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from exc
    return critic_state, state


def remove_incomplete(output_dir: Path) -> None:
    """Staging directories left by a crash mid-save."""
    root = checkpoints_dir(output_dir)
    if root.exists():
        for leftover in root.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def prune(output_dir: Path, keep_last: int, best_step: int | None) -> None:
    """Keep the last `keep_last` checkpoints and the best one."""
    found = list_checkpoints(output_dir)
    keep = {step for step, _ in found[-keep_last:]}
    if best_step is not None:
        keep.add(best_step)
    for step, path in found:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)
