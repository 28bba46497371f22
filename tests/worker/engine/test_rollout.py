import pytest
import torch

from worker.engine.data import encode_prompts, load_items
from worker.engine.fixtures import Fixture
from worker.engine.policy import load_base_model, load_tokenizer
from worker.engine.rollout import GenerationInterrupted, generate, response_logprobs


def test_old_logprobs_match_the_training_forward_and_mask_stops_at_eos(tiny: Fixture) -> None:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny.model_dir)
    model = load_base_model(tiny.model_dir, torch.device("cpu"))
    prompts = encode_prompts(tokenizer, load_items(tiny.train_file)[:6])
    options = {"pad_id": tokenizer.pad_token_id, "eos_id": tokenizer.eos_token_id, "max_new_tokens": 32}
    rollout = generate(model, prompts, temperature=1.0, token_budget=100, **options)  # several chunks
    assert rollout.input_ids.shape[1] == rollout.prompt_length + rollout.response_mask.shape[1]
    logprobs, entropy = response_logprobs(
        model, rollout.input_ids, rollout.attention_mask, rollout.prompt_length, 1.0, with_entropy=True
    )
    ratio = torch.exp(logprobs * rollout.response_mask - rollout.old_logprobs)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    assert entropy is not None and entropy.shape == logprobs.shape
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
