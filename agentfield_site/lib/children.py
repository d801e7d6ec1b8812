"""Child processes that do not outlive the process that started them."""

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def stop_with_parent(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn`: in the child, before it runs, SIGTERM when `parent` dies, however it dies (Linux).

    A supervisor killed with SIGKILL (an OOM kill, `kill -9`) had no chance to stop
    its children: `serve`'s went on serving unsupervised and held the port, so the
    next `serve` or `make run` refused to start; `worker`'s left a cluster running
    beside the one its restart started. Elsewhere, a child outlives a killed parent.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm
