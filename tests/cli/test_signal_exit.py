"""`sppo run`'s signal handler: a SIGTERM whose SystemExit Python swallowed still stops the stack."""

import os
import signal
import time
from collections.abc import Iterator

import pytest

from cli.stack import SIGNAL_RESEND_S, SignalExit


@pytest.fixture
def handler() -> Iterator[SignalExit]:
    exit_on_signal = SignalExit()
    previous = signal.signal(signal.SIGUSR1, exit_on_signal)
    try:
        yield exit_on_signal
    finally:
        exit_on_signal.stopping.set()
        signal.signal(signal.SIGUSR1, previous)


class Finaliser:
    """Runs the handler where Python ignores exceptions, as when a signal lands in a gc callback."""

    def __init__(self, handler: SignalExit) -> None:
        self.handler = handler

    def __del__(self) -> None:
        self.handler(signal.SIGUSR1, None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost SystemExit
def test_a_signal_lost_in_a_finaliser_is_sent_again(handler: SignalExit) -> None:
    Finaliser(handler)  # dropped at once: its SystemExit is printed as "Exception ignored" and lost
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        while time.monotonic() - started < 5 * SIGNAL_RESEND_S:
            time.sleep(0.05)
    assert exited.value.code == 128 + signal.SIGUSR1
    assert time.monotonic() - started < 2 * SIGNAL_RESEND_S


def test_signals_during_the_cleanup_are_ignored(handler: SignalExit) -> None:
    with pytest.raises(SystemExit):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(1)
    handler.stopping.set()  # the stack's `finally` has begun: nothing may cut it short
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(2 * SIGNAL_RESEND_S)
