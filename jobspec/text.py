"""Text every layer accepts: PostgreSQL refuses NUL in text and JSON, and a lone surrogate cannot be
encoded for the tokenizer or the filesystem; either would break a job long after it was accepted."""

from typing import Any


def check_text(value: str) -> str:
    """A string the DB, the tokenizer and the filesystem all accept: no NUL, no lone surrogate."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it contains a lone surrogate)") from None
    return value


def check_texts(value: Any) -> Any:
    """The value, unchanged, when every string in it (dict keys included, at any depth) passes check_text."""
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, dict):
        for key, item in value.items():
            check_texts(key)
            check_texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            check_texts(item)
    return value
