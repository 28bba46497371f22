"""Whether the server is shutting down, so that endless responses (SSE) end and the drain is bounded.

On SIGTERM uvicorn stops accepting and waits for open responses to finish, and a metrics stream of a
running or paused job never finishes by itself (measured: still up 60 s after SIGTERM). The lifespan
chains a handler in front of uvicorn's that raises this flag; each stream sees it within one blocking
read and ends, telling the client to reconnect (to another process, or to this one once restarted).
"""

import signal
import threading
from types import FrameType
from typing import Any

_stopping = threading.Event()


def stopping() -> bool:
    return _stopping.is_set()


def watch_signals() -> None:
    """Raise the flag on SIGTERM or SIGINT, then run whatever handler (uvicorn's) was there before."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread (an in-process test server runs elsewhere)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _chained(signal.getsignal(sig)))


def _chained(previous: Any) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        _stopping.set()
        if callable(previous):
            previous(signum, frame)
        else:  # the default action (or ignore): put it back and let it act
            signal.signal(signum, previous)
            signal.raise_signal(signum)

    return handler
