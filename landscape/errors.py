"""The one exception type that means "the user asked for something we cannot do", and how messages
quote what the user gave. It lives with the probe library (``landscape.probes.errors``), the lowest
layer that raises it; this is the application's name for it."""

from landscape.probes.errors import UserError, one_line, quote

__all__ = ["UserError", "one_line", "quote"]
