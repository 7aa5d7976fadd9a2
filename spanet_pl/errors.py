"""The project's user-facing error: bad configuration or data, reported as one line by the CLI."""

__all__ = ['UserInputError', 'MissingPathError']


class UserInputError(ValueError):
    """Bad input from the user (a config value, a data folder, a checkpoint): the message says what and where."""


class MissingPathError(UserInputError, FileNotFoundError):
    """A file or folder named in the configuration does not exist (or lacks what it must hold)."""
