"""Sharded full fine-tuning (sharding.py): the optimizer-state layouts a checkpoint converts between, and
generation with a sharded model."""

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import free_port
from worker.engine.data import encode_prompts, load_items
from worker.engine.fixtures import Fixture
from worker.engine.launch import exit_rank
from worker.engine.policy import load_base_model, load_tokenizer
from worker.engine.rollout import generate, response_logprobs
from worker.engine.sharding import _by_index, _by_name, _parameter_names, shard_model

# 48 tokens per generate call: 2 rows of 10 + 12 tokens, 1 row of 13 + 12
GREEDY = {"pad_id": 0, "eos_id": 2, "max_new_tokens": 12, "greedy": True, "token_budget": 48}
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


def _generate_on_rank(rank: int, port: int, model_dir: str, prompts: list[list[int]], out: str) -> None:
    """One of 2 gloo ranks: shard the model, greedily complete this rank's prompts, save the tokens."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a rank out of step fails, not hangs
    model = load_base_model(model_dir, torch.device("cpu"))
    shard_model(model)
    mine = prompts[:2] if rank == 0 else prompts[2:]
    # rank 1's longer prompts fit fewer rows in the budget (1 against 2): the chunks must still be as many
    rollout = generate(model, mine, **GREEDY)
    torch.save(rollout.input_ids, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
    exit_rank()


def test_a_sharded_model_generates_what_the_whole_model_does(tiny: Fixture, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(tiny.model_dir)
    items = load_items(tiny.validation_file)
    prompts = encode_prompts(tokenizer, items[:2]) + [
        p + p[-3:] for p in encode_prompts(tokenizer, items[2:4])
    ]
    port = free_port()
    mp.spawn(_generate_on_rank, args=(port, str(tiny.model_dir), prompts, str(tmp_path)), nprocs=2, join=True)

    whole = load_base_model(tiny.model_dir, torch.device("cpu"))
    for rank, mine in ((0, prompts[:2]), (1, prompts[2:])):
        expected = generate(whole, mine, **GREEDY)
        assert torch.load(tmp_path / f"rank{rank}.pt").equal(expected.input_ids), f"rank {rank}"


def _bf16_backward_on_rank(rank: int, port: int, model_dir: str, out: str) -> None:
    """One of 2 gloo ranks: shard the model for bf16, one forward and backward; save the dtypes seen."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    model = load_base_model(model_dir, torch.device("cpu"))
    shard_model(model, torch.bfloat16)
    seen: dict[str, str] = {}
    norm = model.get_decoder().norm  # type: ignore[operator]
    norm.register_forward_pre_hook(lambda module, _: seen.update(gathered=str(module.weight.dtype)))
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    logprobs, _ = response_logprobs(model, input_ids, torch.ones_like(input_ids), 2, 1.0,
                                    compute_dtype=torch.bfloat16)  # fmt: skip
    logprobs.sum().backward()  # type: ignore[no-untyped-call]
    weight = norm.weight
    seen.update(shard=str(weight.dtype), gradient=str(weight.grad.dtype), logprobs=str(logprobs.dtype))
    torch.save(seen, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
    exit_rank()


def test_a_bf16_sharded_model_computes_in_bf16_and_keeps_float32_shards(
    tiny: Fixture, tmp_path: Path
) -> None:
    """FSDP2's mixed precision: float32 shards (the optimizer's master weights) gathered as bf16 for the
    forward, gradients reduced into float32 shards, log-probs float32."""
    mp.spawn(_bf16_backward_on_rank, args=(free_port(), str(tiny.model_dir), str(tmp_path)), nprocs=2,
             join=True)  # fmt: skip
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt") == {
            "gathered": "torch.bfloat16", "shard": "torch.float32", "gradient": "torch.float32",
            "logprobs": "torch.float32",
        }  # fmt: skip


def test_optimizer_state_is_numbered_in_the_optimizers_order_across_groups() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 1, bias=False))
    first, second = model[0].weight, model[1].weight
    optimizer = torch.optim.AdamW([{"params": [second]}, {"params": [first], "weight_decay": 0.0}], lr=1e-3)
    assert _parameter_names(model, optimizer) == ["1.weight", "0.weight"]
