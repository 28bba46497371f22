"""Health checks of a step: an unchanged trainable tensor is a warning only when it stays put two steps."""

import torch

from worker.engine.health import HealthMonitor

ADVANTAGES = torch.tensor([[0.5, 0.5], [-0.5, 0.0]])
MASK = torch.ones(2, 2)


def _step(monitor: HealthMonitor, moved: list[bool]) -> list[str]:
    before = torch.zeros(len(moved), 2, dtype=torch.float64)
    after = before + torch.tensor(moved, dtype=torch.float64).unsqueeze(-1)
    metrics, warnings = monitor.after_step(ADVANTAGES, MASK, 1.0, 0.5, before, after)
    assert metrics["health/unchanged_param_frac"] == torch.tensor(moved.count(False) / len(moved)).item()
    return [message for message, _ in warnings]


def test_a_tensor_unchanged_in_one_step_is_not_a_warning_two_steps_running_is() -> None:
    monitor = HealthMonitor(entropy_floor=0.01)
    assert _step(monitor, [True, False, False]) == []  # LoRA A at step 1: its B was still zero
    assert _step(monitor, [True, True, False]) == ["1 trainable tensors did not change in the last two steps"]
    assert _step(monitor, [True, True, True]) == []


def test_the_last_step_survives_a_checkpoint() -> None:
    monitor = HealthMonitor(entropy_floor=0.01)
    _step(monitor, [False, True])
    resumed = HealthMonitor(entropy_floor=0.01)
    resumed.load_state_dict(monitor.state_dict())
    assert _step(resumed, [False, True]) == ["1 trainable tensors did not change in the last two steps"]
    older = {k: v for k, v in monitor.state_dict().items() if k != "unchanged_last_step"}
    resumed.load_state_dict(older)  # a checkpoint from before the field: no warning on the first step
    assert _step(resumed, [False, True]) == []
