"""The limits of a request to a model, written once: the API checks them on `chat/completions` and
`completions`, the model server checks them again on `/internal/generate` and `/internal/embeddings`, and
the graders' embeddings client cuts its requests to them. A limit here that only one side applied would let
the model server take what the API refuses (it took `n` = 128 where the API capped 16).
"""

MAX_MODEL_NAME_CHARS = 256
MAX_MESSAGES = 256
MAX_STOP = 4
MAX_PROMPT_CHARS = 1024 * 1024
# Far beyond any context window: the model server answers 400 with the real limit; this only keeps
# absurd numbers (10**30) out of integer arithmetic.
MAX_TOKENS_BOUND = 2**31 - 1
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 2.0

MAX_EMBEDDING_INPUTS = 256  # texts per embeddings request (OpenAI's is 2048)
# characters per text: longer texts are refused, and tokens past the context window are dropped anyway
MAX_EMBEDDING_CHARS = 65536


def choices_refusal(n: int, max_n: int) -> str | None:
    """Why `n` choices are refused where SPPO_INFERENCE_MAX_N is `max_n` (both processes read that setting),
    or None when they are not."""
    return f"n must be at most {max_n}." if n > max_n else None
