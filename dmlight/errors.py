"""Errors a user can fix. Entry points print their message (no traceback) and exit 2."""


class UserError(Exception):
    """Bad input: the message names the bad value, what is accepted and what to do."""


class NonFiniteLoss(UserError, RuntimeError):
    """The loss became NaN or inf."""
