"""The one exception type users see: a one-line message, printed by the CLI with a non-zero exit."""


class UserError(Exception):
    """Bad input or a state the user can fix. The message is one line and names the file or value."""
