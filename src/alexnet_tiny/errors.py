"""The one exception type users see: a one-line message, printed by the CLI with a non-zero exit."""


class UserError(Exception):
    """Bad input or a state the user can fix. The message is one line and names the file or value."""


def exception_line(e: BaseException) -> str:
    """A crash in one line, for a failed trial's record: the exception's class and its first line."""
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0] if text else ''}"
