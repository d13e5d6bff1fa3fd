"""What every transprune CLI shares: user errors become one line on stderr and exit status 2, and
an interrupt (Ctrl-C or SIGTERM) cleans up what the command was writing before it exits."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable

from ..errors import TransPruneError

USER_ERROR_EXIT = 2  # the status argparse uses for its own usage errors
INTERRUPTED_EXIT = 128 + signal.SIGINT  # 130, as a shell reports a command killed by the signal
TERMINATED_EXIT = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):
    """SIGTERM (``kill``, a job scheduler, ``docker stop``), raised in the main thread.

    A BaseException like KeyboardInterrupt, so it passes every ``except Exception`` and unwinds
    through the same cleanup Ctrl-C does (``except BaseException``, ``finally``, ``with``): the
    exporter's staging directory, a half-written engine or PNG. Python's default for SIGTERM is to
    die on the spot, which leaves them all behind.
    """


@contextlib.contextmanager
def sigterm_raises():
    """For the duration of the block, SIGTERM raises ``Terminated`` in the main thread.

    Only the first one raises: a second SIGTERM while the cleanup runs is ignored, so that the
    cleanup finishes (a supervisor that will not wait follows up with SIGKILL anyway). Outside the
    main thread (signal handlers can only be set there) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back; the default is the nearest
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def run_user_command(prog: str, command: Callable[[], int | None]) -> int:
    """Runs ``command``; a TransPruneError is the user's to fix and is printed without traceback.

    Ctrl-C exits 130 and SIGTERM 143, each with one line, after the command's cleanup has run. Any
    other exception is a bug in transprune and propagates with its traceback.
    """
    try:
        with sigterm_raises():
            return command() or 0
    except TransPruneError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return TERMINATED_EXIT
