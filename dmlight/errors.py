"""Every error a user can fix, in one place. Entry points print its message (no traceback) and exit 2.

Each message names the bad value, what is accepted and what to do."""


class UserError(Exception):
    """Bad input: the message names the bad value, what is accepted and what to do."""


class ConfigError(UserError, ValueError):
    """A config value dmlight does not accept; the message says which values it does."""


class NonFiniteLoss(UserError, RuntimeError):
    """The loss became NaN or inf."""


class DataError(UserError, RuntimeError):
    """Data that is missing or unreadable; the message says what to do."""


class RunDirConflict(UserError, RuntimeError):
    """The run directory holds a run made with another config."""


class RunDirBusy(UserError, RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirError(UserError, FileNotFoundError):
    """The directory holds no run that can be loaded; the message says what to do."""


class PerturbationError(UserError, ValueError):
    """A perturbation that cannot run as asked; the message says what to change."""


class ProbeError(UserError, ValueError):
    """A probe that cannot run as asked; the message says what to change."""
