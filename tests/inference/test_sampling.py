"""Exact numbers for the model server's pure pieces: top-p cut, greedy pick, stop-string streaming."""

import pytest
import torch

from inference.sampling import StopScanner, next_token, top_p_filter


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it: those two, renormalised to 5/8 and 3/8.
    assert top_p_filter(probs, 0.7).tolist() == pytest.approx([0.0, 0.625, 0.375, 0.0])
    assert top_p_filter(probs, 0.5).tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])
    assert top_p_filter(probs, 1.0) is probs


def test_greedy_and_seeded_sampling() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert next_token(logits, temperature=0.0, top_p=1.0, generator=None) == 1
    draws = [
        next_token(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(7))
        for _ in range(3)
    ]
    assert len(set(draws)) == 1  # the same seed draws the same token
    # top_p=0.5 leaves only the most likely token, whatever the seed
    assert next_token(logits, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(1)) == 1


def test_stop_scanner_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    scanner = StopScanner(["##"])
    assert scanner.feed("12") == ("12", False)
    assert scanner.feed("12+3#") == ("+3", False)  # "#" may start "##": held back
    assert scanner.feed("12+3#4") == ("#4", False)  # it did not
    assert scanner.feed("12+3#4## 7") == ("", True)  # cut before the stop string
    assert scanner.sent == 6


def test_stop_scanner_flush_sends_the_held_back_rest() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("abcEN") == ("abc", False)
    assert scanner.flush("abcEN") == "EN"
    assert StopScanner([]).feed("anything") == ("anything", False)
