"""User-facing errors: one line, no traceback, non-zero exit from the CLI."""


class CoopPruneError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The CLI prints ``error: <message>`` and exits with status 2; the library raises it so that
    callers (flows, notebooks) can tell bad input from bugs.
    """
