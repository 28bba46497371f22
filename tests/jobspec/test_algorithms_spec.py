"""The API's algorithm, critic, dtype and attention-kernel names are the engine's, from one place."""

from typing import get_args

from jobspec.algorithms import ALGORITHM_NAMES, CRITIC_KINDS, AlgorithmName, CriticKind
from jobspec.compute import ATTN_IMPLEMENTATIONS, DTYPES, AttnImplementation, DType
from worker.engine.algorithms import ALGORITHMS


def test_the_literals_list_the_names_the_engine_runs() -> None:
    assert get_args(AlgorithmName) == ALGORITHM_NAMES
    assert get_args(CriticKind) == CRITIC_KINDS
    assert set(ALGORITHMS) == set(ALGORITHM_NAMES)


def test_the_compute_literals_list_the_names_the_engine_resolves() -> None:
    assert get_args(DType) == DTYPES
    assert get_args(AttnImplementation) == ATTN_IMPLEMENTATIONS
