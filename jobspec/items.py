"""The training-item format, written once: the API checks every uploaded line with it and the engine reads
every item through it, so the upload check, training, evaluations and the preflight see the same messages.

An item is a JSON object whose `messages` is a non-empty list of `{"role", "content"}` objects ending with
a turn the model answers (not the assistant's own). `content` is a string or OpenAI's content-part array;
its text parts are joined, in order, into one string. Any other field (`answer`, `meta`, ...) is free for
graders to read as `{{item.<field>}}`.
"""

from typing import Any

UNSUPPORTED_FIELDS = ("tools",)
"""OpenAI item fields this service refuses rather than silently ignoring."""


class ItemError(ValueError):
    """What is wrong with one item; the caller says where (the line)."""


def normalise_item(item: Any) -> dict[str, Any]:
    """The item with each message's content as one string; ItemError naming the first problem."""
    if not isinstance(item, dict):
        raise ItemError(f"expected a JSON object, got {type(item).__name__}")
    for name in UNSUPPORTED_FIELDS:
        if name in item:
            raise ItemError(
                f"'{name}' is not supported yet: the model is trained on the messages alone, and tool "
                f"definitions would be silently dropped; remove '{name}'"
            )
    messages = item.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ItemError("'messages' must be a non-empty list")
    normalised = [_message(message, index) for index, message in enumerate(messages)]
    if normalised[-1]["role"] == "assistant":
        raise ItemError(_ends_with_assistant(item))
    return {**item, "messages": normalised}


def _message(message: Any, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ItemError(f"{where} must be an object with 'role' and 'content'")
    if not isinstance(message.get("role"), str) or not message["role"]:
        raise ItemError(f"{where}.role must be a non-empty string")
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            _text_part(part, f"{where}.content[{number}]") for number, part in enumerate(content)
        )
    elif not isinstance(content, str):
        raise ItemError(
            f'{where}.content must be a string or a list of {{"type": "text", "text": ...}} parts'
        )
    return {**message, "content": content}


def _text_part(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return str(part["text"])
    if isinstance(kind, str) and kind != "text":
        raise ItemError(f"{where} is a '{kind}' part; only text parts are supported")
    raise ItemError(f'{where} must be a text part: {{"type": "text", "text": "..."}}')


def _ends_with_assistant(item: dict[str, Any]) -> str:
    message = (
        "the last message is the assistant's, so its answer would be part of the prompt; an item ends "
        "with the turn the model answers, and the expected answer goes in a field the grader reads"
    )
    if set(item) == {"messages"}:  # chat data for supervised fine-tuning, reused as it is
        message += (
            ". This looks like supervised fine-tuning data: drop the last (assistant) message and add the "
            'expected answer as a field, e.g. `answer`: {"messages": [...], "answer": "..."}, graded '
            "against {{item.answer}}"
        )
    return message
