"""User-facing errors. `cli` catches `XlcError` once, prints one line and exits with status 2."""


class XlcError(ValueError):
    """Base of every error caused by the user's input rather than by a bug."""


class ConfigError(XlcError):
    """A run config, command-line option or head option is invalid; the message names the field."""


class DataError(XlcError):
    """A dataset file is malformed; the message names the file and the line, row or field."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a command: `cli` prints the message as one line and exits with 128 + `signum`
    (130, 143). Not an `XlcError`: nothing was wrong with the input."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
