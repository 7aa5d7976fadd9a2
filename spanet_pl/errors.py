"""The project's user-facing errors: bad configuration or data, reported as one line by the CLI."""
import difflib
from typing import Any, Sequence, Union, get_args

__all__ = ['UserInputError', 'MissingPathError', 'check_choice', 'one_line']


class UserInputError(ValueError):
    """Bad input from the user (a config value, a data folder, a checkpoint): the message says what and where."""


class MissingPathError(UserInputError, FileNotFoundError):
    """A file or folder named in the configuration does not exist (or lacks what it must hold)."""


def one_line(error: BaseException, limit: int = 80) -> str:
    """``'<ExceptionType>: <first line of its message, at most limit characters>'``: a failure as a table note."""
    message = str(error)
    return f'{type(error).__name__}: {message.splitlines()[0][:limit] if message else ""}'


def check_choice(value: Any, choices: Union[Any, Sequence], what: str) -> Any:
    """``value`` if it is one of ``choices``, else a ``UserInputError`` naming it, the closest choice and all of them.

    LightningCLI already rejects a YAML value outside a ``Literal[...]`` argument; this check serves Python callers
    (and ``backbone_kwargs``, a dict jsonargparse cannot look into) from the same ``Literal``.

    Args:
        value: the given value.
        choices: a ``Literal[...]`` type or a sequence of the valid values.
        what: what the value names, e.g. ``'segmentation head'``.
    """
    options = get_args(choices) or tuple(choices)
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise UserInputError(f'unknown {what} {value!r}{hint}; valid names: {", ".join(map(str, options))}')
