"""Prompt lengths in tokens without torch: a model's chat template rendered in a sandboxed jinja2
environment, as transformers renders it, and its tokenizer.json through the `tokenizers` library.

Job creation uses this to refuse a job whose longest prompt and `max_response_tokens` cannot fit the model's
context. A model it cannot reproduce (no tokenizer.json or chat template, a template that needs
transformers' own extensions, a render that fails) gives None and is not checked here: the worker checks
every job again with transformers itself before it trains.

A file's longest prompt is computed once per (model files, file) and kept in memory: files never change
under their id, and a model folder that changes gets new modification times.
"""

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from core.storage import ArtifactStore
from jobspec.items import normalise_item

log = logging.getLogger(__name__)

TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Files whose change changes a count: the cache key holds their modification times.
_COUNTED_FROM = ("tokenizer.json", TOKENIZER_CONFIG, TEMPLATE_FILE, "special_tokens_map.json")
# What transformers passes every chat template besides the messages (its special_tokens_map).
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BATCH = 1024  # prompts rendered and tokenized together


@dataclass(frozen=True)
class LongestPrompt:
    tokens: int
    line: int  # 1-based, counting blank lines as the upload's validation does


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: unlike jinja's own tojson it does not HTML-escape; no other json.dumps option
    # (`cls`, `default`) is open to a template
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox transformers renders chat templates in (a template is code from the model's authors)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _template_source(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The default chat template; a chat_template.jinja file wins over tokenizer_config.json, as in
    transformers."""
    if (model_dir / TEMPLATE_FILE).is_file():
        return (model_dir / TEMPLATE_FILE).read_text()
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _special_tokens(model_dir: Path, tokenizer_config: dict[str, Any]) -> dict[str, str]:
    found = _read_json(model_dir / "special_tokens_map.json") | tokenizer_config
    tokens = {}
    for name in _SPECIAL_TOKENS:
        value = found.get(name)
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    if "pad_token" not in tokens and "eos_token" in tokens:  # the engine's load_tokenizer does the same
        tokens["pad_token"] = tokens["eos_token"]
    return tokens


class PromptCounter:
    """Token counts of training items' prompts: messages through the chat template with the assistant's turn
    opened (`add_generation_prompt`), tokenized without adding special tokens, as the engine encodes them."""

    def __init__(
        self, tokenizer: Tokenizer, template: jinja2.Template, special_tokens: dict[str, str]
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.special_tokens = special_tokens

    def render(self, messages: list[dict[str, Any]]) -> str:
        # transformers drops None-valued keys first (a template may print "None" for them)
        plain = [{key: value for key, value in message.items() if value is not None} for message in messages]
        return self.template.render(messages=plain, add_generation_prompt=True, **self.special_tokens)

    def count(self, texts: list[str]) -> list[int]:
        return [
            len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)
        ]

    def longest(self, lines: Iterable[bytes]) -> LongestPrompt | None:
        """The longest prompt of a JSONL file's lines (None for a file without items)."""
        longest: LongestPrompt | None = None
        numbered = ((n, raw) for n, raw in enumerate(lines, start=1) if raw.strip())
        while batch := list(islice(numbered, _BATCH)):
            # the messages as the engine templates them: content parts joined (jobspec.items)
            texts = [self.render(normalise_item(json.loads(raw))["messages"]) for _, raw in batch]
            for (number, _), tokens in zip(batch, self.count(texts), strict=True):
                if longest is None or tokens > longest.tokens:
                    longest = LongestPrompt(tokens, number)
        return longest


def load_counter(model_dir: Path) -> PromptCounter | None:
    """The counter of a model folder; None when it has no tokenizer.json or no template jinja2 compiles."""
    if not (model_dir / "tokenizer.json").is_file():
        return None
    config = _read_json(model_dir / TOKENIZER_CONFIG)
    try:
        source = _template_source(model_dir, config)
        if source is None:
            return None
        template = _environment().from_string(source)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception:  # a template or tokenizer this library cannot load: the worker checks with its own
        log.warning("prompt lengths of %s are not checked at job creation", model_dir, exc_info=True)
        return None
    # transformers tokenizes with neither truncation nor padding unless asked; a tokenizer.json may set both
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return PromptCounter(tokenizer, template, _special_tokens(model_dir, config))


def _stamp(model_dir: Path) -> tuple[int, ...]:
    paths = [model_dir / name for name in _COUNTED_FROM]
    return tuple(path.stat().st_mtime_ns if path.exists() else -1 for path in paths)


@lru_cache(maxsize=8)
def _counter(model_dir: Path, stamp: tuple[int, ...]) -> PromptCounter | None:
    return load_counter(model_dir)


@lru_cache(maxsize=256)
def _longest(model_dir: Path, stamp: tuple[int, ...], store: ArtifactStore, key: str) -> LongestPrompt | None:
    counter = _counter(model_dir, stamp)
    if counter is None:
        return None
    with store.open(key) as handle:
        try:
            return counter.longest(handle)
        except OSError:
            raise  # the store, not the template: not cached, the next job creation tries again
        except Exception:  # the template's own error (raise_exception) or one the sandbox refused
            log.warning("a prompt of %s does not render under %s's template", key, model_dir, exc_info=True)
            return None


def longest_prompt(model_dir: Path, store: ArtifactStore, key: str) -> LongestPrompt | None:
    """The longest prompt of the stored JSONL file `key` under the model in `model_dir`, in tokens; None
    when this model's prompts cannot be counted without transformers, or the file cannot be read now."""
    try:
        return _longest(model_dir, _stamp(model_dir), store, key)
    except OSError:
        log.warning("prompt lengths of %s not checked at job creation", key, exc_info=True)
        return None
