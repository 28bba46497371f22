import json
from pathlib import Path

import pytest

from worker.engine.data import PromptSampler, encode_prompts, load_items
from worker.engine.errors import DataFileError
from worker.engine.fixtures import Fixture
from worker.engine.policy import load_tokenizer


def test_sampler_resumes_exactly_and_covers_each_epoch() -> None:
    straight = PromptSampler(num_items=10, batch_size=4, seed=7)
    batches = [straight.next_batch() for _ in range(6)]
    resumed = PromptSampler(num_items=10, batch_size=4, seed=7)
    for _ in range(3):
        resumed.next_batch()
    state = json.loads(json.dumps(resumed.state_dict()))  # as stored in a checkpoint
    fresh = PromptSampler(num_items=10, batch_size=4, seed=7)
    fresh.load_state_dict(state)
    assert [fresh.next_batch() for _ in range(3)] == batches[3:]
    first_epoch = [i for batch in batches for i in batch][:10]
    assert sorted(first_epoch) == list(range(10))
    assert PromptSampler(10, 4, seed=8).next_batch() != batches[0]


def test_sampler_refuses_a_different_file_size() -> None:
    state = PromptSampler(10, 4, 0).state_dict()
    with pytest.raises(DataFileError, match="same training file"):
        PromptSampler(11, 4, 0).load_state_dict(state)


def test_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "1+1="}], "answer": "2"}\n{"answer": 1}\n')
    with pytest.raises(DataFileError, match="line 2"):
        load_items(path)


def test_prompts_use_the_chat_template(tiny: Fixture) -> None:
    tokenizer = load_tokenizer(tiny.model_dir)
    items = load_items(tiny.train_file)[:2]
    prompts = encode_prompts(tokenizer, items)
    assert prompts[0][0] == tokenizer.bos_token_id
    assert tokenizer.decode(prompts[0][1:]) == items[0]["messages"][0]["content"]


def _jsonl(path: Path, *items: object) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_content_parts_reach_the_template_as_one_string(tiny: Fixture, tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "12+"}, {"type": "text", "text": "7="}]
    path = _jsonl(
        tmp_path / "parts.jsonl", {"messages": [{"role": "user", "content": parts}], "answer": "19"}
    )
    items = load_items(path)
    assert items == [{"messages": [{"role": "user", "content": "12+7="}], "answer": "19"}]
    tokenizer = load_tokenizer(tiny.model_dir)
    plain = {"messages": [{"role": "user", "content": "12+7="}]}
    assert encode_prompts(tokenizer, items) == encode_prompts(tokenizer, [plain])


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        (
            {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]},
            "the last message is the assistant's",
        ),
        ({"messages": [{"role": "user", "content": "1+1="}], "answer": "2", "tools": []}, "'tools' is not"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0] is a 'input_audio' part",
        ),
    ],
)
def test_items_the_format_refuses_are_named_by_line(tmp_path: Path, item: object, fragment: str) -> None:
    good = {"messages": [{"role": "user", "content": "1+1="}], "answer": "2"}
    path = _jsonl(tmp_path / "bad.jsonl", good, item)
    with pytest.raises(DataFileError) as caught:
        load_items(path, "validation_file")
    assert caught.value.param == "validation_file"
    assert caught.value.message.startswith(f"line 2 of {path}: ")
    assert fragment in caught.value.message
