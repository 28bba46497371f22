"""Health checks of a step: an unchanged trainable tensor is a warning only when it stays put two steps;
the fingerprint that tells whether a tensor moved."""

import torch
from torch import nn

from worker.engine.health import HealthMonitor, fingerprint

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


def _fingerprint_all_at_once(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The fingerprint as first written: a float64 copy of every tensor alive together."""
    parts = [p.detach().double() for p in parameters]
    return torch.stack([torch.stack([t.sum(), t.pow(2).sum()]) for t in parts])


def test_the_fingerprint_one_tensor_at_a_time_is_bit_identical_and_leaves_the_tensors_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 256), nn.Linear(256, 64))
    parameters = [*model.parameters(), nn.Parameter(torch.randn(300, dtype=torch.float64))]
    parameters += [nn.Parameter(torch.randn(40, 70).to(torch.bfloat16))]
    originals = [p.detach().clone() for p in parameters]
    rows = fingerprint(parameters)
    assert rows.dtype == torch.float64 and rows.shape == (len(parameters), 2)
    assert torch.equal(rows, _fingerprint_all_at_once(parameters))
    assert all(torch.equal(p, o) for p, o in zip(parameters, originals, strict=True))  # squared a copy
