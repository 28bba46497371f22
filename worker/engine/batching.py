"""Micro-batching: rows cut into micro-batches that fit a token budget, and the OOM fallback that halves
the budget and runs the whole attempt again.

Every forward of a step (old and reference log-probs, critic values, the update itself) runs in
micro-batches of at most `micro_batch_tokens` tokens under `TokenBudget.retry`. The losses are weighted
so a minibatch's gradient does not depend on the cut (update.py), so a retry changes memory, not maths.
"""

from collections.abc import Callable
from typing import TypeVar

import torch

from worker.engine.distributed import DistContext
from worker.engine.errors import OutOfMemoryError

T = TypeVar("T")


def micro_batches(num_rows: int, row_tokens: int, token_budget: int) -> list[slice]:
    """Consecutive row slices of at most max(1, token_budget // row_tokens) rows each."""
    rows = max(1, token_budget // max(1, row_tokens))
    return [slice(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]


class TokenBudget:
    """The token budget of one forward/backward (`micro_batch_tokens`), halved on CUDA OOM."""

    def __init__(
        self,
        tokens: int,
        dist: DistContext,
        *,
        sharded: bool,
        on_oom: Callable[[], None],
        on_warning: Callable[[str], None],
    ) -> None:
        self.tokens = tokens
        self.dist, self.sharded = dist, sharded
        self.on_oom = on_oom  # drops a failed attempt's partial gradients
        self.on_warning = on_warning

    def slices(self, num_rows: int, row_tokens: int) -> list[slice]:
        return micro_batches(num_rows, row_tokens, self.tokens)

    def policy_slices(self, num_rows: int, row_tokens: int) -> list[slice]:
        """Micro-batches for the policy's forwards: a sharded policy's must be as many on every rank, so
        they are cut by the widest rank's rows (ranks hold equal numbers of rows of their own widths)."""
        widest = self.dist.max_int(row_tokens) if self.sharded else row_tokens
        return micro_batches(num_rows, widest, self.tokens)

    def retry(self, attempt: Callable[[], T], row_tokens: int) -> T:
        """Run `attempt`; on CUDA OOM halve the budget and run it again."""
        while True:
            try:
                return attempt()
            except torch.cuda.OutOfMemoryError:
                if self.dist.active:  # a retry on one rank would repeat collectives the others are past
                    raise OutOfMemoryError(
                        "a step did not fit in GPU memory on one of the job's devices: lower batch_size, "
                        "minibatch_size or max_response_tokens"
                    ) from None
                self.on_oom()
                torch.cuda.empty_cache()
                if self.tokens <= row_tokens:
                    raise OutOfMemoryError(
                        "a single sample does not fit in GPU memory: lower max_response_tokens, "
                        "use a smaller model, or use a GPU with more memory"
                    ) from None
                self.tokens //= 2
                self.on_warning(f"out of GPU memory: retrying with micro_batch_tokens={self.tokens}")
