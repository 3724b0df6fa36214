"""The one exception type for bad user input.

A ``UserError`` message names the problem and the fix in one line. The CLI prints it as
``wrn: error: <message>`` and exits 2, without a traceback (set ``WRN_DEBUG=1`` to see one).
It subclasses ValueError so that library callers can catch the usual type.
"""


class UserError(ValueError):
    """Bad input (a file, a config value, an argument): the message says what and how to fix it."""
