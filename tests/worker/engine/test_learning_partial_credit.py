"""The engine learns from a Python grader with partial credit, run in the sandbox as a job's would be.

The reward is dense: 1 for the right sum, less the further the final number is from it (0 beyond 20 off),
so a near miss earns something. Scored on 1,000 held-out problems drawn fresh with a seed of their own:
the run's step-0 evaluation is the base score, its last one the trained score, both the mean reward of the
greedy completions. Rewards lie in [0, 1], so a reward's variance is at most m (1 - m) for mean m; the
asserted gain, 4 * sqrt(m0 (1 - m0) / n + m1 (1 - m1) / n), is at least 4 standard errors of the difference.
Measured (seed fixed, the same on every machine): 0.729 -> 0.818 in 30 steps (gain 0.089, bound 0.075);
greedy pass@1 0.300 -> 0.374 as a side effect.

The learning rate is pinned at the 3e-4 this test was measured with: it proves the partial-credit path
learns, not the defaults. At the fixture's default since the defaults battery (1e-4, chosen for held-out
task variants, docs/engine.md) the same 30 steps give 0.729 -> 0.799 (gain 0.070, under the 0.076 bound;
pass@1 0.300 -> 0.457): slower on the mean reward within 30 steps, and the test does not hide that.
"""

import logging
import math
import os
from pathlib import Path

import pytest

from grading.sandbox import sandbox_unavailable_reason
from tests.worker.engine.conftest import held_out_run
from worker.engine.fixture_tasks import CLOSENESS_GRADER
from worker.engine.fixtures import Fixture

logger = logging.getLogger(__name__)
STEPS = 30
HELD_OUT = 1000
MEASURED_LR = 3e-4


@pytest.mark.timeout(1200)  # ~35 s on an idle core; a shared, loaded machine is several times slower
def test_sppo_raises_mean_reward_of_a_partial_credit_python_grader(tiny: Fixture, tmp_path: Path) -> None:
    if sandbox_unavailable_reason() is not None and not os.environ.get("CI"):
        pytest.skip(f"no Python grader sandbox here: {sandbox_unavailable_reason()}")
    run = held_out_run(tiny, tmp_path, grader=CLOSENESS_GRADER, steps=STEPS, items=HELD_OUT, seed=20261207,
                       overrides={"learning_rate": MEASURED_LR})  # fmt: skip
    before, after = run.before["eval/reward_mean"], run.after["eval/reward_mean"]
    bound = math.sqrt(before * (1 - before) / HELD_OUT + after * (1 - after) / HELD_OUT)
    steps = [line for line in run.lines if "grader/error_rate" in line]
    logger.warning(
        "partial-credit learning: mean reward %.4f -> %.4f on %d items (gain %.4f, 4 SE bound %.4f), "
        "pass@1 %.4f -> %.4f, %d steps in %.0f s, grading %.2f s/step",
        before,
        after,
        HELD_OUT,
        after - before,
        4 * bound,
        run.before["eval/pass@1"],
        run.after["eval/pass@1"],
        STEPS,
        run.seconds,
        sum(s["perf/grading_s"] for s in steps) / len(steps),
    )
    assert all(s["grader/error_rate"] == 0 for s in steps)
    assert after - before >= 4 * bound, f"mean reward went from {before:.4f} to {after:.4f}"
