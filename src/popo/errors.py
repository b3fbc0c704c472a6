"""The errors a user can cause, one class each, and how the command line reports them.

Every class carries its exit status: the CLI prints `error: <message>` (one line, no traceback) and exits
with `exit_code`. Anything else that escapes is a bug in popo and keeps its traceback.
"""

from __future__ import annotations


class PopoError(Exception):
    """Base of the errors with a one-line message meant for the user."""

    exit_code = 2


class ConfigError(PopoError, ValueError):
    """A configuration problem: unknown key (with the closest valid one), bad value or file."""


class DataError(PopoError, ValueError):
    """A bad dataset row or file; the message starts with `file:line: field '...'` where known."""


class SetupError(PopoError, RuntimeError):
    """A problem with the run's inputs found while assembling it (model path, empty dataset, ...)."""


class CheckpointError(PopoError, OSError):
    """A checkpoint could not be written (e.g. the disk is full); the message names the last intact one."""

    exit_code = 3


class TrainingHalted(PopoError, RuntimeError):
    """The run stopped itself (e.g. too many consecutive non-finite updates); its message says why."""

    exit_code = 3
