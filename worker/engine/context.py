"""The context check of a run with the model's own tokenizer and chat template: the longest prompt of the
training and validation items plus `max_response_tokens` must fit the model's context.

The rule and its messages are jobspec.context's, which the API applies at job creation too. The trainer
checks after loading its data (so `sppo train` refuses such a run before loading the model) and the worker
before its preflight generates a single token.
"""

from typing import Any

from transformers import PreTrainedTokenizerBase

from jobspec.context import fits, prompt_overflow, read_context_length, response_overflow
from worker.engine.config import RunConfig
from worker.engine.data import encode_prompts, load_items, load_validation_items, read_items
from worker.engine.errors import ConfigError, DataFileError
from worker.engine.policy import load_tokenizer


def check_context(
    config: RunConfig,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    validation_items: list[dict[str, Any]],
) -> None:
    """ConfigError naming max_response_tokens when the budget, or the longest prompt and the budget, do not
    fit; DataFileError naming the file when a prompt fills the context alone. `prompts` are the encoded
    training items, `validation_items` the validation items the run evaluates on."""
    context = read_context_length(config.model)
    if context is None:
        return
    overflow = response_overflow(config.max_response_tokens, context)
    if overflow is not None:
        raise ConfigError(overflow.message, "max_response_tokens")
    _check_file(prompts, config.train_file, "training_file", config.max_response_tokens, context)
    if validation_items and config.validation_file:
        validation = encode_prompts(tokenizer, validation_items)
        _check_file(
            validation, config.validation_file, "validation_file", config.max_response_tokens, context
        )


def _check_file(prompts: list[list[int]], path: str, param: str, budget: int, context: int) -> None:
    index = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    tokens = len(prompts[index])
    if fits(prompt_tokens=tokens, max_response_tokens=budget, context=context):
        return
    line = [number for number, _ in read_items(path, param)][index]
    where = f"on line {line} of the {param.replace('_', ' ')}"
    overflow = prompt_overflow(prompt_tokens=tokens, max_response_tokens=budget, context=context, where=where)
    if overflow is None:
        return
    if overflow.change == "prompt":
        raise DataFileError(overflow.message, param)
    raise ConfigError(overflow.message, "max_response_tokens")


def check_run_context(config: RunConfig) -> None:
    """`check_context` on a run's files as the trainer will load them, before anything else runs."""
    tokenizer = load_tokenizer(config.model)
    prompts = encode_prompts(tokenizer, load_items(config.train_file))
    validation = load_validation_items(config.validation_file, config.eval_max_items)
    check_context(config, tokenizer, prompts, validation)
