"""Errors a user can fix. Entry points print their message (no traceback) and exit 2."""


class UserError(Exception):
    """Bad input: the message names the bad value, what is accepted and what to do."""


class ConfigError(UserError, ValueError):
    """A config value dmlight does not accept; the message says which values it does."""


class NonFiniteLoss(UserError, RuntimeError):
    """The loss became NaN or inf."""
