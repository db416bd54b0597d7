"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input: a missing file, unknown key, wrong type, nonsense value.

    The CLI prints its message as a single line and exits with status 2;
    anything else that escapes is a bug and keeps its traceback.
    """
