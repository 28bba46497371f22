"""The dynamic batcher: requests wait a few milliseconds for company, then decode together on one thread.

A batch takes the oldest request and every later one for the same base model that fits (rows = sum of
`n`, at most `max_batch_size`); requests for other bases wait for the next batch. Events go back to each
request through its `emit` callback (thread-safe; the server hands them to its event loop).
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from inference.generate import Row, decode_batch
from inference.models import LoadedBase, ModelCache
from inference.sampling import StopScanner, next_token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delta:
    choice: int
    text: str


@dataclass(frozen=True)
class Finished:
    choice: int
    reason: str
    tokens: int


@dataclass(frozen=True)
class Done:
    """Every choice of the request has finished."""


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Finished | Done | Failed


class Busy(Exception):
    """The queue is full: the caller answers 429 with Retry-After."""


@dataclass
class Generation:
    """One request: `n` completions of one prompt on a base model, with or without an adapter."""

    base: str
    adapter_uri: str | None
    prompt_ids: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str]
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _RowState:
    generation: Generation
    choice: int
    scanner: StopScanner
    ids: list[int] = field(default_factory=list)
    stopped: bool = False


class Batcher:
    def __init__(self, cache: ModelCache, *, max_batch_size: int, wait_s: float, max_pending: int) -> None:
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_pending = max_pending
        self.pending: deque[Generation] = deque()
        self.condition = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        self.thread.join(timeout=30)

    def submit(self, generation: Generation) -> None:
        with self.condition:
            if len(self.pending) >= self.max_pending:
                raise Busy
            self.pending.append(generation)
            self.condition.notify_all()

    def _take(self) -> list[Generation] | None:
        with self.condition:
            while not self.pending and not self.stopping:
                self.condition.wait()
            if self.stopping:
                return None
            deadline = time.monotonic() + self.wait_s
            while (left := deadline - time.monotonic()) > 0 and self._fitting_rows() < self.max_batch_size:
                self.condition.wait(timeout=left)
            base = self.pending[0].base
            batch: list[Generation] = []
            rows = 0
            for generation in list(self.pending):
                if generation.base != base or (batch and rows + generation.n > self.max_batch_size):
                    continue
                adapters = {g.adapter_uri for g in batch} | {generation.adapter_uri}
                if len(adapters - {None}) > self.cache.settings.inference_max_adapters:
                    continue
                batch.append(generation)
                rows += generation.n
                self.pending.remove(generation)
            return batch

    def _fitting_rows(self) -> int:
        base = self.pending[0].base
        return sum(g.n for g in self.pending if g.base == base)

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._run(batch)
            except Exception as exc:  # one bad batch must not stop the service
                log.exception("batch failed")
                for generation in batch:
                    generation.emit(Failed(f"generation failed: {type(exc).__name__}"))

    def _run(self, batch: list[Generation]) -> None:
        base = self.cache.base(batch[0].base)
        rows: list[Row] = []
        states: list[_RowState] = []
        ready: list[Generation] = []
        for generation in batch:
            try:
                adapter = self.cache.adapter_name(base, generation.adapter_uri)
            except Exception as exc:
                log.warning("adapter %s cannot be loaded: %s", generation.adapter_uri, exc)
                generation.emit(Failed("the model's adapter cannot be loaded"))
                continue
            ready.append(generation)
            for choice in range(generation.n):
                rows.append(_row(generation, choice, adapter, self.cache.device))
                states.append(_RowState(generation, choice, StopScanner(generation.stops)))
        if not rows:
            return
        results = decode_batch(
            base.model, rows, pad_id=_pad_id(base), eos_ids=_eos_ids(base),
            pick=lambda logits, row: next_token(
                logits, temperature=row.temperature, top_p=row.top_p, generator=row.generator
            ),
            on_token=lambda i, token: _on_token(base, states[i], token),
        )  # fmt: skip
        for state, (reason, tokens) in zip(states, results, strict=True):
            if not state.stopped and (rest := state.scanner.flush(_decode(base, state.ids))):
                state.generation.emit(Delta(state.choice, rest))
            state.generation.emit(Finished(state.choice, reason, tokens))
        for generation in ready:
            generation.emit(Done())


def _row(generation: Generation, choice: int, adapter: str, device: torch.device) -> Row:
    generator = None
    if generation.seed is not None and generation.temperature > 0:
        # One generator per choice: a seeded request samples the same whatever else shares its batch.
        generator = torch.Generator(device=device).manual_seed(generation.seed + choice)
    return Row(generation.prompt_ids, generation.max_tokens, generation.temperature, generation.top_p,
               adapter, generator)  # fmt: skip


def _on_token(base: LoadedBase, state: _RowState, token: int) -> bool:
    if state.generation.cancelled.is_set():
        return False
    state.ids.append(token)
    delta, state.stopped = state.scanner.feed(_decode(base, state.ids))
    if delta:
        state.generation.emit(Delta(state.choice, delta))
    return not state.stopped


def _decode(base: LoadedBase, ids: list[int]) -> str:
    with base.tokenizer_lock:
        return str(base.tokenizer.decode(ids, skip_special_tokens=True))


def _pad_id(base: LoadedBase) -> int:
    return int(base.tokenizer.pad_token_id)  # load_tokenizer sets one


def _eos_ids(base: LoadedBase) -> set[int]:
    eos = base.model.config.eos_token_id if base.model.config.eos_token_id is not None else []
    ids = set(eos if isinstance(eos, list) else [eos])
    if base.tokenizer.eos_token_id is not None:
        ids.add(int(base.tokenizer.eos_token_id))
    return ids
