"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input: a missing file, unknown key, wrong type, nonsense value.

    The CLI prints its message as a single line and exits with status 2;
    anything else that escapes is a bug and keeps its traceback.
    """


def quote(value) -> str:
    """A path or name as a message shows it: in quotes, with newlines, escape sequences and stray
    bytes spelled out (so a message stays one line and prints nothing a terminal would obey)."""
    text = str(value)
    return f"'{text}'" if text.isprintable() else repr(text)


def one_line(message: str) -> str:
    """A message with every character a terminal would not print as itself spelled out."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))
