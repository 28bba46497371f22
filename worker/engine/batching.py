"""Splitting a batch of rows into micro-batches that fit a token budget."""


def micro_batches(num_rows: int, row_tokens: int, token_budget: int) -> list[slice]:
    """Consecutive row slices of at most max(1, token_budget // row_tokens) rows each."""
    rows = max(1, token_budget // max(1, row_tokens))
    return [slice(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]
