"""The training-item format: content-part arrays joined, assistant-last items and `tools` refused."""

from typing import Any

import pytest

from jobspec.items import ItemError, normalise_item


def test_text_parts_are_joined_in_order_and_everything_else_is_kept() -> None:
    item = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "name": "ann",
                "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+3?"}],
            },
        ],
        "answer": "5",
        "meta": {"level": 1},
    }
    assert normalise_item(item) == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "name": "ann", "content": "What is 2+3?"},
        ],
        "answer": "5",
        "meta": {"level": 1},
    }
    assert item["messages"][1]["content"][0] == {"type": "text", "text": "What is "}  # input untouched


def test_string_content_passes_unchanged_and_an_empty_part_list_is_empty_text() -> None:
    item = {"messages": [{"role": "user", "content": "1+1?"}], "answer": "2"}
    assert normalise_item(item) == item
    assert normalise_item({"messages": [{"role": "user", "content": []}]})["messages"][0]["content"] == ""


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "file"])
def test_other_part_types_are_refused_by_name(kind: str) -> None:
    content = [{"type": "text", "text": "What is this?"}, {"type": kind, kind: {}}]
    with pytest.raises(ItemError) as caught:
        normalise_item({"messages": [{"role": "user", "content": content}], "answer": "a cat"})
    assert str(caught.value) == f"messages[0].content[1] is a '{kind}' part; only text parts are supported"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([], "expected a JSON object, got list"),
        ({"prompt": "x"}, "'messages' must be a non-empty list"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": ["hi"]}, "messages[0] must be an object with 'role' and 'content'"),
        ({"messages": [{"role": "", "content": "hi"}]}, "messages[0].role must be a non-empty string"),
        (
            {"messages": [{"role": "user", "content": None}]},
            'messages[0].content must be a string or a list of {"type": "text", "text": ...} parts',
        ),
        (
            {"messages": [{"role": "user", "content": ["hi"]}]},
            'messages[0].content[0] must be a text part: {"type": "text", "text": "..."}',
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]},
            'messages[0].content[0] must be a text part: {"type": "text", "text": "..."}',
        ),
    ],
)
def test_malformed_items_name_the_problem(item: Any, message: str) -> None:
    with pytest.raises(ItemError) as caught:
        normalise_item(item)
    assert str(caught.value) == message


def test_tools_are_refused_not_ignored() -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    with pytest.raises(ItemError, match=r"^'tools' is not supported yet: .* remove 'tools'$"):
        normalise_item({"messages": [{"role": "user", "content": "2+3?"}], "answer": "5", "tools": tools})


SFT_HINT = "This looks like supervised fine-tuning data"


def test_an_item_ending_with_the_assistant_is_refused_with_a_hint_for_sft_data() -> None:
    sft = {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]}
    with pytest.raises(ItemError) as caught:
        normalise_item(sft)
    assert str(caught.value).startswith("the last message is the assistant's, so its answer would be part")
    assert SFT_HINT in str(caught.value) and "e.g. `answer`" in str(caught.value)
    # with a field beside the messages it is RFT data with one turn too many: no SFT hint
    with pytest.raises(ItemError) as caught:
        normalise_item({**sft, "answer": "5"})
    assert SFT_HINT not in str(caught.value)
    # an assistant turn before the last user turn is a few-shot example: fine
    few_shot = {"messages": [*sft["messages"], {"role": "user", "content": "4+4?"}], "answer": "8"}
    assert normalise_item(few_shot) == few_shot
