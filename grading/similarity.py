"""`text_similarity` metrics (all of OpenAI's but `cosine`, which needs an embedding model): scores in [0, 1].

Rules shared by every metric, applied before the metric itself:

- identical texts score exactly 1.0 (the empty string included), even where the bare metric would not
  (METEOR's fragmentation penalty gives a one-word text 0.5 against itself; ROUGE-5 has no 5-grams in a
  two-word text);
- otherwise, an empty text on either side scores 0.0;
- results are clamped to [0, 1] (NaN gives 0.0).

Tokenization, per metric:

- fuzzy_match: characters, after rapidfuzz's `utils.default_process` (lowercase, every character that is
  not a letter or digit becomes a space, ends trimmed);
- bleu, gleu, meteor: sacrebleu's `13a` tokenizer (mteval-v13a, WMT's standard: punctuation split off from
  words, apostrophes kept inside them); BLEU and GLEU are case-sensitive, METEOR lowercases;
- rouge_*: rouge-score's tokenization (lowercase, runs of letters and digits, Porter stemming of words longer
  than three characters) with one change: letters and digits of every script count, where rouge-score
  keeps only a-z and 0-9 (so "café" stays "café" instead of "caf", and non-Latin text is not dropped).
  On ASCII text the tokens are exactly rouge-score's.

The scorer objects are built once, at import: this runs thousands of times per training step.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import regex
from nltk.stem.porter import PorterStemmer
from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import single_meteor_score
from rapidfuzz import fuzz, utils
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

# Porter stemming is pure Python and the same words recur in every sample: memoize it (thread-safe)
_stem: Callable[[str], str] = functools.lru_cache(maxsize=1 << 16)(PorterStemmer().stem)
_tokenize_13a = Tokenizer13a()  # type: ignore[no-untyped-call]
# sentence BLEU exactly as `sacrebleu.sentence_bleu` builds it: 13a, case-sensitive, exp smoothing,
# effective order (n-gram orders longer than the hypothesis are left out)
_BLEU = BLEU(tokenize="13a", lowercase=False, smooth_method="exp", effective_order=True)
_ROUGE_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")


class _Stemmer:
    """nltk's PorterStemmer (its default NLTK_EXTENSIONS mode, as in rouge-score and METEOR), memoized."""

    def stem(self, word: str) -> str:
        return _stem(word)


class _RougeTokenizer:
    """rouge-score's DefaultTokenizer(use_stemmer=True), with letters and digits of every script kept."""

    def tokenize(self, text: str) -> list[str]:
        return [_stem(word) if len(word) > 3 else word for word in _ROUGE_WORD.findall(text.lower())]


class _NoWordNet:
    """A WordNet with no synsets: METEOR's synonym stage finds nothing (no WordNet data is installed)."""

    def synsets(self, word: str, *args: Any, **kwargs: Any) -> list[Any]:
        return []


_STEMMER = _Stemmer()
_NO_WORDNET = _NoWordNet()
_ROUGE_TYPES = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
# one scorer per type, so rouge_1 does not compute rouge_5's n-grams too
_ROUGE = {
    metric: rouge_scorer.RougeScorer([rouge_type], tokenizer=_RougeTokenizer())
    for metric, rouge_type in _ROUGE_TYPES.items()
}


def fuzzy_match(text: str, reference: str) -> float:
    """rapidfuzz `fuzz.WRatio(text, reference, processor=utils.default_process) / 100`.

    OpenAI documents fuzzy_match only as "fuzzy string match ... using rapidfuzz"; WRatio with
    `default_process` is the rapidfuzz call its own graders guide uses for fuzzy matching. WRatio is the best
    of the Indel ratio 2·matches / (len(a) + len(b)) and its token-sorted and token-set variants (× 0.95),
    and of partial (substring) ratios (× 0.9) when one text is at least 1.5 times longer than the other.
    Case and punctuation are ignored, so "Paris." against "paris" scores 1.0.
    """
    return fuzz.WRatio(text, reference, processor=utils.default_process) / 100.0


def bleu(text: str, reference: str) -> float:
    """sacrebleu's sentence BLEU / 100: BP · exp(Σₙ log pₙ / N) over n = 1..min(4, hypothesis length).

    pₙ are clipped n-gram precisions, smoothed by sacrebleu's default `exp` method (the k-th order with no
    match counts 1 / 2^k matches), BP = min(1, exp(1 - len(reference) / len(text))). 13a tokens, case
    kept.
    """
    return _BLEU.sentence_score(text, [reference]).score / 100.0


def gleu(text: str, reference: str) -> float:
    """nltk's sentence GLEU (Wu et al. 2016): matching 1..4-grams / max(text's 1..4-grams, reference's).

    That is min(precision, recall) over all n-grams of orders 1 to 4 together. 13a tokens, case kept.
    """
    return float(sentence_gleu([_tokenize_13a(reference).split()], _tokenize_13a(text).split()))


def meteor(text: str, reference: str) -> float:
    """nltk's METEOR: Fmean · (1 - 0.5 · (chunks / matches)³), Fmean = P·R / (0.9·P + 0.1·R).

    Words are aligned by exact match, then by Porter stem; the WordNet synonym stage is switched off (a
    stand-in WordNet with no synsets is passed: no WordNet data can be downloaded here). 13a tokens,
    lowercased.
    """
    return float(
        single_meteor_score(
            _tokenize_13a(reference).split(),
            _tokenize_13a(text).split(),
            stemmer=_STEMMER,
            wordnet=_NO_WORDNET,
        )
    )


def _rouge(metric: str) -> Callable[[str, str], float]:
    scorer = _ROUGE[metric]
    rouge_type = _ROUGE_TYPES[metric]

    def score(text: str, reference: str) -> float:
        return float(scorer.score(reference, text)[rouge_type].fmeasure)

    score.__name__ = metric
    if metric == "rouge_l":
        score.__doc__ = (
            "ROUGE-L F-measure: with L the longest common subsequence of tokens, P = L / len(text), "
            "R = L / len(reference), F = 2PR / (P + R). Stemmed tokens (see the module)."
        )
    else:
        n = metric[-1]
        score.__doc__ = (
            f"ROUGE-{n} F-measure: with M the clipped count of common {n}-grams, P = M / text's {n}-grams, "
            f"R = M / reference's {n}-grams, F = 2PR / (P + R). Stemmed tokens (see the module)."
        )
    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{metric: _rouge(metric) for metric in _ROUGE_TYPES},
}


def similarity(metric: str, text: str, reference: str) -> float:
    """How similar `text` (the sample) is to `reference` by `metric`, in [0, 1]; ValueError for an unknown
    metric. Identical texts score 1.0, an empty text against a non-empty one 0.0 (see the module)."""
    try:
        score = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown similarity metric {metric!r}; valid: {', '.join(METRICS)}") from None
    if text == reference:
        return 1.0
    if not text or not reference:
        return 0.0
    value = score(text, reference)
    return min(1.0, max(0.0, value)) if not math.isnan(value) else 0.0
