"""The optimizer-state layouts a sharded checkpoint converts between (sharding.py)."""

import torch

from worker.engine.sharding import _by_index, _by_name

NAMES = ["model.embed_tokens.weight", "model.norm.weight"]


def test_name_keyed_state_becomes_the_optimizers_own_layout_and_back() -> None:
    step, moment = torch.tensor(3.0), torch.tensor([0.5, -0.25])
    by_name = {
        "state": {"model.norm.weight": {"step": step, "exp_avg": moment}},
        "param_groups": [{"lr": 3e-5, "params": ["model.embed_tokens.weight", "model.norm.weight"]}],
    }
    by_index = _by_index(by_name, NAMES)
    assert by_index == {
        "state": {1: {"step": step, "exp_avg": moment}},
        "param_groups": [{"lr": 3e-5, "params": [0, 1]}],
    }
    assert _by_name(by_index, NAMES) == by_name


def test_the_index_layout_is_what_a_single_process_optimizer_saves() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW(params, lr=3e-5)
    params[0].grad, params[1].grad = torch.ones(2), torch.ones(1)
    optimizer.step()
    saved = optimizer.state_dict()
    assert _by_index(_by_name(saved, NAMES), NAMES) == saved
