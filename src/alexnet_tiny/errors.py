"""The one exception type users see: a one-line message, printed by the CLI with a non-zero exit."""


class UserError(Exception):
    """Bad input or a state the user can fix. The message is one line and names the file or value."""


class InvalidValue(UserError):
    """A hyperparameter outside what it may be: `field = value: expected ...`, with the three kept apart
    so that the command line can name the flag instead of the field."""

    def __init__(self, field: str, value, expected: str):
        super().__init__(f"{field} = {value}: expected {expected}")
        self.field, self.value, self.expected = field, value, expected


def exception_line(e: BaseException) -> str:
    """A crash in one line, for a failed trial's record: the exception's class and its first line."""
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0] if text else ''}"
