"""Atomic checkpoints: written into a temporary directory, then renamed into place.

Layout of `<output_dir>/checkpoints/step-000010/`:
  adapter/       the policy's LoRA adapter in peft format (adapter_model.safetensors + adapter_config.json),
                 or model/ with the full weights when the policy is fully fine-tuned
  critic.pt      the critic's trainable state (None without a critic)
  state.pt       optimizer and scheduler states, RNG states, sampler position, trainer counters
  metrics.json   the step's metrics (and evaluation scores, if any)
A crash mid-save leaves only a `.tmp-*` directory, which is ignored and removed; the previous checkpoint
stays intact. Pruning keeps the last K checkpoints plus the best one by validation score, and the run's
model (`<output_dir>/final/`) is a copy of a checkpoint's policy when model_selection picks an earlier step.

State files are read with `torch.load(weights_only=True)`: tensors and plain containers only, so a checkpoint
directory someone tampered with cannot run code when a job resumes from it (a pickled object is refused).

`crash_point(name)` is a fault-injection hook for the kill tests (tests/chaos/): when `SPPO_CRASH_AT` names
the point (`name` or `name@step`), the process dies there with `os._exit`, as a SIGKILL would leave it.
"""

import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from jobspec.warmstart import ADAPTER_WEIGHTS
from worker.engine.errors import CheckpointError
from worker.engine.policy import POLICY_ADAPTER
from worker.engine.sharding import is_sharded, load_weights, tied_names

logger = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")  # a complete checkpoint (staging folders start with .tmp-)
# the trainer's log of every step's metrics, cut back to the checkpoint on resume
METRICS_FILE = "metrics.jsonl"
CRASH_AT_ENV = "SPPO_CRASH_AT"
CRASH_EXIT_CODE = 137  # what a SIGKILLed process reports
ADAPTER_DIR = "adapter"  # a checkpoint's LoRA policy, in peft format


def crash_point(name: str, step: int) -> None:
    """Die here when `SPPO_CRASH_AT` is `name` or `name@step` (fault injection; unset in production)."""
    wanted = os.environ.get(CRASH_AT_ENV)
    if wanted in (name, f"{name}@{step}"):
        logger.warning("fault injection: dying at %s (step %d)", name, step)
        os._exit(CRASH_EXIT_CODE)


def rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # plain values, not an ndarray: `torch.load(weights_only=True)` reads tensors and builtins only
        "numpy": (kind, [int(k) for k in keys], int(position), int(has_gauss), float(cached_gaussian)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_policy(policy: nn.Module, directory: Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """The policy in a format `from_pretrained` reads: a peft adapter, or the full model. A sharded
    policy passes its gathered `weights` (sharding.gather_weights): its parameters are only shards."""
    if isinstance(policy, PeftModel):
        policy.save_pretrained(str(directory / ADAPTER_DIR), selected_adapters=[POLICY_ADAPTER])
        return directory / ADAPTER_DIR
    policy.save_pretrained(directory / "model", state_dict=weights)  # type: ignore[operator]
    return directory / "model"


def copy_policy(checkpoint: Path, directory: Path) -> Path:
    """A checkpoint's policy (adapter/ or model/) copied into `directory`, replacing an earlier copy: the
    run's model when it is an earlier step's. A copy, not a link, so deleting the fine-tuned model leaves
    the checkpoint whole, and pruning never touches it."""
    for name in (ADAPTER_DIR, "model"):
        source = checkpoint / name
        if source.is_dir():
            target = directory / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            return target
    raise CheckpointError(f"the checkpoint {checkpoint} holds no policy weights")


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return checkpoints_dir(output_dir) / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(
    output_dir: Path,
    step: int,
    policy: nn.Module,
    critic_state: dict[str, Any] | None,
    state: dict[str, Any],
    metrics: dict[str, float],
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """`weights`: a sharded policy's gathered full weights (see save_policy)."""
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(output_dir, step)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    save_policy(policy, staging, weights)
    torch.save(critic_state, staging / "critic.pt")
    torch.save({**state, "step": step}, staging / "state.pt")
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    crash_point("checkpoint.staged", step)
    if target.exists():  # re-saving a step (pause right after a periodic save): replace it
        shutil.rmtree(target)
    staging.rename(target)
    crash_point("checkpoint.renamed", step)
    logger.info("checkpoint written: %s", target)
    return target


def load_checkpoint(path: Path, policy: nn.Module) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Restore the policy's trainable weights in place; return (critic state, trainer state)."""
    try:
        if isinstance(policy, PeftModel):
            weights = load_file(str(path / ADAPTER_DIR / ADAPTER_WEIGHTS))
            set_peft_model_state_dict(policy, weights, adapter_name=POLICY_ADAPTER)
        elif is_sharded(policy):  # rank 0 reads the weights, every rank keeps its shard
            main = dist.get_rank() == 0
            keys = load_weights(policy, model_weights(path / "model") if main else {})
            if main:
                _check_keys(keys, policy, path)
        else:
            _check_keys(policy.load_state_dict(model_weights(path / "model"), strict=False), policy, path)
        # on the CPU and memory-mapped: the ranks of a run share one copy in the page cache, and a GPU
        # checkpoint resumes on another device layout
        critic_state = torch.load(path / "critic.pt", weights_only=True, map_location="cpu", mmap=True)
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu", mmap=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: never run a checkpoint's code
        raise CheckpointError(f"cannot resume from {path}: it holds objects other than tensors") from exc
    except (OSError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}") from exc
    return critic_state, state


def model_weights(directory: Path) -> dict[str, torch.Tensor]:
    """A save_pretrained folder's weights: model.safetensors, or every shard its index names."""
    index = directory / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(directory / "model.safetensors"))
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {name: tensor for file in files for name, tensor in load_file(str(directory / file)).items()}


def _check_keys(keys: Any, policy: nn.Module, path: Path) -> None:
    """Loading weights must set every parameter (a tied head comes with its embeddings) and nothing else:
    a checkpoint of another model would otherwise resume from the base weights without a word."""
    missing = set(keys.missing_keys) - tied_names(policy)
    if missing or keys.unexpected_keys:
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit the model (missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(keys.unexpected_keys)[:3]})"
        )


def step_metrics(output_dir: Path, upto: int) -> dict[int, dict[str, float]]:
    """The metrics of steps 1..`upto` from the run's metrics log: what a resumed run reports as done."""
    path = output_dir / METRICS_FILE
    if not path.exists():
        return {}
    found: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        step = int(record.pop("step"))
        if step <= upto:
            found[step] = {name: float(value) for name, value in record.items()}
    return found


def remove_incomplete(output_dir: Path) -> None:
    """Staging directories left by a crash mid-save."""
    root = checkpoints_dir(output_dir)
    if root.exists():
        for leftover in root.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def prune(output_dir: Path, keep_last: int, best_step: int | None) -> None:
    """Keep the last `keep_last` checkpoints and the best one (`best_step`, the run's model with
    model_selection best)."""
    found = list_checkpoints(output_dir)
    keep = {step for step, _ in found[-keep_last:]}
    if best_step is not None:
        keep.add(best_step)
    for step, path in found:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)
