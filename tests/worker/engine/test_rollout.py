import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from peft.tuners.lora import LoraLayer

from worker.engine import rollout as rollout_module
from worker.engine.data import encode_prompts, load_items
from worker.engine.fixtures import Fixture
from worker.engine.policy import load_base_model, load_policy, load_tokenizer
from worker.engine.rollout import GenerationInterrupted, generate, response_logprobs, rollout_from_tokens

from .conftest import tiny_config


@pytest.mark.parametrize("chunk_rows", [None, 2], ids=["one-chunk", "chunks-of-2-rows"])
def test_response_logprobs_and_their_gradient_equal_log_softmax(
    chunk_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunked gather − logsumexp path gives log_softmax's values and gradients, entropy included;
    in chunks of 2 of the 15 (row, position) pairs, 8 chunks whose boundaries cut through rows."""
    if chunk_rows is not None:
        monkeypatch.setattr(rollout_module, "LOGPROB_CHUNK_ELEMENTS", chunk_rows * 5)  # V = 5
        assert len(rollout_module._chunks(torch.empty(15, 5))) == 8

    class Logits(torch.nn.Module):
        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__()
            self.logits = torch.nn.Parameter(logits)

        def forward(self, logits_to_keep: torch.Tensor, **kwargs: Any) -> Any:
            return type("Output", (), {"logits": self.logits[:, logits_to_keep]})

    torch.manual_seed(0)
    model = Logits(torch.randn(3, 9, 5, dtype=torch.float64))  # (B, P + R, V) with P = 4, R = 5
    input_ids = torch.randint(0, 5, (3, 9))
    mask = torch.ones_like(input_ids)
    logprobs, entropy = response_logprobs(model, input_ids, mask, 4, 0.7, with_entropy=True)
    assert entropy is not None and not entropy.requires_grad
    (logprobs * torch.arange(15.0).view(3, 5)).sum().backward()  # type: ignore[no-untyped-call]
    ours = model.logits.grad
    model.logits.grad = None
    reference = torch.log_softmax(model.logits[:, 3:8] / 0.7, dim=-1)  # (B, R, V)
    expected = reference.gather(-1, input_ids[:, 4:, None]).squeeze(-1)
    (expected * torch.arange(15.0).view(3, 5)).sum().backward()  # type: ignore[no-untyped-call]
    torch.testing.assert_close(logprobs, expected.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, model.logits.grad, rtol=1e-6, atol=1e-6)  # float32 backward
    expected_entropy = -(reference.exp() * reference).sum(-1)
    torch.testing.assert_close(entropy, expected_entropy.detach().float(), rtol=0, atol=1e-6)


def test_sampling_ignores_the_models_generation_config(tiny: Fixture, tmp_path: Path) -> None:
    """generate's own sampling distribution (its processed scores) is the one response_logprobs scores,
    even when generation_config.json asks for penalties and truncation (as instruct models ship)."""
    torch.manual_seed(0)
    model = load_base_model(tiny.model_dir, torch.device("cpu"))
    config = model.generation_config
    config.do_sample, config.repetition_penalty, config.min_p, config.typical_p = True, 1.3, 0.2, 0.5
    config.no_repeat_ngram_size, config.top_k, config.suppress_tokens = 2, 3, [5]
    model.save_pretrained(tmp_path)
    model = load_base_model(tmp_path, torch.device("cpu"))
    assert model.generation_config.repetition_penalty == 1.3
    tokenizer = load_tokenizer(tiny.model_dir)
    prompts = encode_prompts(tokenizer, load_items(tiny.train_file)[:4])
    scores: list[torch.Tensor] = []
    real_generate = model.generate

    @functools.wraps(real_generate)
    def generate_with_scores(**kwargs: Any) -> torch.Tensor:
        output = real_generate(**kwargs, output_scores=True, return_dict_in_generate=True)
        scores.extend(output.scores)  # type: ignore[union-attr]
        return output.sequences  # type: ignore[union-attr, no-any-return]

    model.generate = generate_with_scores  # type: ignore[method-assign]
    temperature = 0.8
    rollout = generate(
        model,
        prompts,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        max_new_tokens=24,
        temperature=temperature,
    )
    sampled = torch.log_softmax(torch.stack(scores, dim=1), dim=-1)  # (B, R, V): what was sampled from
    responses = rollout.responses[:, : sampled.shape[1]]
    sampled_logprobs = sampled.gather(-1, responses.unsqueeze(-1)).squeeze(-1)  # (B, R)
    logprobs, _ = response_logprobs(
        model, rollout.input_ids, rollout.attention_mask, rollout.prompt_length, temperature
    )
    mask = rollout.response_mask[:, : sampled.shape[1]].bool()
    torch.testing.assert_close(
        logprobs[:, : sampled.shape[1]][mask], sampled_logprobs[mask], rtol=0, atol=1e-4
    )


def test_logprobs_keep_no_float_copy_of_the_logits_for_backward(tiny: Fixture) -> None:
    """On a long response the graph holds the (B, R, V) logits once: no log-softmax, softmax or
    entropy copy (the memory the paper's long-CoT claim rests on)."""
    model = load_base_model(tiny.model_dir, torch.device("cpu"))
    vocab = model.config.vocab_size
    batch, prompt_length, response_length = 2, 8, 512
    input_ids = torch.randint(3, vocab, (batch, prompt_length + response_length))
    mask = torch.ones_like(input_ids)
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logprobs, entropy = response_logprobs(model, input_ids, mask, prompt_length, 0.6, with_entropy=True)
    assert entropy is not None and logprobs.requires_grad
    logits_sized = [
        t for t in saved.values() if t.shape[-1] == vocab and t.numel() >= batch * response_length * vocab
    ]
    assert len(logits_sized) == 1, [tuple(t.shape) for t in logits_sized]


def test_generate_masks_up_to_eos_and_greedy_is_deterministic(tiny: Fixture) -> None:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny.model_dir)
    model = load_base_model(tiny.model_dir, torch.device("cpu"))
    prompts = encode_prompts(tokenizer, load_items(tiny.train_file)[:6])
    options = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id, "max_new_tokens": 32}
    rollout = generate(model, prompts, temperature=1.0, token_budget=100, **options)  # several chunks
    assert rollout.input_ids.shape[1] == rollout.prompt_length + rollout.response_mask.shape[1]
    assert rollout.old_logprobs is None  # the PPO update fills them in from its own forward
    for row, mask in zip(rollout.responses, rollout.response_mask, strict=True):
        length = int(mask.sum())
        eos = (row == tokenizer.eos_token_id).nonzero()
        if len(eos):
            assert length == int(eos[0]) + 1  # up to and including the first EOS
    greedy = generate(model, prompts[:2], greedy=True, **options)
    again = generate(model, prompts[:2], greedy=True, **options)
    assert torch.equal(greedy.input_ids, again.input_ids)


def test_control_is_polled_during_generation(tiny: Fixture) -> None:
    tokenizer = load_tokenizer(tiny.model_dir)
    model = load_base_model(tiny.model_dir, torch.device("cpu"))
    prompts = encode_prompts(tokenizer, load_items(tiny.train_file)[:2])
    calls: list[int] = []

    def control() -> str:
        calls.append(1)
        return "cancel"

    with pytest.raises(GenerationInterrupted) as info:
        # eos_id=-1 never matches, so generation runs long enough to poll control()
        generate(model, prompts, pad_id=0, eos_id=-1, max_new_tokens=40, control=control)
    assert info.value.signal == "cancel"
    assert calls


def test_lora_policy_samples_from_its_merged_weights_and_keeps_the_base_exact(
    tiny: Fixture, tmp_path: Path
) -> None:
    """Generation folds the adapter into the base weights (one matmul per linear, not three), samples
    exactly the policy's distribution, and leaves every base weight bit-identical afterwards."""
    torch.manual_seed(0)
    policy = load_policy(tiny_config(tiny, tmp_path), torch.device("cpu"))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)  # a trained adapter: B = 0 would make the merge a no-op
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    tokenizer = load_tokenizer(tiny.model_dir)
    prompts = encode_prompts(tokenizer, load_items(tiny.train_file)[:8])
    seen: list[bool] = []

    def record_merged(module: torch.nn.Module, args: Any) -> None:
        seen.append(bool(module.merged))

    layer = next(m for m in policy.modules() if isinstance(m, LoraLayer))
    hook = layer.register_forward_pre_hook(record_merged)
    greedy = generate(
        policy,
        prompts,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        max_new_tokens=16,
        greedy=True,
    )
    hook.remove()
    assert seen and all(seen)
    assert not layer.merged
    for name, parameter in policy.named_parameters():
        assert torch.equal(parameter, before[name]), name
    position_ids = (greedy.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():  # the unmerged training forward: greedy tokens are its argmax
        logits = policy(
            input_ids=greedy.input_ids, attention_mask=greedy.attention_mask, position_ids=position_ids
        ).logits[:, greedy.prompt_length - 1 : -1]
    mask = greedy.response_mask.bool()
    agree = (logits.argmax(-1)[mask] == greedy.responses[mask]).float().mean()
    assert agree > 0.99  # W + s·B·A and W·x + s·B·A·x differ only by rounding (near-ties may flip)


def test_a_rollout_from_tokens_pads_and_masks_like_generate() -> None:
    rollout = rollout_from_tokens(
        [[5, 6], [7]], [[3, 2, 9], [4]], pad_id=0, eos_id=2, device=torch.device("cpu"),
        logprobs=[[-0.5, -0.25, -1.0], [-2.0]],
    )  # fmt: skip
    assert rollout.prompt_length == 2
    assert rollout.input_ids.tolist() == [[5, 6, 3, 2, 9], [0, 7, 4, 0, 0]]
    assert rollout.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 0, 0]]
    assert rollout.response_mask.tolist() == [[1, 1, 0], [1, 0, 0]]  # up to EOS; a cut response: its tokens
    assert rollout.sampler_logprobs is not None
    assert rollout.sampler_logprobs.tolist() == [[-0.5, -0.25, 0.0], [-2.0, 0.0, 0.0]]


def test_a_rollout_from_tokens_never_counts_padding_as_eos_when_pad_is_eos() -> None:
    rollout = rollout_from_tokens([[5], [6]], [[3], [4, 2]], pad_id=2, eos_id=2, device=torch.device("cpu"))
    assert rollout.response_mask.tolist() == [[1, 0], [1, 1]]
    assert rollout.sampler_logprobs is None
