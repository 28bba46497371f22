"""Training-health alarms: exact outcomes of the pure checks, and one collapsed alarm on the job object."""

import pytest
from sqlalchemy import select

from app.schemas.jobs import Alarm
from core.db import get_sessionmaker
from core.models import Job, JobEvent
from core.settings import Settings
from tests.worker.conftest import MakeReporter
from worker.alarms import AlarmBook
from worker.engine.callbacks import StartInfo
from worker.reporting import JobReporter


def _steps(book: AlarmBook, rewards: list[float], **extra: float) -> list[list[str]]:
    return [
        [a["code"] for a in book.observe_step(i + 1, {"rollout/reward_mean": r, **extra})]
        for i, r in enumerate(rewards)
    ]


def test_constant_zero_reward_is_raised_once_after_the_window_and_counted() -> None:
    book = AlarmBook(window=3, grader="grader 'exact' (string_check)")
    assert _steps(book, [0, 0, 0, 0, 0]) == [[], [], ["constant_reward"], [], []]
    (alarm,) = book.public()
    assert (alarm["count"], alarm["first_step"], alarm["last_step"], alarm["active"]) == (3, 3, 5, True)
    assert alarm["level"] == "error" and "grader 'exact' (string_check) never rewards" in alarm["message"]


def test_varying_or_non_binary_reward_raises_nothing_and_clears_the_alarm() -> None:
    book = AlarmBook(window=2)
    assert _steps(book, [0.25, 0.25, 0.0, 0.5]) == [[], [], [], []]
    assert _steps(book, [1, 1]) == [[], ["constant_reward"]]
    book.observe_step(9, {"rollout/reward_mean": 0.5})
    assert book.public()[0]["active"] is False and "accepts any answer" in book.public()[0]["message"]
    assert book.observe_step(10, {"rollout/reward_mean": 1.0}) == []  # the window holds 0.5 still
    assert [a["code"] for a in book.observe_step(11, {"rollout/reward_mean": 1.0})] == ["constant_reward"]
    assert book.public()[0]["count"] == 2  # raised again after clearing: same entry, counted


def test_length_kl_and_entropy_alarms() -> None:
    book = AlarmBook(window=5, max_response_tokens=32)
    assert book.observe_step(1, {"rollout/response_length_mean": 30.3, "train/entropy": 0.5}) == []
    raised = book.observe_step(2, {"rollout/response_length_mean": 30.4, "train/approx_kl": 1.5,
                                   "train/entropy": 1.6})  # fmt: skip
    assert sorted(a["code"] for a in raised) == ["entropy_blowup", "kl_blowup", "response_length_limit"]
    assert "30.4 tokens is at the limit of 32" in book.entries["response_length_limit"]["message"]
    assert "3.2x its first-step value 0.5" in book.entries["entropy_blowup"]["message"]


def test_validation_below_the_first_evaluation() -> None:
    book = AlarmBook(window=5)
    assert book.observe_evaluation(0, {"eval/pass@1": 0.12}) == []
    assert book.observe_evaluation(10, {"eval/pass@1": 0.11}) == []  # within the margin
    assert [a["code"] for a in book.observe_evaluation(20, {"eval/pass@1": 0.05})] == [
        "validation_below_baseline"
    ]
    book.observe_step(21, {"rollout/reward_mean": 0.3})  # steps do not clear an evaluation's alarm
    assert book.entries["validation_below_baseline"]["active"] is True
    assert (
        "0.050 at step 20 is below the baseline 0.120" in book.entries["validation_below_baseline"]["message"]
    )


def test_engine_warnings_alike_but_for_numbers_are_one_alarm() -> None:
    book = AlarmBook(window=5)
    for step, share in enumerate(("85%", "90%", "100%"), start=1):
        book.warning(f"{share} of samples have zero advantage and do not train")
        book.observe_step(step, {})
    (alarm,) = book.public()
    assert alarm["count"] == 3 and alarm["message"].startswith("100% of samples")


@pytest.fixture
def reporter(reporter_for: MakeReporter, job_id: str) -> JobReporter:
    return reporter_for(job_id, alarms=AlarmBook(window=3))


def test_constant_reward_under_sppo_is_one_collapsed_alarm_on_the_job(reporter: JobReporter,
                                                                     settings: Settings) -> None:  # fmt: skip
    # What an SPPO run with an unfitting grader reports: reward 0 every step; zero_adv_frac is 0 because
    # R - sigmoid(v) is never exactly 0, so the engine's own zero-advantage warning stays silent.
    reporter.on_start(StartInfo(total_steps=12, start_step=0, output_dir=settings.data_dir))
    for step in range(1, 13):
        reporter.on_step(step, {"rollout/reward_mean": 0.0, "health/zero_adv_frac": 0.0})
    assert reporter.flush()
    with get_sessionmaker(settings.db_url)() as session:
        job = session.get(Job, reporter.job_id)
        assert job is not None
        alarms = [Alarm.model_validate(alarm) for alarm in job.alarms or []]  # as JobPublic shows them
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job.id)).all()
    assert [(a.code, a.count, a.first_step, a.last_step, a.active) for a in alarms] == [
        ("constant_reward", 10, 3, 12, True)
    ]
    assert sum(m.startswith("Alarm: every sample got reward 0") for m in messages) == 1


def test_a_constant_partial_credit_is_a_constant_reward_but_a_varying_one_is_not() -> None:
    book = AlarmBook(window=2, grader="grader 'close' (python)")
    # the same mean twice, but rewards that vary within each step: something to learn from
    assert _steps(book, [0.5, 0.5], **{"rollout/reward_std": 0.2}) == [[], []]
    assert _steps(book, [0.5, 0.5], **{"rollout/reward_std": 0.0}) == [[], ["constant_reward"]]
    (alarm,) = book.public()
    assert "reward 0.5" in alarm["message"] and "same partial credit" in alarm["message"]


def test_a_grader_failing_on_half_the_samples_for_a_window_raises_grader_errors() -> None:
    book = AlarmBook(window=3, grader="grader 'code' (python)")
    rates = [0.6, 0.5, 0.1, 0.7, 0.8, 0.9]
    raised = [
        [a["code"] for a in book.observe_step(i + 1, {"rollout/reward_mean": 0.3, "rollout/reward_std": 0.1,
                                                      "grader/error_rate": rate})]
        for i, rate in enumerate(rates)
    ]  # fmt: skip
    assert raised == [[], [], [], [], [], ["grader_errors"]]
    (alarm,) = book.public()
    assert alarm["level"] == "error" and "failed on at least 70%" in alarm["message"]
