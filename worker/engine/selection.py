"""Which evaluated step a run returns as its model, and when it stops early: pure functions of the run's
evaluation history, `[(step, eval/pass@1), ...]` in step order (step 0 is the base model's score).
"""

from collections.abc import Collection, Sequence

PASS_AT_1 = "eval/pass@1"  # the score a model is selected by
Scores = Sequence[tuple[int, float]]


def best_step(history: Scores, candidates: Collection[int]) -> int | None:
    """The candidate step with the highest score, the earlier step on a tie; None when no candidate was
    evaluated. Candidates are the steps whose weights still exist (checkpoints, the current step)."""
    scored = [(step, score) for step, score in history if step in candidates]
    if not scored:
        return None
    return max(scored, key=lambda evaluation: evaluation[1])[0]  # max keeps the first of equals


def evaluations_without_improvement(history: Scores) -> int:
    """How many evaluations in a row, up to the latest, did not beat every score before them (0 when the
    latest did, or there is no history). The base model's score counts: a run that never beats it stalls."""
    best_index = 0
    for index, (_, score) in enumerate(history):
        if score > history[best_index][1]:
            best_index = index
    return max(0, len(history) - 1 - best_index)
