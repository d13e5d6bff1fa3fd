"""The one exception type for user errors.

Anything raised as ``TransPruneError`` is the user's to fix (bad flag, missing file, wrong
checkpoint) and is printed by the CLIs as one clear message with a non-zero exit, without a
traceback. Every other exception is a bug in transprune and keeps its traceback.
"""


class TransPruneError(Exception):
    """A problem with the user's input, with a message that names the problem and the fix."""


class ScheduleError(TransPruneError, ValueError):
    """An invalid pruning schedule."""
