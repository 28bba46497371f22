"""Training data: JSONL items -> chat-templated prompt ids, and a deterministic, resumable sampler."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from jobspec.items import ItemError, normalise_item
from worker.engine.errors import DataFileError


def read_items(path: str | Path, param: str = "training_file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, item) for each item of a JSONL file, its messages normalised (jobspec.items: text
    content parts joined); DataFileError naming the first bad line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc}", param) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = normalise_item(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataFileError(f"line {number} of {path} is not valid JSON: {exc.msg}", param) from exc
        except ItemError as exc:
            raise DataFileError(f"line {number} of {path}: {exc}", param) from exc
        yield number, item


def load_items(path: str | Path, param: str = "training_file") -> list[dict[str, Any]]:
    """Every item of a JSONL file (see read_items); DataFileError when there is none."""
    items = [item for _, item in read_items(path, param)]
    if not items:
        raise DataFileError(f"{path} holds no items", param)
    return items


def load_validation_items(path: str | Path | None, max_items: int | None) -> list[dict[str, Any]]:
    """The validation items a run evaluates on: the first `max_items` of the file (none without a file)."""
    return load_items(path, "validation_file")[:max_items] if path else []


def encode_prompts(tokenizer: PreTrainedTokenizerBase, items: list[dict[str, Any]]) -> list[list[int]]:
    """Each item's messages through the model's chat template, ready for the assistant's turn."""
    prompts: list[list[int]] = []
    for item in items:
        text = tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=False)
        # the template already holds the special tokens (BOS); adding them again would double them
        prompts.append(list(tokenizer(str(text), add_special_tokens=False)["input_ids"]))
    return prompts


@dataclass
class SamplerState:
    epoch: int = 0
    position: int = 0


class PromptSampler:
    """Batches of item indices: a fresh seeded permutation each epoch, resumable from (epoch, position).

    A batch never straddles epochs: the last, shorter part of an epoch is topped up from the next one,
    so every step sees exactly `batch_size` prompts.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.state = SamplerState()
        self._orders: dict[int, list[int]] = {}  # the current epoch's permutation, drawn once

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._orders = {epoch: [int(i) for i in torch.randperm(self.num_items, generator=generator)]}
        return self._orders[epoch]

    def next_batch(self) -> list[int]:
        batch: list[int] = []
        while len(batch) < self.batch_size:
            order = self._order(self.state.epoch)
            take = order[self.state.position : self.state.position + self.batch_size - len(batch)]
            batch.extend(take)
            self.state.position += len(take)
            if self.state.position >= self.num_items:
                self.state = SamplerState(epoch=self.state.epoch + 1, position=0)
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "position": self.state.position, "num_items": self.num_items}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_items"] != self.num_items:
            raise DataFileError(
                f"the checkpoint was written for {state['num_items']} training items, the file has "
                f"{self.num_items}: resume with the same training file"
            )
        self.state = SamplerState(epoch=state["epoch"], position=state["position"])
