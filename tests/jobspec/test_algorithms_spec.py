"""The API's algorithm and critic names are the engine's, from one place."""

from typing import get_args

from jobspec.algorithms import ALGORITHM_NAMES, CRITIC_KINDS, AlgorithmName, CriticKind
from worker.engine.algorithms import ALGORITHMS


def test_the_literals_list_the_names_the_engine_runs() -> None:
    assert get_args(AlgorithmName) == ALGORITHM_NAMES
    assert get_args(CriticKind) == CRITIC_KINDS
    assert set(ALGORITHMS) == set(ALGORITHM_NAMES)
