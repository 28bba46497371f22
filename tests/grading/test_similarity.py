"""text_similarity metrics: identity, emptiness, partial credit and exact values on tiny inputs.

The expected numbers are worked out by hand in the comments (and agree with what the libraries give).
"""

import math

import pytest

from grading.similarity import METRICS, similarity
from jobspec.graders import SIMILARITY_METRICS

HYPOTHESIS = "the cat sat on the mat"
REFERENCE = "the cat is on the mat"


def test_every_metric_but_cosine_is_registered() -> None:
    assert set(METRICS) == set(SIMILARITY_METRICS) - {"cosine"}


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize(
    "text",
    [
        "",
        "Paris",  # METEOR alone would give 0.5 (fragmentation penalty), BLEU/ROUGE-2+ nothing to count
        "New York",  # ROUGE-3..5 have no n-grams, METEOR alone would give 0.9375
        "!!!",  # no tokens at all for any tokenizer
        "   ",
        HYPOTHESIS,
        "Grüße aus Köln — 東京\nsecond line, with punctuation.",
    ],
)
def test_identical_texts_score_one(metric: str, text: str) -> None:
    assert similarity(metric, text, text) == 1.0


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_empty_against_non_empty_scores_zero(metric: str) -> None:
    assert similarity(metric, "", "the answer") == 0.0
    assert similarity(metric, "the answer", "") == 0.0


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize(
    ("text", "reference"),
    [
        ("!!!", "???"),
        ("   ", "a"),
        ("a", "   "),
        ("?", "word"),
        ("x" * 2000, "x y " * 300),
        ("1 2 3", "3 2 1"),
    ],
)
def test_scores_stay_in_unit_interval(metric: str, text: str, reference: str) -> None:
    value = similarity(metric, text, reference)
    assert 0.0 <= value <= 1.0 and not math.isnan(value)


@pytest.mark.parametrize("metric", ["bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_l"])
def test_disjoint_texts_score_zero(metric: str) -> None:
    assert similarity(metric, "the cat sat", "a dog ran") == 0.0


def test_one_letter_typo_gets_partial_fuzzy_credit() -> None:
    # one substituted letter: Indel distance 2 (delete + insert) over 10 + 10 characters → 1 - 2/20 = 0.9;
    # WRatio's token variants of a single token are the same ratio × 0.95, so the plain ratio wins
    assert similarity("fuzzy_match", "definately", "definitely") == pytest.approx(0.9, abs=1e-12)
    # one extra letter: 2·5 common characters / (5 + 6) = 10/11
    assert similarity("fuzzy_match", "Paris", "Pariss") == pytest.approx(10 / 11, abs=1e-12)


def test_fuzzy_match_ignores_case_and_punctuation_and_credits_substrings() -> None:
    # rapidfuzz's default_process lowercases and drops punctuation
    assert similarity("fuzzy_match", "Paris.", "paris") == 1.0
    # lengths 30 vs 5 (ratio ≥ 1.5): WRatio takes the partial (substring) ratio, 100, scaled by 0.9
    assert similarity("fuzzy_match", "The capital of France is Paris", "Paris") == pytest.approx(
        0.9, abs=1e-12
    )


# "the cat sat on the mat" against "the cat is on the mat": 6 tokens each (13a and ROUGE tokenize alike here)
#   common 1-grams: the ×2, cat, on, mat = 5 of 6; 2-grams: "the cat", "on the", "the mat" = 3 of 5;
#   3-grams: "on the mat" = 1 of 4; 4-grams: 0 of 3; the LCS "the cat on the mat" has 5 tokens
PAIR_VALUES = {
    # Indel ratio on characters: LCS "the cat " + "s" + " on the mat" = 20 → 2·20 / (22 + 21) = 40/43
    # (token-sort and token-set variants score less after their 0.95 factor)
    "fuzzy_match": 40 / 43,
    # BP = 1 (equal lengths); p = 5/6, 3/5, 1/4 and 0/3, which `exp` smoothing turns into 1/(2·3):
    # (5/6 · 3/5 · 1/4 · 1/6) ^ (1/4) = (1/48) ^ (1/4) = 0.379917...
    "bleu": (1 / 48) ** 0.25,
    # all 1..4-grams: 18 in each text, 5 + 3 + 1 + 0 = 9 match → 9 / max(18, 18)
    "gleu": 0.5,
    # 5 exact matches: P = R = 5/6 = Fmean; chunks "the cat" | "on the mat" = 2 → penalty 0.5 · (2/5)³ = 0.032
    "meteor": (1 - 0.032) * 5 / 6,
    "rouge_1": 5 / 6,  # P = R = 5/6
    "rouge_2": 3 / 5,  # P = R = 3/5
    "rouge_3": 1 / 4,  # P = R = 1/4
    "rouge_4": 0.0,
    "rouge_5": 0.0,  # 2 five-grams each, none common
    "rouge_l": 5 / 6,  # LCS 5: P = R = 5/6
}


@pytest.mark.parametrize(("metric", "expected"), sorted(PAIR_VALUES.items()))
def test_known_values_for_a_pair_of_sentences(metric: str, expected: float) -> None:
    assert similarity(metric, HYPOTHESIS, REFERENCE) == pytest.approx(expected, abs=1e-12)


def test_pair_values_cover_every_metric() -> None:
    assert set(PAIR_VALUES) == set(METRICS)


def test_meteor_matches_stems_but_not_synonyms() -> None:
    # "cats" ~ "cat" by Porter stem: 3 matches, P = R = 1, one chunk → 1 - 0.5 · (1/3)³ = 53/54
    assert similarity("meteor", "the cats ran", "the cat ran") == pytest.approx(53 / 54, abs=1e-12)
    # no WordNet: "big" ≠ "large"; 2 matches of 3 (Fmean 2/3) in 2 chunks → (1 - 0.5 · 1³) · 2/3 = 1/3
    assert similarity("meteor", "a big house", "a large house") == pytest.approx(1 / 3, abs=1e-12)


def test_meteor_is_case_insensitive_and_bleu_is_not() -> None:
    # one lowercased exact match, one chunk of one match: penalty 0.5 · 1³ → 0.5
    assert similarity("meteor", "Paris", "paris") == pytest.approx(0.5, abs=1e-12)
    assert similarity("bleu", "Paris", "paris") == 0.0


def test_rouge_stems_and_keeps_non_latin_words() -> None:
    # "running" → "run", "dogs" → "dog": both of the text's 2 tokens match 2 of the reference's 3
    # → P = 1, R = 2/3, F = 0.8
    assert similarity("rouge_1", "running dogs", "the dog runs") == pytest.approx(0.8, abs=1e-12)
    # rouge-score's own tokenizer keeps only a-z0-9 and would score 0; here "привет" matches: P = R = 1/2
    assert similarity("rouge_1", "Привет мир", "Привет друг") == pytest.approx(0.5, abs=1e-12)


def test_text_and_reference_are_in_that_order() -> None:
    # ROUGE-1 precision is over the text and recall over the reference; F is symmetric, but GLEU's
    # denominator is the larger side: "hello" against "hello world": 1 match / max(1, 3) n-grams
    assert similarity("gleu", "hello", "hello world") == pytest.approx(1 / 3, abs=1e-12)
    assert similarity("gleu", "hello world", "hello") == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "rouge_6", "rougeL", ""])
def test_unknown_metric_is_a_value_error_listing_the_valid_ones(metric: str) -> None:
    with pytest.raises(ValueError, match="unknown similarity metric") as caught:
        similarity(metric, "a", "a")
    for valid in METRICS:
        assert valid in str(caught.value)
