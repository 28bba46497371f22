"""Choosing the next token of one sequence, and cutting completions at stop strings: pure functions."""

import torch


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest set of most likely tokens whose mass reaches `top_p`, renormalised. probs: (vocab,)"""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = torch.where(mass_before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum()


def next_token(
    logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else a sample of softmax(logits / temperature) cut to top_p. logits: (V,)"""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = top_p_filter(torch.softmax(logits.float() / temperature, dim=-1), top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


class StopScanner:
    """Turns a growing completion text into stream deltas, never sending text that a stop string will cut.

    While a suffix of the text could still become a stop string, that suffix is held back.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0

    def feed(self, text: str) -> tuple[str, bool]:
        """(the new text to send, whether a stop string ended the completion)"""
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            delta, self.sent = text[self.sent : cut], cut
            return delta, True
        safe = len(text)
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if stop.startswith(text[-size:]):
                    safe = min(safe, len(text) - size)
                    break
        safe = max(safe, self.sent)
        delta, self.sent = text[self.sent : safe], safe
        return delta, False

    def flush(self, text: str) -> str:
        """The held-back rest once the completion ended without a stop string."""
        delta, self.sent = text[self.sent :], len(text)
        return delta
