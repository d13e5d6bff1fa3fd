"""What every transprune CLI shares: user errors become one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

from ..errors import TransPruneError

USER_ERROR_EXIT = 2  # the status argparse uses for its own usage errors


def run_user_command(prog: str, command: Callable[[], int | None]) -> int:
    """Runs ``command``; a TransPruneError is the user's to fix and is printed without traceback.

    Any other exception is a bug in transprune and propagates with its traceback.
    """
    try:
        return command() or 0
    except TransPruneError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
